package wire

import (
	"bytes"
	"errors"
	"io"
	"net"
	"reflect"
	"testing"
	"time"

	"github.com/klauspost/compress/s2"
)

// Run a target longer with, e.g.:
//	go test ./wire -run '^$' -fuzz FuzzUnmarshal -fuzztime 60s
// The seeds below run in every plain `go test`.

func addSeeds(f *testing.F) {
	for _, m := range sampleMessages() {
		frame, err := Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(frame)
	}
	f.Add([]byte{})
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add(withPayload(TypePageBatch, []byte{0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 3}))
	f.Add(withPayload(TypeSwitchover, []byte{0, 0, 0, 0, 2, 0, 5, 0, 0, 0xff, 0xff, 0x03, 1}))
	f.Add(withPayload(TypeResend, []byte{2, 0, 5, 0, 1, 0xff, 0xff, 0x03, 1}))
	f.Add(withPayload(TypeVerdict, []byte{0x80, 0x01, 7}))
	f.Add(withPayload(TypeMissing, []byte{1, 0, 5, 0}))
}

// FuzzUnmarshal: no input makes a decoder panic or loop, and whatever a
// decoder accepts re-encodes to the same bytes (encodings are canonical, so
// the accepted set is exactly what the encoder produces).
func FuzzUnmarshal(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, frame []byte) {
		m, err := Unmarshal(frame)
		if err != nil {
			if !knownError(err) {
				t.Fatalf("error wraps no sentinel: %v", err)
			}
			return
		}
		again, err := Marshal(m)
		if err != nil {
			t.Fatalf("accepted %s does not re-encode: %v", m.Type(), err)
		}
		if !bytes.Equal(again, frame) {
			t.Fatalf("%s re-encodes differently:\n in %x\nout %x", m.Type(), frame, again)
		}
	})
}

func knownError(err error) bool {
	for _, s := range []error{ErrMagic, ErrVersion, ErrFrameTooLarge, ErrTruncated, ErrMalformed,
		ErrRange, ErrUnknownType, ErrUnexpected, ErrDataPending, io.EOF} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// streamConn is a net.Conn over a byte string, for feeding ReadFrame.
type streamConn struct {
	r io.Reader
}

func (s *streamConn) Read(p []byte) (int, error)       { return s.r.Read(p) }
func (s *streamConn) Write(p []byte) (int, error)      { return len(p), nil }
func (s *streamConn) Close() error                     { return nil }
func (s *streamConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (s *streamConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (s *streamConn) SetDeadline(time.Time) error      { return nil }
func (s *streamConn) SetReadDeadline(time.Time) error  { return nil }
func (s *streamConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzReadFrame feeds a byte stream, delivered in small odd-sized pieces, to
// a connection of each role: it must read frames until a clean error, never
// panic, and every frame it returns must be one Unmarshal returns for the
// same bytes.
func FuzzReadFrame(f *testing.F) {
	addSeeds(f)
	// A stream of several frames.
	var stream []byte
	for _, m := range sampleMessages() {
		if m.Type().role() == RoleBulk {
			frame, _ := Marshal(m)
			stream = append(stream, frame...)
		}
	}
	f.Add(stream)
	f.Add(compressedFrame(f, CodecZstd, zstdPage()))
	f.Add(compressedFrame(f, CodecS2, s2.Encode(nil, make([]byte, PageSize))))
	f.Fuzz(func(t *testing.T, in []byte) {
		ctx := testCtx(t)
		for i, role := range []Role{RoleControl, RoleBulk, RoleUrgent, RoleBulk, RoleBulk} {
			c := NewConn(&streamConn{r: &chunkReader{b: in, n: 7}}, role, 0)
			c.SetGeometry(testHello())
			// The last two bulk conns take compressed batches.
			c.codec = map[int]Codec{3: CodecZstd, 4: CodecS2}[i]
			for range 1000 {
				m, err := c.ReadFrame(ctx)
				if err != nil {
					if !knownError(err) {
						t.Fatalf("%s conn: error wraps no sentinel: %v", role, err)
					}
					break
				}
				if m.Type().role() != role {
					t.Fatalf("%s conn returned a %s", role, m.Type())
				}
				if b, ok := m.(*PageBatch); ok {
					data := make([]byte, c.DataLeft())
					if err := c.ReadData(data); err != nil {
						if !errors.Is(err, ErrTruncated) {
							t.Fatalf("read batch data: %v", err)
						}
						break
					}
					if len(data) != b.DataPages()*PageSize {
						t.Fatalf("batch with %d data entries has %d bytes", b.DataPages(), len(data))
					}
				}
			}
		}
	})
}

// chunkReader hands out at most n bytes per Read, to exercise the reader's
// refills at every boundary.
type chunkReader struct {
	b []byte
	n int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	k := copy(p[:min(len(p), c.n)], c.b)
	c.b = c.b[k:]
	return k, nil
}

// FuzzPreamble: any 26 bytes parse or fail cleanly, and a valid preamble
// survives a round trip.
func FuzzPreamble(f *testing.F) {
	f.Add(preamble{version: Version, role: RoleBulk, index: 3, session: SessionID{9}}.marshal())
	f.Add([]byte("DMIG\x02\x00\x09\x00\x00\x00................"))
	f.Add([]byte("SSH-2.0-OpenSSH_9.2p1 Debi"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) != preambleLen {
			return
		}
		p, err := parsePreamble(b)
		if err != nil {
			if !errors.Is(err, ErrMagic) {
				t.Fatalf("got %v", err)
			}
			return
		}
		if !bytes.Equal(p.marshal(), b) {
			t.Fatalf("preamble does not round-trip")
		}
		if err := p.check(); err != nil && !errors.Is(err, ErrRole) && !errors.Is(err, ErrMalformed) {
			t.Fatalf("check: %v", err)
		}
	})
}

// FuzzRuns: a page bitmap turned into runs, sent in a Switchover and decoded,
// names exactly the pages of the bitmap.
func FuzzRuns(f *testing.F) {
	f.Add([]byte{0xff, 0x00, 0x0f}, uint16(20))
	f.Add([]byte{0xaa, 0x55, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, uint16(85))
	f.Fuzz(func(t *testing.T, raw []byte, npages uint16) {
		n := uint64(npages)
		bm := make([]uint64, (len(raw)+7)/8)
		for i, v := range raw {
			bm[i/8] |= uint64(v) << (8 * (i % 8))
		}
		runs := AppendBitmap(nil, 0, bm, n)
		runs = AppendBitmap(runs, 3, bm, n) // a second block after the first
		want := 0
		for p := range min(n, uint64(len(bm))*64) {
			want += int(bm[p/64] >> (p % 64) & 1)
		}
		if PageCount(runs) != 2*uint64(want) {
			t.Fatalf("%d pages in runs, %d bits set (twice)", PageCount(runs), want)
		}
		frame, err := Marshal(&Switchover{Iteration: 1, Pending: runs})
		if err != nil {
			t.Fatalf("runs from a bitmap do not encode: %v", err)
		}
		m, err := Unmarshal(frame)
		if err != nil {
			t.Fatal(err)
		}
		got := m.(*Switchover).Pending
		if !reflect.DeepEqual(got, runs) && !(len(got) == 0 && len(runs) == 0) {
			t.Fatalf("runs changed: %v → %v", runs, got)
		}
		for _, r := range got {
			for p := r.Page; p < r.Page+r.Count; p++ {
				if bm[p/64]&(1<<(p%64)) == 0 {
					t.Fatalf("run names page %d, which is not in the bitmap", p)
				}
			}
		}
	})
}
