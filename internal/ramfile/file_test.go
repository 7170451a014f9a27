package ramfile

import (
	"bytes"
	"errors"
	"os"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"
)

const PageSize = 4096

// newRAM makes a sparse RAM file of pages pages in /dev/shm (shmem, like a
// VMM's memory-backend-file there) and removes it when the test ends.
func newRAM(t testing.TB, pages int) *os.File {
	t.Helper()
	f, err := os.CreateTemp("/dev/shm", "dmig-ramfile-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.Close()
		os.Remove(f.Name())
	})
	if err := f.Truncate(int64(pages) * PageSize); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestMapPunchData(t *testing.T) {
	f := newRAM(t, 8)
	if ext, err := Data(f, 8*PageSize); err != nil || len(ext) != 0 {
		t.Fatalf("data of a sparse file: %v %v, want none", ext, err)
	}
	mem, err := Map(f, 0, 8*PageSize, true)
	if err != nil {
		t.Fatal(err)
	}
	defer Unmap(mem)
	for _, p := range []int{1, 2, 3, 6} {
		mem[p*PageSize] = byte(p)
	}
	ext, err := Data(f, 8*PageSize)
	if err != nil {
		t.Fatal(err)
	}
	want := []Extent{{1 * PageSize, 3 * PageSize}, {6 * PageSize, PageSize}}
	if !reflect.DeepEqual(ext, want) {
		t.Fatalf("data %v, want %v", ext, want)
	}
	// Cut at size.
	if ext, err := Data(f, 2*PageSize); err != nil || !reflect.DeepEqual(ext, []Extent{{PageSize, PageSize}}) {
		t.Fatalf("data of the first 2 pages: %v %v", ext, err)
	}
	if err := PunchHole(f, 2*PageSize, PageSize); err != nil {
		t.Fatal(err)
	}
	// Scan before reading page 2 again: on shmem a read through a shared
	// mapping fills the hole with a page of zeros, which is data.
	ext, err = Data(f, 8*PageSize)
	if err != nil {
		t.Fatal(err)
	}
	want = []Extent{{PageSize, PageSize}, {3 * PageSize, PageSize}, {6 * PageSize, PageSize}}
	if !reflect.DeepEqual(ext, want) {
		t.Fatalf("data after punch %v, want %v", ext, want)
	}
	if mem[2*PageSize] != 0 || mem[3*PageSize] != 3 {
		t.Fatalf("after punching page 2: page 2 reads %d, page 3 %d; want 0, 3", mem[2*PageSize], mem[3*PageSize])
	}
}

func TestLock(t *testing.T) {
	f := newRAM(t, 1)
	if err := Lock(f); err != nil {
		t.Fatal(err)
	}
	// A second open file description is what a second dmig would have.
	g, err := os.Open(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if err := Lock(g); !errors.Is(err, ErrLocked) || !errors.Is(err, unix.EWOULDBLOCK) {
		t.Fatalf("second lock: %v, want ErrLocked and EWOULDBLOCK", err)
	}
	f.Close()
	if err := Lock(g); err != nil {
		t.Fatalf("lock after the holder closed: %v", err)
	}
}

func TestBlock(t *testing.T) {
	f := newRAM(t, 4)
	if _, err := OpenBlock(f.Name(), 3*PageSize, false, false); err == nil {
		t.Fatal("opened a block of the wrong size")
	}
	dst, err := OpenBlock(f.Name(), 4*PageSize, true, false)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	copy(dst.Mem[PageSize:], "page one")
	src, err := OpenBlock(f.Name(), 4*PageSize, false, true)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(src.Mem[PageSize:], []byte("page one")) {
		t.Fatal("the read-only mapping does not see the writable one's write")
	}
	if _, err := OpenBlock(f.Name(), 4*PageSize, false, true); !errors.Is(err, ErrLocked) {
		t.Fatalf("second locked open: %v, want ErrLocked", err)
	}
	ms, err := src.Mappings(os.Getpid())
	if err != nil || len(ms) != 2 {
		t.Fatalf("mappings of the block: %v %v, want ours two", ms, err)
	}
	if ext, err := src.Data(); err != nil || !reflect.DeepEqual(ext, []Extent{{PageSize, PageSize}}) {
		t.Fatalf("data %v %v", ext, err)
	}
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	if src.Mem != nil || src.File != nil {
		t.Fatal("Close left the mapping or file set")
	}
	if b, err := OpenBlock(f.Name(), 4*PageSize, false, true); err != nil {
		t.Fatalf("locked open after Close: %v", err)
	} else {
		b.Close()
	}
}
