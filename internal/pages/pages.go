// Package pages holds the page sets both ends of a migration keep: a bitmap
// of page numbers safe for concurrent use, and its conversion to runs.
package pages

import (
	"math/bits"
	"sync/atomic"

	"github.com/dmig/dmig/wire"
)

// Set is a fixed-size set of page numbers. Add, Remove and Has are safe for
// concurrent use; Count is exact only when nothing changes the set.
type Set struct {
	words []atomic.Uint64
	n     uint64
	count atomic.Int64
}

// NewSet returns an empty set of pages [0, n).
func NewSet(n uint64) *Set {
	return &Set{words: make([]atomic.Uint64, (n+63)/64), n: n}
}

// Len is the size of the page space.
func (s *Set) Len() uint64 { return s.n }

// Count is the number of pages in the set.
func (s *Set) Count() uint64 { return uint64(s.count.Load()) }

// Add adds page p and reports whether it was absent.
func (s *Set) Add(p uint64) bool {
	w, b := &s.words[p/64], uint64(1)<<(p%64)
	if old := w.Or(b); old&b == 0 {
		s.count.Add(1)
		return true
	}
	return false
}

// Remove removes page p and reports whether it was present. Exactly one of
// several concurrent Removes of a page reports true.
func (s *Set) Remove(p uint64) bool {
	w, b := &s.words[p/64], uint64(1)<<(p%64)
	if old := w.And(^b); old&b != 0 {
		s.count.Add(-1)
		return true
	}
	return false
}

// Has reports whether page p is in the set.
func (s *Set) Has(p uint64) bool { return s.words[p/64].Load()&(1<<(p%64)) != 0 }

// AddRange adds pages [p, p+n).
func (s *Set) AddRange(p, n uint64) {
	for i := p; i < p+n; i++ {
		s.Add(i)
	}
}

// Fill adds every page.
func (s *Set) Fill() {
	for i := range s.words {
		s.words[i].Store(^uint64(0))
	}
	if r := s.n % 64; r != 0 {
		s.words[len(s.words)-1].Store(1<<r - 1)
	}
	s.count.Store(int64(s.n))
}

// Clear removes every page.
func (s *Set) Clear() {
	for i := range s.words {
		s.words[i].Store(0)
	}
	s.count.Store(0)
}

// Next returns the first page >= p in the set, or Len() if none.
func (s *Set) Next(p uint64) uint64 {
	if p >= s.n {
		return s.n
	}
	i := p / 64
	w := s.words[i].Load() & (^uint64(0) << (p % 64))
	for {
		if w != 0 {
			q := i*64 + uint64(bits.TrailingZeros64(w))
			return min(q, s.n)
		}
		i++
		if i >= uint64(len(s.words)) {
			return s.n
		}
		w = s.words[i].Load()
	}
}

// Runs calls fn for each maximal run [start, start+count) of pages in the
// set within [from, to), in order, until fn returns false.
func (s *Set) Runs(from, to uint64, fn func(start, count uint64) bool) {
	to = min(to, s.n)
	for p := s.nextBefore(from, to); p < to; {
		q := p + 1
		for q < to && s.Has(q) {
			q++
		}
		if !fn(p, q-p) {
			return
		}
		p = s.nextBefore(q, to)
	}
}

// nextBefore is Next(p) if that is below to, else to or more: it scans no
// word past to's, so that Runs over a few pages of a large sparse set
// costs those pages, not the rest of the set (making 8 k owed pages
// missing at switchover scanned an empty 8 GiB set 8 k times: 80 ms).
func (s *Set) nextBefore(p, to uint64) uint64 {
	if p >= to {
		return to
	}
	i := p / 64
	w := s.words[i].Load() & (^uint64(0) << (p % 64))
	last := (to - 1) / 64
	for {
		if w != 0 {
			return i*64 + uint64(bits.TrailingZeros64(w))
		}
		i++
		if i > last {
			return to
		}
		w = s.words[i].Load()
	}
}

// AppendRuns adds the pages of s, as runs of block, to a run list: the one
// way both engines turn a set into what the wire carries.
func AppendRuns(runs []wire.Run, block uint32, s *Set) []wire.Run {
	s.Runs(0, s.n, func(start, count uint64) bool {
		if k := len(runs); k > 0 && runs[k-1].Block == block && runs[k-1].Page+runs[k-1].Count == start {
			runs[k-1].Count += count
		} else {
			runs = append(runs, wire.Run{Block: block, Page: start, Count: count})
		}
		return true
	})
	return runs
}
