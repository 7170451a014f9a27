package dbrestore

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dmig/dmig/internal/pages"
	"github.com/dmig/dmig/internal/ramfile"
	"github.com/dmig/dmig/uffd"
	"github.com/dmig/dmig/wire"
)

// placer owns the destination guest's RAM: its blocks, which pages are
// placed before resume and which are missing after switchover, the fault
// handlers waiting for a page, and placing a page whichever route brought
// it (bulk push, urgent reply, storage restore, zero). It knows nothing of
// connections or of the session's phases.
//
// Invariants:
//   - A page is missing from markPending until resolved, which counts it
//     once and wakes its waiters; done closes when none is missing.
//   - place writes a page with UFFDIO_COPY (or ZEROPAGE) only: atomic for
//     the guest, which never sees a half-written page, and a no-op
//     (EEXIST) for a page another route placed first.
type placer struct {
	blocks []*dstBlock
	u      *uffd.FD

	missing  atomic.Int64  // pages still owed after switchover
	done     chan struct{} // closed when missing reaches 0
	doneOnce sync.Once

	waitMu  sync.Mutex
	waiters map[pageKey]*waiter

	watch PlaceWatcher // nil: none (the guest's, if it is one)
}

func newPlacer() *placer {
	return &placer{done: make(chan struct{}), waiters: make(map[pageKey]*waiter)}
}

// waiter is the guest's faults waiting for a page from the source: the
// first made it, the others joined.
type waiter struct {
	ch    chan struct{} // closed when the page is in place
	since time.Time     // the first fault
}

type pageKey struct {
	block uint32
	page  uint64
}

// dstBlock is one RAM block of the guest, open and mapped writable
// (ramfile.Block), with what the destination knows of its pages.
type dstBlock struct {
	*ramfile.Block
	idx    uint32
	npages uint64
	// placed: pages written before resume, by dmig or by the guest's
	// start (prepare). The file holds data only there: the rest are holes.
	placed  *pages.Set
	missing *pages.Set // owed after switchover
	// writeMu serializes the receive path's pwrites to the file (fill's
	// overwrites): the kernel does too (the shmem inode's lock), but its
	// waiters spin on the CPU the other connections' reads and the
	// restore need.
	writeMu sync.Mutex
}

// markPending makes the pages the source still owes missing: holes in the
// RAM file, which the guest's registered mapping faults on.
func (d *placer) markPending(runs []wire.Run) error {
	for _, r := range runs {
		if int(r.Block) >= len(d.blocks) || r.Page+r.Count > d.blocks[r.Block].npages {
			return classed(wire.ErrorProtocol, fmt.Errorf("switchover names pages [%d, +%d) of block %d beyond the guest", r.Page, r.Count, r.Block))
		}
		b := d.blocks[r.Block]
		// Only placed pages can hold data (see dstBlock.placed); the rest
		// are holes already. Carried references are mostly of pages never
		// written, and a punch each would cost the paused guest a
		// syscall per page: about 1 µs for a hole, 3 µs for a page.
		var err error
		b.placed.Runs(r.Page, r.Page+r.Count, func(first, count uint64) bool {
			err = b.PunchHoles(first, count)
			return err == nil
		})
		if err != nil {
			return classed(wire.ErrorResource, fmt.Errorf("make pending pages missing: %w", err))
		}
		for p := r.Page; p < r.Page+r.Count; p++ {
			if b.missing.Add(p) {
				d.missing.Add(1)
			}
		}
	}
	return nil
}

// unlisted returns the pages of runs not yet missing. Call it before
// resume, with runs checked against the blocks (restorer.owed).
func (d *placer) unlisted(runs []wire.Run) []wire.Run {
	var out []wire.Run
	for _, r := range runs {
		b := d.blocks[r.Block]
		for p := r.Page; p < r.Page+r.Count; p++ {
			if b.missing.Has(p) {
				continue
			}
			out = wire.AppendPage(out, r.Block, p)
		}
	}
	return out
}

// locate maps a guest fault address to a block and page.
func (d *placer) locate(addr uintptr) (*dstBlock, uint64, bool) {
	for _, b := range d.blocks {
		if p, ok := b.Locate(addr); ok {
			return b, p, true
		}
	}
	return nil, 0, false
}

// resolved records that page p is in place after switchover, and releases
// any fault handler waiting for it, whichever route placed it. It reports
// whether this call was the first for p (and so counted it).
func (d *placer) resolved(b *dstBlock, p uint64, counter *atomic.Uint64) bool {
	first, _, _ := d.resolvedAsked(b, p, counter, counter)
	return first
}

// resolvedAsked is resolved for a page that came from the source: it is
// counted in asked if a guest fault was waiting for it, and then waited is
// how long since that fault, else in unasked.
func (d *placer) resolvedAsked(b *dstBlock, p uint64, asked, unasked *atomic.Uint64) (first bool, waited time.Duration, wasAsked bool) {
	key := pageKey{b.idx, p}
	d.waitMu.Lock()
	w, wasAsked := d.waiters[key]
	if wasAsked {
		close(w.ch)
		delete(d.waiters, key)
		waited = time.Since(w.since)
	}
	d.waitMu.Unlock()
	if !b.missing.Remove(p) {
		return false, 0, false
	}
	counter := unasked
	if wasAsked {
		counter = asked
	}
	counter.Add(1)
	if d.missing.Add(-1) == 0 {
		d.doneOnce.Do(func() { close(d.done) })
	}
	return true, waited, wasAsked
}

// place puts data (nil: a zero page) at page p of b after resume, atomically
// with UFFDIO_COPY, and wakes the guest's waiters in every mapping.
func (d *placer) place(b *dstBlock, p uint64, data []byte) error {
	addr, ok := b.GuestAddr(p)
	if !ok {
		return fmt.Errorf("page %d of block %s is in no guest mapping", p, b.Name)
	}
	// placed: this call put the page in; another route may have won the
	// race (EEXIST), and then the guest holds that route's copy, not data.
	var placed bool
	var err error
	if data == nil {
		_, err = d.u.ZeroPage(uffd.Range{Start: addr, Len: pageSize}, false)
		placed = err == nil
	} else {
		var n int
		n, _, err = d.u.CopyRange(addr, data, 0)
		placed = n > 0
	}
	if err != nil && !errors.Is(err, uffd.ErrExists) {
		return fmt.Errorf("place page %d of block %s: %w", p, b.Name, err)
	}
	if err != nil && data == nil {
		_ = d.u.Wake(uffd.Range{Start: addr, Len: pageSize})
	}
	if placed && d.watch != nil {
		d.watch.Placed(b.idx, p, data)
	}
	for _, m := range b.Maps[1:] {
		if off := p * pageSize; off >= m.Offset && off < m.Offset+uint64(m.Len()) {
			_ = d.u.Wake(uffd.Range{Start: m.Start + uintptr(off-m.Offset), Len: pageSize})
		}
	}
	return nil
}

// fill writes data into pages first… of b before switchover: the pages
// the file does not hold yet with UFFDIO_COPY through the guest's
// mapping, the others (a later pass's copy of a page) with pwrite, under
// mu if not nil. A pwrite into shmem holds the file's inode lock, so every
// writer of the RAM file (each bulk connection, each restore collector)
// queued behind it, spinning on the cores they all need; UFFDIO_COPY
// allocates and fills the page under the guest's mmap lock, shared:
// scattered 4 KiB pages from two writers went in at 1.8 GB/s against
// pwrite's 1.2. It reports errors as the write's, with how many pages
// from first it had written by then: a UFFDIO_COPY that fails part-way
// has put the pages before the failure in, and its caller must record
// them as placed, or a later copy of one would meet EEXIST and leave the
// guest with the old one.
func (d *placer) fill(b *dstBlock, first uint64, data []byte, mu *sync.Mutex) (uint64, error) {
	n := uint64(len(data)) / pageSize
	for k := uint64(0); k < n; {
		// A stretch of pages all absent or all present.
		absent := !b.placed.Has(first + k)
		e := k + 1
		for e < n && !b.placed.Has(first+e) == absent {
			e++
		}
		if absent {
			placed, err := d.copyAbsent(b, first+k, data[k*pageSize:e*pageSize], mu)
			if err != nil {
				return k + placed, err
			}
			k += placed
			if k < e {
				continue // stopped at a page someone else placed meanwhile
			}
		} else if err := writeAt(b, data[k*pageSize:e*pageSize], first+k, mu); err != nil {
			return k, err
		}
		k = e
	}
	return n, nil
}

// copyAbsent places data at pages first… of b with UFFDIO_COPY and returns
// how many pages it placed; at a page already present it overwrites that
// one with pwrite and stops after it.
func (d *placer) copyAbsent(b *dstBlock, first uint64, data []byte, mu *sync.Mutex) (uint64, error) {
	addr, ok := b.GuestAddr(first)
	if !ok || d.u == nil {
		return uint64(len(data)) / pageSize, writeAt(b, data, first, mu)
	}
	if last, ok := b.GuestAddr(first + uint64(len(data))/pageSize - 1); !ok || last-addr != uintptr(len(data)-pageSize) {
		// Not one stretch of one mapping.
		return uint64(len(data)) / pageSize, writeAt(b, data, first, mu)
	}
	n, err := d.u.Copy(addr, data, 0)
	placed := uint64(n) / pageSize
	switch {
	case err == nil:
		return placed, nil
	case errors.Is(err, uffd.ErrExists):
		if err := writeAt(b, data[placed*pageSize:(placed+1)*pageSize], first+placed, mu); err != nil {
			return placed, err
		}
		return placed + 1, nil
	default:
		return placed, fmt.Errorf("place pages [%d, +%d) of RAM block %s: %w", first+placed, uint64(len(data))/pageSize-placed, b.Name, err)
	}
}

// writeAt pwrites data at page first of b, under mu if not nil.
func writeAt(b *dstBlock, data []byte, first uint64, mu *sync.Mutex) error {
	if mu != nil {
		mu.Lock()
		defer mu.Unlock()
	}
	if _, err := b.File.WriteAt(data, int64(first*pageSize)); err != nil {
		return fmt.Errorf("write pages [%d, +%d) of RAM block %s: %w", first, len(data)/pageSize, b.Name, err)
	}
	return nil
}

// missingRuns lists every page still missing.
func (d *placer) missingRuns() []wire.Run {
	var runs []wire.Run
	for _, b := range d.blocks {
		runs = pages.AppendRuns(runs, b.idx, b.missing)
	}
	return runs
}
