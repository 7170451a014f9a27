package wire

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"testing"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// compressRAM returns 64 pages: 0..31 text-like (compressible), 32..63
// random (not).
func compressRAM() []byte {
	ram := make([]byte, 64*PageSize)
	for i := range 32 * PageSize {
		ram[i] = "innodb page "[i%12] + byte(i/PageSize)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 32 * PageSize; i < len(ram); i += 8 {
		v := rng.Uint64()
		for k := range 8 {
			ram[i+k] = byte(v >> (8 * k))
		}
	}
	return ram
}

func compressedPair(t *testing.T, codec Codec) (*Conn, *Conn) {
	src, dst := connPair(t, RoleBulk)
	src.codec, dst.codec = codec, codec
	return src, dst
}

// Batches of compressible pages go compressed and come out whole, read in
// runs, scattered, or partly with the rest skipped; incompressible ones go
// as they are. Each codec alike.
func TestCompressedBatches(t *testing.T) {
	for _, codec := range []Codec{CodecZstd, CodecS2} {
		t.Run(codec.String(), func(t *testing.T) { testCompressedBatches(t, codec) })
	}
}

func testCompressedBatches(t *testing.T, codec Codec) {
	ctx := testCtx(t)
	src, dst := compressedPair(t, codec)
	ram := compressRAM()
	pg := func(p uint64) []byte { return ram[p*PageSize : (p+1)*PageSize] }
	send := func(pages []uint64) uint64 {
		t.Helper()
		var b PageBatch
		b.Reset(0, 1)
		for _, p := range pages {
			b.AddData(p, pg(p))
		}
		b.AddZero(pages[len(pages)-1] + 100)
		w0 := src.BytesWritten()
		errc := make(chan error, 1)
		go func() { errc <- src.WriteFrame(ctx, &b) }()
		got, err := dst.ReadFrame(ctx)
		if err != nil {
			t.Fatalf("read batch of pages %v: %v", pages, err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("write batch: %v", err)
		}
		gb := got.(*PageBatch)
		if len(gb.Entries) != len(pages)+1 || gb.DataPages() != len(pages) {
			t.Fatalf("batch entries %+v", gb.Entries)
		}
		return src.BytesWritten() - w0
	}

	// Compressible, read as runs.
	n := send([]uint64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9})
	if n >= 5*PageSize {
		t.Errorf("10 compressible pages took %d bytes", n)
	}
	all := make([]byte, 10*PageSize)
	if err := dst.ReadData(all[:3*PageSize]); err != nil {
		t.Fatal(err)
	}
	if err := dst.ReadData(all[3*PageSize:]); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(all, ram[:10*PageSize]) {
		t.Fatal("compressed pages came out different")
	}

	// Incompressible: sent raw, read scattered.
	n = send([]uint64{32, 33, 34, 40})
	if n < 4*PageSize {
		t.Errorf("4 random pages took %d bytes: compressed, or lost", n)
	}
	dsts := [][]byte{make([]byte, 3*PageSize), make([]byte, PageSize)}
	if err := dst.ReadDataVec(dsts); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dsts[0], ram[32*PageSize:35*PageSize]) || !bytes.Equal(dsts[1], pg(40)) {
		t.Fatal("raw pages came out different")
	}

	// Compressed, read one page then skipped; the next batch is intact.
	send([]uint64{10, 12, 14})
	one := make([]byte, PageSize)
	if err := dst.ReadData(one); err != nil || !bytes.Equal(one, pg(10)) {
		t.Fatalf("first page of a compressed batch: %v", err)
	}
	send([]uint64{20, 21})
	dsts = [][]byte{make([]byte, PageSize), make([]byte, PageSize)}
	if err := dst.ReadDataVec(dsts); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dsts[0], pg(20)) || !bytes.Equal(dsts[1], pg(21)) {
		t.Fatal("batch after a skipped compressed batch came out different")
	}
	if err := dst.ReadData(one); !errors.Is(err, ErrDataPending) {
		t.Errorf("read past a compressed batch's data: %v, want ErrDataPending", err)
	}
}

// compressedFrame is a one-data-page batch frame whose page data is z,
// flagged compressed with codec.
func compressedFrame(t testing.TB, codec Codec, z []byte) []byte {
	var b PageBatch
	b.Reset(0, 1)
	b.AddData(3, make([]byte, PageSize))
	f, err := Marshal(&b)
	if err != nil {
		t.Fatal(err)
	}
	table := le.Uint32(f[frameHeaderLen+12:])
	f = append(f[:frameHeaderLen+batchHeaderLen+int(table)], z...)
	f[1] = codec.frameFlag()
	le.PutUint32(f[4:], uint32(len(f)-frameHeaderLen))
	return f
}

// A compressed frame is refused where compression was not agreed or
// another codec was, and compressed data that does not decode to exactly
// the table's pages is malformed.
func TestCompressedFrameChecks(t *testing.T) {
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	good := enc.EncodeAll(make([]byte, PageSize), nil)
	goodS2 := s2.Encode(nil, make([]byte, PageSize))
	cases := []struct {
		name         string
		agreed, sent Codec
		z            []byte
		want         error
	}{
		{"agreed", CodecZstd, CodecZstd, good, nil},
		{"not agreed", CodecNone, CodecZstd, good, ErrMalformed},
		{"short", CodecZstd, CodecZstd, enc.EncodeAll(make([]byte, PageSize-1), nil), ErrMalformed},
		{"long", CodecZstd, CodecZstd, enc.EncodeAll(make([]byte, 2*PageSize), nil), ErrMalformed},
		{"garbage", CodecZstd, CodecZstd, []byte("not zstd at all"), ErrMalformed},
		{"truncated", CodecZstd, CodecZstd, good[:len(good)-2], ErrMalformed},
		{"s2 agreed", CodecS2, CodecS2, goodS2, nil},
		{"s2 not agreed", CodecNone, CodecS2, goodS2, ErrMalformed},
		{"s2 where zstd was agreed", CodecZstd, CodecS2, goodS2, ErrMalformed},
		{"zstd where s2 was agreed", CodecS2, CodecZstd, good, ErrMalformed},
		{"s2 short", CodecS2, CodecS2, s2.Encode(nil, make([]byte, PageSize-1)), ErrMalformed},
		{"s2 long", CodecS2, CodecS2, s2.Encode(nil, make([]byte, 2*PageSize)), ErrMalformed},
		{"s2 garbage", CodecS2, CodecS2, []byte("\x80\x20not s2 at all"), ErrMalformed},
		{"s2 truncated", CodecS2, CodecS2, goodS2[:len(goodS2)-1], ErrMalformed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, b := net.Pipe()
			t.Cleanup(func() { a.Close(); b.Close() })
			conn := NewConn(b, RoleBulk, 0)
			conn.codec = c.agreed
			go func() { _, _ = a.Write(compressedFrame(t, c.sent, c.z)) }()
			m, err := conn.ReadFrame(context.Background())
			if c.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				page := make([]byte, PageSize)
				if err := conn.ReadData(page); err != nil || m.(*PageBatch).Entries[0].Page != 3 {
					t.Fatalf("read data: %v", err)
				}
				return
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}

// Hello's codec turns compression on for the bulk connections of both
// ends, and only for them.
func TestSessionCompression(t *testing.T) {
	for _, codec := range []Codec{CodecZstd, CodecS2} {
		t.Run(codec.String(), func(t *testing.T) {
			ctx := testCtx(t)
			l, _ := listen(t)
			acc := acceptAsync(ctx, l, nil)
			h := sessionHello()
			h.SetCodec(codec)
			s, err := Dial(ctx, l.Addr().String(), h)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			d := mustAccept(t, acc)
			defer d.Close()
			for _, sess := range []*Session{s, d} {
				for _, c := range sess.conns() {
					want := CodecNone
					if c.Role() == RoleBulk {
						want = codec
					}
					if c.codec != want {
						t.Errorf("%s: codec %s, want %s", c, c.codec, want)
					}
				}
			}
		})
	}
}

// A Hello naming both codecs is refused as out of range; codec names parse
// back to their codecs.
func TestCodecFlags(t *testing.T) {
	h := sessionHello()
	h.Flags |= FlagCompress | FlagCompressS2
	if err := h.validate(); !errors.Is(err, ErrRange) {
		t.Errorf("hello with both codecs: %v, want ErrRange", err)
	}
	for _, name := range CodecNames() {
		c, err := ParseCodec(name)
		if err != nil || c.String() != name {
			t.Errorf("ParseCodec(%q) = %s, %v", name, c, err)
		}
		h.SetCodec(c)
		if h.Codec() != c {
			t.Errorf("SetCodec(%s): Codec() = %s", c, h.Codec())
		}
	}
	if _, err := ParseCodec("lz4"); err == nil {
		t.Error("ParseCodec(lz4): no error")
	}
}

// zstdPage is a zero page, zstd-compressed.
func zstdPage() []byte {
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		panic(err)
	}
	return enc.EncodeAll(make([]byte, PageSize), nil)
}
