package wire

import (
	"encoding/binary"
	"fmt"
	"unicode/utf8"
)

// Encodings are little-endian fixed-width integers, minimal unsigned varints
// and varint-length-prefixed strings. Every encoding is canonical: decoding
// then encoding gives back the same bytes, which the fuzz tests check.

var le = binary.LittleEndian

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// decoder reads one payload. The first error sticks; callers check err once.
type decoder struct {
	b   []byte
	off int
	err error
}

func (d *decoder) fail(sentinel error, format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s at byte %d", sentinel, fmt.Sprintf(format, args...), d.off)
	}
}

func (d *decoder) take(n int, what string) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || len(d.b)-d.off < n {
		d.fail(ErrTruncated, "%s needs %d bytes, %d left", what, n, len(d.b)-d.off)
		return nil
	}
	p := d.b[d.off : d.off+n]
	d.off += n
	return p
}

func (d *decoder) u8(what string) uint8 {
	p := d.take(1, what)
	if p == nil {
		return 0
	}
	return p[0]
}

func (d *decoder) u16(what string) uint16 {
	p := d.take(2, what)
	if p == nil {
		return 0
	}
	return le.Uint16(p)
}

func (d *decoder) u32(what string) uint32 {
	p := d.take(4, what)
	if p == nil {
		return 0
	}
	return le.Uint32(p)
}

func (d *decoder) u64(what string) uint64 {
	p := d.take(8, what)
	if p == nil {
		return 0
	}
	return le.Uint64(p)
}

func (d *decoder) bool(what string) bool {
	v := d.u8(what)
	if v > 1 {
		d.fail(ErrMalformed, "%s is %d, not 0 or 1", what, v)
	}
	return v == 1
}

func (d *decoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := uvarint(d.b[d.off:])
	switch {
	case n == 0:
		d.fail(ErrTruncated, "%s varint", what)
	case n < 0:
		d.fail(ErrMalformed, "%s varint overflows or is not minimal", what)
	default:
		d.off += n
	}
	return v
}

// uvarint decodes a minimal unsigned varint: n > 0 bytes used, n == 0 short
// input, n < 0 overflow or a non-minimal encoding (which would make two byte
// strings decode alike).
func uvarint(b []byte) (uint64, int) {
	v, n := binary.Uvarint(b)
	if n > 1 && b[n-1] == 0 {
		return 0, -1
	}
	return v, n
}

// count reads an element count and checks it against max and against the
// bytes left (each element takes at least minLen bytes), so a lying count
// cannot make the caller allocate.
func (d *decoder) count(what string, max int, minLen int) int {
	v := d.uvarint(what)
	if d.err != nil {
		return 0
	}
	if v > uint64(max) {
		d.fail(ErrRange, "%s %d exceeds %d", what, v, max)
		return 0
	}
	if minLen > 0 && v > uint64((len(d.b)-d.off)/minLen) {
		d.fail(ErrTruncated, "%s %d does not fit in %d bytes", what, v, len(d.b)-d.off)
		return 0
	}
	return int(v)
}

func (d *decoder) str(what string, max int) string {
	n := d.count(what+" length", max, 1)
	p := d.take(n, what)
	if d.err != nil {
		return ""
	}
	if !utf8.Valid(p) {
		d.fail(ErrMalformed, "%s is not UTF-8", what)
		return ""
	}
	return string(p)
}

// finish returns the sticky error, or ErrMalformed if bytes are left over.
func (d *decoder) finish() error {
	if d.err == nil && d.off != len(d.b) {
		d.fail(ErrMalformed, "%d trailing bytes", len(d.b)-d.off)
	}
	return d.err
}
