package ramfile

import (
	"bytes"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
)

// PlaceCheck compares pages as a destination places them with the paused
// source's RAM files: the second half of the RAM oracle, for the pages a
// post-copy or hybrid migration places after the destination has resumed
// (Diff covers those placed before). The source must stay paused, its
// files unchanged, until the last page is placed: dmig's source does, up
// to completion.
//
// Placed may be called from several goroutines; Result once they are done.
type PlaceCheck struct {
	paths []string // the source's RAM files, by block

	openOnce sync.Once
	files    []*os.File
	openErr  error // set once, by open

	// seen and bad: per block, a bit per page checked and per page that
	// differed, so that Overlap can tell which of them a Diff counted too.
	seen, bad [][]atomic.Uint64

	mu      sync.Mutex
	failErr error // the first page that could not be checked

	checked, differ atomic.Uint64
	first           atomic.Int64 // first differing page's offset + 1 (0: none)
	firstBlock      atomic.Uint32
}

// NewPlaceCheck checks placements against the source RAM files at paths,
// indexed by block. The files are opened at the first placement.
func NewPlaceCheck(paths []string) *PlaceCheck { return &PlaceCheck{paths: paths} }

// Placed compares the page at index page of block, placed with data (nil: a
// zero page), with the source's.
func (c *PlaceCheck) Placed(block uint32, page uint64, data []byte) {
	c.openOnce.Do(c.open)
	if c.openErr != nil {
		return
	}
	if int(block) >= len(c.files) {
		c.fail(fmt.Errorf("page %d placed in block %d: the source has %d", page, block, len(c.files)))
		return
	}
	want := make([]byte, DiffPage)
	if _, err := c.files[block].ReadAt(want, int64(page*DiffPage)); err != nil {
		c.fail(fmt.Errorf("read source page %d of block %d: %w", page, block, err))
		return
	}
	c.checked.Add(1)
	setBit(c.seen[block], page)
	same := bytes.Equal(want, data)
	if data == nil {
		same = bytes.Equal(want, make([]byte, DiffPage))
	}
	if !same {
		c.differ.Add(1)
		setBit(c.bad[block], page)
		if c.first.CompareAndSwap(0, int64(page*DiffPage)+1) {
			c.firstBlock.Store(block)
		}
	}
}

func (c *PlaceCheck) open() {
	for _, p := range c.paths {
		f, err := os.Open(p)
		if err != nil {
			c.openErr = fmt.Errorf("open source ram file: %w", err)
			return
		}
		c.files = append(c.files, f)
		fi, err := f.Stat()
		if err != nil {
			c.openErr = fmt.Errorf("stat source ram file: %w", err)
			return
		}
		words := (fi.Size()/DiffPage + 63) / 64
		c.seen = append(c.seen, make([]atomic.Uint64, words))
		c.bad = append(c.bad, make([]atomic.Uint64, words))
	}
}

func setBit(bits []atomic.Uint64, page uint64) {
	if page/64 < uint64(len(bits)) {
		bits[page/64].Or(1 << (page % 64))
	}
}

// Overlap counts the pages of block, among those checked so far, that lie
// in ext, and of those the ones that differed: a page placed before a
// Diff read its file (a fault served while the destination loaded its
// device state) is counted by both, and the oracle's totals count it once.
func (c *PlaceCheck) Overlap(block uint32, ext []Extent) (checked, differ uint64) {
	if int(block) >= len(c.seen) {
		return 0, 0
	}
	seen, bad := c.seen[block], c.bad[block]
	for _, e := range ext {
		last := min(uint64(e.Off+e.Len)/DiffPage, uint64(len(seen))*64)
		for p := uint64(e.Off) / DiffPage; p < last; p++ {
			if seen[p/64].Load()&(1<<(p%64)) != 0 {
				checked++
				if bad[p/64].Load()&(1<<(p%64)) != 0 {
					differ++
				}
			}
		}
	}
	return checked, differ
}

// fail records the first error that kept a page from being checked;
// Result reports it.
func (c *PlaceCheck) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failErr == nil {
		c.failErr = err
	}
}

// PlaceResult is what a PlaceCheck found.
type PlaceResult struct {
	// Checked pages were compared; Differ of them differ.
	Checked, Differ uint64
	// First is the offset, in FirstBlock, of the first page that differs
	// (Differ > 0).
	First      int64
	FirstBlock uint32
}

// Result closes the source's files and reports the pages checked; the
// error is the first that kept a page from being checked.
func (c *PlaceCheck) Result() (PlaceResult, error) {
	c.openOnce.Do(func() {})
	for _, f := range c.files {
		f.Close()
	}
	c.files = nil
	r := PlaceResult{Checked: c.checked.Load(), Differ: c.differ.Load(), FirstBlock: c.firstBlock.Load()}
	if f := c.first.Load(); f > 0 {
		r.First = f - 1
	}
	if c.openErr != nil {
		return r, c.openErr
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return r, c.failErr
}
