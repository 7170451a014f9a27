package guest

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"testing"
)

// fakePage builds a page as InnoDB writes it on flush, in either format.
func fakePage(size int, space, page uint32, lsn uint64, fullCRC32 bool) []byte {
	p := make([]byte, size)
	for i := 38; i < size-8; i++ {
		p[i] = byte(i * 7)
	}
	binary.BigEndian.PutUint32(p[filPageOffset:], page)
	binary.BigEndian.PutUint64(p[filPageLSN:], lsn)
	binary.BigEndian.PutUint16(p[24:], 17855) // FIL_PAGE_INDEX
	binary.BigEndian.PutUint32(p[filPageSpaceID:], space)
	if fullCRC32 {
		binary.BigEndian.PutUint32(p[size-8:], uint32(lsn))
		binary.BigEndian.PutUint32(p[size-4:], crc32.Checksum(p[:size-4], castagnoli))
		return p
	}
	c := crc32.Checksum(p[4:26], castagnoli) ^ crc32.Checksum(p[38:size-8], castagnoli)
	binary.BigEndian.PutUint32(p[0:], c)
	binary.BigEndian.PutUint32(p[size-8:], c)
	binary.BigEndian.PutUint32(p[size-4:], uint32(lsn))
	return p
}

func TestChecksum(t *testing.T) {
	for _, full := range []bool{true, false} {
		for _, size := range []int{4096, 16384, 65536} {
			p := fakePage(size, 42, 7, 0x1122334455667788, full)
			if !checksumOK(p, full) {
				t.Errorf("full_crc32=%v size %d: flushed page rejected", full, size)
			}
			if checksumOK(p, !full) {
				t.Errorf("full_crc32=%v size %d: accepted in the other format", full, size)
			}
			if s, pg := pageID(p); s != 42 || pg != 7 {
				t.Errorf("pageID = %d, %d", s, pg)
			}
			// A modification after the flush: a record byte, or the LSN
			// InnoDB bumps on every change.
			for _, off := range []int{100, size / 2, filPageLSN + 7} {
				q := append([]byte(nil), p...)
				q[off]++
				if checksumOK(q, full) {
					t.Errorf("full_crc32=%v size %d: page changed at %d accepted", full, size, off)
				}
			}
		}
	}
	zero := make([]byte, 16384)
	if !isZero(zero) || checksumOK(zero, true) || checksumOK(zero, false) {
		t.Errorf("all-zero frame: isZero %v, checksum full %v crc32 %v", isZero(zero), checksumOK(zero, true), checksumOK(zero, false))
	}
	zero[16383] = 1
	if isZero(zero) {
		t.Errorf("isZero ignores the last byte")
	}
}

func TestClassifySpace(t *testing.T) {
	for _, c := range []struct {
		flags   uint32
		mariaDB bool
		full    bool
		skip    string
	}{
		{0x15, true, true, ""},                       // full_crc32, 16 KiB
		{0x15 | 1<<5, true, true, "page_compressed"}, // full_crc32, zlib
		{0x21, true, false, ""},                      // crc32 format, dynamic
		{0x21 | 1<<16, true, false, "page_compressed"},
		{0x29 | 4<<1, true, false, "row_compressed"}, // zip 8 KiB
		{0x21 | 1<<13, false, false, "encrypted"},    // MySQL
		{0x21 | 1<<12, false, false, "temporary"},
	} {
		sp := Space{Flags: c.flags}
		classifySpace(&sp, c.mariaDB)
		if sp.FullCRC32 != c.full || sp.Skip != c.skip {
			t.Errorf("flags %#x (MariaDB %v): full_crc32 %v skip %q; want %v %q", c.flags, c.mariaDB, sp.FullCRC32, sp.Skip, c.full, c.skip)
		}
	}
}

func TestFindPool(t *testing.T) {
	const mib = 1 << 20
	srv := &Server{PageSize: 16384, PoolSize: 256 * mib, PoolSizeMax: 8 << 40}
	maps := []mapping{
		{start: 0x1000_0000, end: 0x1000_0000 + 254*mib, perms: "rw-p", anon: true}, // malloc'd memory of a similar size
		{start: 0x4000_0000, end: 0x4000_0000 + 300*mib, perms: "rw-p", anon: true}, // pool with a neighbour merged in
		{start: 0x4000_0000 + 300*mib, end: 0x4000_0000 + 300*mib + 8<<40, perms: "---p", anon: true},
	}
	got, err := findPool(maps, srv)
	want := Region{Start: 0x4000_0000 + 44*mib, End: 0x4000_0000 + 300*mib, Descriptors: 5}
	if err != nil || len(got) != 1 || got[0] != want {
		t.Errorf("MariaDB reserved pool: %+v, %v; want %+v", got, err, want)
	}

	srv.PoolSizeMax = 0 // no reservation: the closest size
	maps[2].perms = "r--p"
	maps = append(maps, mapping{start: 0x8000_0000, end: 0x8000_0000 + 260*mib, perms: "rw-p", anon: true})
	if got, err := findPool(maps, srv); err != nil || len(got) != 1 || got[0] != (Region{Start: 0x8000_0000, End: 0x8000_0000 + 260*mib}) {
		t.Errorf("closest size: %+v, %v", got, err)
	}

	srv.PoolSize, srv.ChunkSize = 1024*mib, 128*mib // chunks
	if got, err := findPool(maps, srv); err != nil || len(got) != 3 {
		t.Errorf("chunks: %+v, %v", got, err)
	}
	srv.ChunkSize = 0
	if _, err := findPool(maps, srv); !errors.Is(err, ErrNoBufferPool) {
		t.Errorf("no pool: %v, want ErrNoBufferPool", err)
	}
}
