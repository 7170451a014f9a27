package dbrestore

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/dmig/dmig/internal/pages"
	"github.com/dmig/dmig/internal/ramfile"
	"github.com/dmig/dmig/uffd"
	"github.com/dmig/dmig/wire"
)

// shmFile is an n-page RAM file of holes in /dev/shm, removed at cleanup.
func shmFile(t *testing.T, n uint64) *os.File {
	t.Helper()
	f, err := os.CreateTemp("/dev/shm", "dmig-placer-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close(); os.Remove(f.Name()) })
	if err := f.Truncate(int64(n * pageSize)); err != nil {
		t.Fatal(err)
	}
	return f
}

// registeredGuest maps n pages of f as a guest's RAM and registers the
// mapping, missing mode, with a uffd of its own; both go at cleanup.
func registeredGuest(t *testing.T, f *os.File, n uint64) (*uffd.FD, []byte) {
	t.Helper()
	u, err := uffd.Open(uffd.FeatureMissingShmem)
	if err != nil {
		t.Fatalf("userfaultfd on shmem (Linux ≥ 4.11, root or vm.unprivileged_userfaultfd): %v", err)
	}
	t.Cleanup(func() { u.Close() })
	guest, err := ramfile.Map(f, 0, int(n*pageSize), true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ramfile.Unmap(guest) })
	start := uintptr(unsafe.Pointer(&guest[0]))
	if _, err := u.Register(uffd.Range{Start: start, Len: uintptr(n * pageSize)}, uffd.ModeMissing); err != nil {
		t.Fatal(err)
	}
	return u, guest
}

// markPending frees every owed page the RAM file holds, placed by dmig or
// written at the guest's start (found by the scan prepare makes), skips
// the holes, and lists all owed pages missing; the others keep their data.
func TestMarkPendingFreesWhatTheFileHolds(t *testing.T) {
	const n = 64
	f := shmFile(t, n)
	page := func(p uint64) []byte { return bytes.Repeat([]byte{byte(p + 1)}, pageSize) }
	write := func(p uint64) {
		if _, err := f.WriteAt(page(p), int64(p*pageSize)); err != nil {
			t.Fatal(err)
		}
	}
	b := &dstBlock{Block: &ramfile.Block{Name: "ram", File: f, Mem: make([]byte, n*pageSize)}, npages: n, placed: pages.NewSet(n), missing: pages.NewSet(n)}
	// The guest's start wrote pages 3 and 40; prepare's scan finds them.
	write(3)
	write(40)
	if err := b.DataPages(b.placed.AddRange); err != nil {
		t.Fatal(err)
	}
	if !b.placed.Has(3) || !b.placed.Has(40) || b.placed.Count() != 2 {
		t.Fatalf("scan placed %d pages, want 3 and 40", b.placed.Count())
	}
	// dmig placed pages 10-19 and 50.
	for p := uint64(10); p < 20; p++ {
		write(p)
		b.placed.Add(p)
	}
	write(50)
	b.placed.Add(50)
	pl := newPlacer()
	pl.blocks = []*dstBlock{b}
	owed := []wire.Run{{Block: 0, Page: 0, Count: 5}, {Block: 0, Page: 12, Count: 20}, {Block: 0, Page: 40, Count: 1}, {Block: 0, Page: 60, Count: 4}}
	if err := pl.markPending(owed); err != nil {
		t.Fatal(err)
	}
	if got, want := pl.missing.Load(), int64(5+20+1+4); got != want {
		t.Fatalf("%d pages missing, want %d", got, want)
	}
	held := pages.NewSet(n)
	if err := b.DataPages(held.AddRange); err != nil {
		t.Fatal(err)
	}
	written := func(p uint64) bool { return p == 3 || p == 40 || p == 50 || (p >= 10 && p < 20) }
	for p := uint64(0); p < n; p++ {
		isOwed := b.missing.Has(p)
		if want := written(p) && !isOwed; held.Has(p) != want {
			t.Errorf("page %d: owed %v, written %v, in the file %v", p, isOwed, written(p), held.Has(p))
		}
	}
	for _, p := range []uint64{10, 11, 50} {
		got := make([]byte, pageSize)
		if _, err := f.ReadAt(got, int64(p*pageSize)); err != nil || !bytes.Equal(got, page(p)) {
			t.Errorf("page %d not owed lost its data: %v", p, err)
		}
	}
	if err := pl.markPending([]wire.Run{{Block: 0, Page: 62, Count: 4}}); err == nil {
		t.Error("pages beyond the block accepted")
	}
}

// placedCall is one report to a PlaceWatcher.
type placedCall struct {
	page uint64
	data []byte // nil: a zero page
}

// recordingWatcher records each report, in order.
type recordingWatcher struct{ calls []placedCall }

func (w *recordingWatcher) Placed(_ uint32, page uint64, data []byte) {
	w.calls = append(w.calls, placedCall{page, bytes.Clone(data)})
}

// place reports a page to the watcher only when this call put it in: a
// page another route placed first (EEXIST, the fault and the push racing)
// holds that route's bytes, and a watcher told of both would count the
// page twice and check bytes the guest never saw.
func TestPlaceReportsOnlyWhatItPlaced(t *testing.T) {
	const n = 4
	f := shmFile(t, n)
	u, guest := registeredGuest(t, f, n)
	start := uintptr(unsafe.Pointer(&guest[0]))
	b := &dstBlock{Block: &ramfile.Block{Name: "ram", File: f,
		Maps: []ramfile.Mapping{{Start: start, End: start + n*pageSize}}}, idx: 0, npages: n}
	w := &recordingWatcher{}
	pl := newPlacer()
	pl.u, pl.watch = u, w
	first, second := bytes.Repeat([]byte{1}, pageSize), bytes.Repeat([]byte{2}, pageSize)
	if err := pl.place(b, 1, first); err != nil {
		t.Fatal(err)
	}
	if err := pl.place(b, 1, second); err != nil {
		t.Fatalf("a page placed twice: %v, want the second skipped", err)
	}
	if err := pl.place(b, 2, nil); err != nil {
		t.Fatal(err)
	}
	if err := pl.place(b, 2, second); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(guest[pageSize:2*pageSize], first) {
		t.Fatal("the second placement of page 1 replaced the first")
	}
	if len(w.calls) != 2 || w.calls[0].page != 1 || !bytes.Equal(w.calls[0].data, first) || w.calls[1].page != 2 || w.calls[1].data != nil {
		t.Fatalf("watcher told of %d placements: want page 1 with its first bytes, then page 2 zero", len(w.calls))
	}
}

// fill reports how many pages it wrote when a UFFDIO_COPY fails part-way
// (here: the RAM file's file system is full), and those pages are in the
// file: a caller records them as placed, and a later copy of one would
// otherwise meet EEXIST and leave the guest with the old bytes.
func TestFillCountsWhatItPlacedBeforeAFailure(t *testing.T) {
	const room, n = 8, 32 // pages the file system holds, pages written
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", room*pageSize), "dmig-fill-test", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount a %d-page tmpfs (needs root): %v: %s", room, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", mnt).Run() })
	f, err := os.Create(filepath.Join(mnt, "ram0"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(n * pageSize); err != nil {
		t.Fatal(err)
	}
	u, guest := registeredGuest(t, f, n)
	start := uintptr(unsafe.Pointer(&guest[0]))
	b := &dstBlock{Block: &ramfile.Block{Name: "ram", File: f, Mem: guest, Maps: []ramfile.Mapping{{Start: start, End: start + n*pageSize}}},
		npages: n, placed: pages.NewSet(n), missing: pages.NewSet(n)}
	pl := newPlacer()
	pl.u = u
	pl.blocks = []*dstBlock{b}
	done, err := pl.fill(b, 0, bytes.Repeat([]byte{7}, n*pageSize), nil)
	if !errors.Is(err, uffd.ErrNoMemory) {
		t.Fatalf("fill of %d pages into a %d-page file system: %v, want ErrNoMemory", n, room, err)
	}
	held := pages.NewSet(n)
	if err := b.DataPages(held.AddRange); err != nil {
		t.Fatal(err)
	}
	if done == 0 || done >= n || held.Count() != done || held.Next(done) != n { // exactly [0, done)
		t.Fatalf("fill failed (%v) reporting %d pages written; the file holds %d from page 0", err, done, held.Count())
	}
	t.Logf("fill wrote %d of %d pages before: %v", done, n, err)
}
