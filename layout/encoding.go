package layout

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
)

// The encoding (all integers varint, little-endian base 128):
//
//	"DMLY" version(1 byte)
//	generation                     uvarint
//	disks                          uvarint, then per disk: name length uvarint, name bytes
//	runs                           uvarint, then per run:
//	  gap                          uvarint  GuestPage - end of previous run
//	  pages                        uvarint  > 0
//	  disk                         uvarint
//	  offset delta                 varint   Offset - end of the previous run on the same disk (mod 2^64)
//	crc                            4 bytes little-endian, CRC-32C of everything before it
//
// A clean InnoDB frame becomes a run of 4 guest pages and costs 4-8 bytes.
const (
	magic         = "DMLY"
	version       = 1
	headerSize    = len(magic) + 1
	trailerSize   = 4
	maxNameLen    = 255
	minRunBytes   = 4 // gap, pages, disk, offset: one byte each at least
	minDiskBytes  = 2 // length and one byte of name
	maxEncodedLen = 1 << 30
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// MarshalBinary encodes the layout. It fails if the layout breaks an
// invariant of the package (see Validate).
func (l *Layout) MarshalBinary() ([]byte, error) {
	if err := l.check(); err != nil {
		return nil, fmt.Errorf("encode layout: %w", err)
	}
	b := make([]byte, 0, headerSize+16+len(l.Disks)*8+len(l.Runs)*6+trailerSize)
	b = append(b, magic...)
	b = append(b, version)
	b = binary.AppendUvarint(b, l.Generation)
	b = binary.AppendUvarint(b, uint64(len(l.Disks)))
	for _, d := range l.Disks {
		if len(d.Name) > maxNameLen {
			return nil, fmt.Errorf("encode layout: disk name %.20q...: %w", d.Name, ErrDisk)
		}
		b = binary.AppendUvarint(b, uint64(len(d.Name)))
		b = append(b, d.Name...)
	}
	b = binary.AppendUvarint(b, uint64(len(l.Runs)))
	diskEnd := make([]uint64, len(l.Disks))
	var end uint64
	for _, r := range l.Runs {
		b = binary.AppendUvarint(b, r.GuestPage-end)
		b = binary.AppendUvarint(b, uint64(r.Pages))
		b = binary.AppendUvarint(b, uint64(r.Disk))
		b = binary.AppendVarint(b, int64(r.Offset-diskEnd[r.Disk]))
		end = r.End()
		diskEnd[r.Disk] = r.Offset + uint64(r.Pages)*PageSize
	}
	if len(b)+trailerSize > maxEncodedLen {
		return nil, fmt.Errorf("encode layout: %d bytes: %w", len(b), ErrTooLarge)
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli)), nil
}

// UnmarshalBinary decodes a layout encoded by MarshalBinary, replacing l's
// contents. Malformed input is an error (ErrMagic, ErrVersion, ErrChecksum,
// ErrTruncated, ErrMalformed, or a validation error); l is then unchanged.
func (l *Layout) UnmarshalBinary(data []byte) error {
	if len(data) < headerSize+trailerSize {
		return fmt.Errorf("decode layout: %d bytes: %w", len(data), ErrTruncated)
	}
	if string(data[:len(magic)]) != magic {
		return fmt.Errorf("decode layout: %w", ErrMagic)
	}
	if v := data[len(magic)]; v != version {
		return fmt.Errorf("decode layout: version %d: %w", v, ErrVersion)
	}
	body := data[:len(data)-trailerSize]
	if want, got := binary.LittleEndian.Uint32(data[len(body):]), crc32.Checksum(body, castagnoli); want != got {
		return fmt.Errorf("decode layout: %w", ErrChecksum)
	}
	d := decoder{b: body[headerSize:]}
	var out Layout
	out.Generation = d.uvarint()
	nDisks := d.count(minDiskBytes, math.MaxUint16+1)
	if nDisks > 0 {
		out.Disks = make([]Disk, nDisks)
	}
	for i := range out.Disks {
		n := d.count(1, maxNameLen)
		out.Disks[i] = Disk{ID: DiskID(i), Name: string(d.bytes(n))}
	}
	nRuns := d.count(minRunBytes, math.MaxInt)
	if nRuns > 0 {
		out.Runs = make([]Run, nRuns)
	}
	diskEnd := make([]uint64, nDisks)
	var end uint64
	for i := range out.Runs {
		gap, pages, disk, delta := d.uvarint(), d.uvarint(), d.uvarint(), d.varint()
		if d.err != nil {
			break
		}
		if gap > math.MaxUint64-end || pages == 0 || pages > math.MaxUint32 || disk >= uint64(nDisks) {
			d.fail(ErrMalformed)
			break
		}
		r := Run{GuestPage: end + gap, Pages: uint32(pages), Disk: DiskID(disk), Offset: diskEnd[disk] + uint64(delta)}
		if r.GuestPage > math.MaxUint64-pages || r.Offset > math.MaxUint64-pages*PageSize {
			d.fail(ErrMalformed)
			break
		}
		out.Runs[i] = r
		end = r.End()
		diskEnd[disk] = r.Offset + pages*PageSize
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail(ErrMalformed)
	}
	if d.err != nil {
		return fmt.Errorf("decode layout: %w", d.err)
	}
	if err := out.check(); err != nil {
		return fmt.Errorf("decode layout: %w", err)
	}
	*l = out
	return nil
}

// decoder reads varints from b; after the first error every read returns
// zero and err keeps that error.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
	d.b = nil
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if !d.advance(n) {
		return 0
	}
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if !d.advance(n) {
		return 0
	}
	return v
}

// advance consumes the n bytes a varint read took; n <= 0 is binary's
// signal for a truncated (0) or overflowing (< 0) varint.
func (d *decoder) advance(n int) bool {
	switch {
	case n > 0:
		d.b = d.b[n:]
		return true
	case n == 0:
		d.fail(ErrTruncated)
	default:
		d.fail(ErrMalformed)
	}
	return false
}

// count reads a length that must fit both max and the remaining input at
// minBytes per element, so a decoder never allocates more than the input
// can describe.
func (d *decoder) count(minBytes, max int) int {
	v := d.uvarint()
	if d.err != nil {
		return 0
	}
	if v > uint64(max) || v > uint64(len(d.b)/minBytes) {
		d.fail(ErrMalformed)
		return 0
	}
	return int(v)
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n > len(d.b) {
		d.fail(ErrTruncated)
		return nil
	}
	b := d.b[:n]
	d.b = d.b[n:]
	return b
}
