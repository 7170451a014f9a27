package ramfile

import (
	"bytes"
	"errors"
	"os"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"
)

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
	if _, err := OpenBlock("ram", f.Name(), 3*PageSize, false, false); err == nil {
		t.Fatal("opened a block of the wrong size")
	}
	dst, err := OpenBlock("ram", f.Name(), 4*PageSize, true, false)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	copy(dst.Page(1), "page one")
	copy(dst.Page(3), "page three")
	src, err := OpenBlock("ram", f.Name(), 4*PageSize, false, true)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if src.Pages() != 4 || !bytes.HasPrefix(src.Page(1), []byte("page one")) {
		t.Fatal("the read-only mapping does not see the writable one's write")
	}
	if _, err := OpenBlock("ram", f.Name(), 4*PageSize, false, true); !errors.Is(err, ErrLocked) {
		t.Fatalf("second locked open: %v, want ErrLocked", err)
	}
	if err := src.FindMappings(os.Getpid()); err != nil || len(src.Maps) != 2 {
		t.Fatalf("mappings of the block: %v %v, want ours two", src.Maps, err)
	}
	ro := src.Maps[0]
	if ro.Writable() {
		ro = src.Maps[1]
	}
	if a, ok := src.GuestAddr(2); !ok || a != src.Maps[0].Start+2*PageSize {
		t.Fatalf("GuestAddr(2) = %#x %v, want page 2 of the first mapping %#x", a, ok, src.Maps[0].Start)
	}
	if p, ok := src.Locate(ro.Start + 3*PageSize + 5); !ok || p != 3 {
		t.Fatalf("Locate in page 3 = %d %v", p, ok)
	}
	if _, ok := src.Locate(ro.End); ok && src.Maps[0].End != src.Maps[1].Start {
		t.Fatal("Locate found an address past the mappings")
	}
	if why, err := src.Remapped(os.Getpid()); err != nil || why != "" {
		t.Fatalf("Remapped with nothing changed: %q %v", why, err)
	}
	var runs [][2]uint64
	collect := func(first, count uint64) { runs = append(runs, [2]uint64{first, count}) }
	if err := src.DataPages(collect); err != nil || !reflect.DeepEqual(runs, [][2]uint64{{1, 1}, {3, 1}}) {
		t.Fatalf("data pages %v %v, want pages 1 and 3", runs, err)
	}
	if err := dst.PunchHoles(3, 1); err != nil {
		t.Fatal(err)
	}
	runs = nil
	if err := src.DataPages(collect); err != nil || !reflect.DeepEqual(runs, [][2]uint64{{1, 1}}) {
		t.Fatalf("data pages after punching page 3: %v %v, want page 1", runs, err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	if why, err := src.Remapped(os.Getpid()); err != nil || why == "" {
		t.Fatalf("Remapped after unmapping one mapping: %q %v, want a reason", why, err)
	}
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	if src.Mem != nil || src.File != nil {
		t.Fatal("Close left the mapping or file set")
	}
	if b, err := OpenBlock("ram", f.Name(), 4*PageSize, false, true); err != nil {
		t.Fatalf("locked open after Close: %v", err)
	} else {
		b.Close()
	}
}
