package pages

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
)

func TestSet(t *testing.T) {
	s := NewSet(200)
	if !s.Add(3) || s.Add(3) || !s.Add(64) || !s.Add(199) {
		t.Fatal("add results wrong")
	}
	if s.Count() != 3 || !s.Has(64) || s.Has(65) {
		t.Fatalf("count %d", s.Count())
	}
	if s.Next(0) != 3 || s.Next(4) != 64 || s.Next(65) != 199 || s.Next(200) != 200 {
		t.Fatalf("next: %d %d %d", s.Next(0), s.Next(4), s.Next(65))
	}
	s.AddRange(10, 5)
	var runs [][2]uint64
	s.Runs(0, 200, func(a, n uint64) bool { runs = append(runs, [2]uint64{a, n}); return true })
	want := [][2]uint64{{3, 1}, {10, 5}, {64, 1}, {199, 1}}
	if len(runs) != len(want) {
		t.Fatalf("runs %v want %v", runs, want)
	}
	for i := range want {
		if runs[i] != want[i] {
			t.Fatalf("runs %v want %v", runs, want)
		}
	}
	if !s.Remove(3) || s.Remove(3) || s.Count() != 7 {
		t.Fatalf("remove: count %d", s.Count())
	}
	s.Fill()
	if s.Count() != 200 || s.Next(150) != 150 || !s.Has(199) {
		t.Fatal("fill")
	}
	n := 0
	s.Runs(0, 200, func(a, c uint64) bool { n += int(c); return true })
	if n != 200 {
		t.Fatalf("runs after fill cover %d", n)
	}
	s.Clear()
	if s.Count() != 0 || s.Next(0) != 200 {
		t.Fatal("clear")
	}
}

// Concurrent removers: each page is claimed exactly once.
func TestSetRemoveOnce(t *testing.T) {
	const n = 10000
	s := NewSet(n)
	s.Fill()
	var wg sync.WaitGroup
	claimed := make([]int, 4)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for range 3 * n {
				if s.Remove(uint64(r.IntN(n))) {
					claimed[w]++
				}
			}
			for p := range uint64(n) {
				if s.Remove(p) {
					claimed[w]++
				}
			}
		}()
	}
	wg.Wait()
	if total := claimed[0] + claimed[1] + claimed[2] + claimed[3]; total != n || s.Count() != 0 {
		t.Fatalf("claimed %d of %d, count %d", total, n, s.Count())
	}
}

// Runs over any range finds exactly the set's pages in it, in maximal runs.
func TestSetRunsRanges(t *testing.T) {
	const n = 1000
	s := NewSet(n)
	for p := uint64(0); p < n; p++ {
		if (p*2654435761)%7 < 3 || p >= 600 && p < 700 {
			s.Add(p)
		}
	}
	for from := uint64(0); from <= n+5; from += 13 {
		for to := from; to <= n+70; to += 61 {
			var got []uint64
			last := uint64(0)
			s.Runs(from, to, func(start, count uint64) bool {
				if len(got) > 0 && start <= last {
					t.Fatalf("Runs(%d, %d): run at %d not after %d, or not maximal", from, to, start, last)
				}
				for p := start; p < start+count; p++ {
					got = append(got, p)
				}
				last = start + count
				return true
			})
			var want []uint64
			for p := from; p < min(to, n); p++ {
				if s.Has(p) {
					want = append(want, p)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("Runs(%d, %d) = %v, want %v", from, to, got, want)
			}
		}
	}
}

// BenchmarkRunsSmallRange: Runs over 1 page of an empty 8 GiB set costs
// that page, not a scan of the rest of the set.
func BenchmarkRunsSmallRange(b *testing.B) {
	s := NewSet(8 << 30 / 4096)
	for i := range b.N {
		p := uint64(i*4099) % (s.Len() - 1)
		s.Runs(p, p+1, func(uint64, uint64) bool { return true })
	}
}
