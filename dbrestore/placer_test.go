package dbrestore

import (
	"bytes"
	"os"
	"testing"

	"github.com/dmig/dmig/internal/pages"
	"github.com/dmig/dmig/internal/ramfile"
	"github.com/dmig/dmig/wire"
)

// markPending frees every owed page the RAM file holds, placed by dmig or
// written at the guest's start (found by the scan prepare makes), skips
// the holes, and lists all owed pages missing; the others keep their data.
func TestMarkPendingFreesWhatTheFileHolds(t *testing.T) {
	const n = 64
	f, err := os.CreateTemp("/dev/shm", "dmig-placer-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close(); os.Remove(f.Name()) })
	if err := f.Truncate(n * pageSize); err != nil {
		t.Fatal(err)
	}
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
