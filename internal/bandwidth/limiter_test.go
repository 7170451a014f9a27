package bandwidth

import (
	"context"
	"errors"
	"testing"
	"time"
)

// fakeClock is time that passes only when someone sleeps: a test drives
// every writer from one goroutine, so the grants' times are exact.
type fakeClock struct{ t time.Time }

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_000_000, 0)} }

func (c *fakeClock) Now() time.Time { return c.t }

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d > 0 {
		c.t = c.t.Add(d)
	}
	return nil
}

type grant struct {
	at time.Time
	n  int
}

// writer writes frames of size bytes through p, recording each grant.
type writer struct {
	p      *Pacer
	clk    *fakeClock
	size   int
	left   int // of the current frame
	grants *[]grant
	waited time.Duration // time spent in Pace
}

// step writes the next piece of the current frame.
func (w *writer) step(t *testing.T) {
	t.Helper()
	if w.left == 0 {
		w.left = w.size
	}
	t0 := w.clk.Now()
	k, err := w.p.Pace(context.Background(), w.left)
	if err != nil || k <= 0 || k > w.left {
		t.Fatalf("Pace(%d) = %d, %v", w.left, k, err)
	}
	w.waited += w.clk.Now().Sub(t0)
	w.left -= k
	*w.grants = append(*w.grants, grant{w.clk.Now(), k})
}

// maxWindow is the most bytes granted in any 1 s window [t, t+1s) that
// starts at a grant (the worst window always starts at one).
func maxWindow(gs []grant, from time.Time) int {
	best, sum, j := 0, 0, 0
	for i := range gs {
		if gs[i].at.Before(from) {
			sum, j = 0, i+1
			continue
		}
		for j < len(gs) && gs[j].at.Before(gs[i].at.Add(time.Second)) {
			sum += gs[j].n
			j++
		}
		best = max(best, sum)
		sum -= gs[i].n
	}
	return best
}

func within(t *testing.T, what string, got int, rate uint64) {
	t.Helper()
	if float64(got) > 1.05*float64(rate) {
		t.Errorf("%s: %d bytes in a 1 s window, cap %d (limit %d)", what, got, rate, uint64(1.05*float64(rate)))
	}
}

// One bulk connection writing 1 MiB frames, far more than a quantum, for
// 10 s: every 1 s window within 5 %, and the bucket kept busy (at least
// 95 % of the cap over the run).
func TestLimiterWindowsBulk(t *testing.T) {
	for _, rate := range []uint64{MinRate, 10_000_000, 125_000_000, 1_000_000_000} {
		clk := newFakeClock()
		l := New(rate, clk, nil)
		var gs []grant
		w := &writer{p: l.Bulk(), clk: clk, size: 1 << 20, grants: &gs}
		start := clk.Now()
		for clk.Now().Sub(start) < 10*time.Second {
			w.step(t)
		}
		within(t, Format(rate), maxWindow(gs, start), rate)
		st := l.Stats()
		if st.Mean > 1.05*float64(rate) || st.Mean < 0.95*float64(rate) {
			t.Errorf("%s: mean %.0f bytes/s", Format(rate), st.Mean)
		}
		if st.Peak > 1.05*float64(rate) {
			t.Errorf("%s: meter's peak %.0f bytes/s", Format(rate), st.Peak)
		}
		if exact := maxWindow(gs, start); st.Peak > float64(exact) {
			t.Errorf("%s: meter's peak %.0f above the exact worst window %d", Format(rate), st.Peak, exact)
		}
	}
}

// Two bulk connections and an urgent one answering a fault every 10 ms:
// the urgent writes never wait (their debt stays within the budget) and
// every window of all three together stays within 5 %.
func TestLimiterUrgentExempt(t *testing.T) {
	const rate = 20_000_000
	clk := newFakeClock()
	l := New(rate, clk, nil)
	var gs []grant
	bulk := []*writer{
		{p: l.Bulk(), clk: clk, size: 1 << 20, grants: &gs},
		{p: l.Bulk(), clk: clk, size: 300 << 10, grants: &gs},
	}
	urgent := &writer{p: l.Urgent(), clk: clk, size: 4117, grants: &gs}
	start := clk.Now()
	next := start
	for i := 0; clk.Now().Sub(start) < 10*time.Second; i++ {
		bulk[i%2].step(t)
		for !clk.Now().Before(next) {
			urgent.step(t)
			next = next.Add(10 * time.Millisecond)
		}
	}
	if urgent.waited != 0 {
		t.Errorf("urgent writes waited %v in all", urgent.waited)
	}
	within(t, "bulk+urgent", maxWindow(gs, start), rate)
	if st := l.Stats(); st.Urgent == 0 || st.Urgent%4117 != 0 {
		t.Errorf("urgent bytes %d, want a multiple of 4117", st.Urgent)
	}
}

// Faults as fast as they come, beyond the budget: urgent writes then wait
// too, and the cap holds, bulk included.
func TestLimiterUrgentStorm(t *testing.T) {
	const rate = 5_000_000
	clk := newFakeClock()
	l := New(rate, clk, nil)
	var gs []grant
	u := &writer{p: l.Urgent(), clk: clk, size: 4117, grants: &gs}
	b := &writer{p: l.Bulk(), clk: clk, size: 1 << 20, grants: &gs}
	start := clk.Now()
	for i := 0; clk.Now().Sub(start) < 5*time.Second; i++ {
		u.step(t)
		if i%100 == 0 {
			b.step(t)
		}
	}
	if u.waited == 0 {
		t.Error("urgent writes beyond the cap never waited")
	}
	within(t, "urgent storm", maxWindow(gs, start), rate)
}

// A drain's total: two guests capped at 10 MB/s each under a total of
// 12 MB/s. Each guest and the total hold their caps.
func TestLimiterParent(t *testing.T) {
	clk := newFakeClock()
	total := New(12_000_000, clk, nil)
	a, b := New(10_000_000, clk, total), New(10_000_000, clk, total)
	var all, ga, gb []grant
	wa := &writer{p: a.Bulk(), clk: clk, size: 1 << 20, grants: &ga}
	wb := &writer{p: b.Bulk(), clk: clk, size: 1 << 20, grants: &gb}
	start := clk.Now()
	for clk.Now().Sub(start) < 10*time.Second {
		wa.step(t)
		wb.step(t)
	}
	within(t, "guest a", maxWindow(ga, start), 10_000_000)
	within(t, "guest b", maxWindow(gb, start), 10_000_000)
	all = append(append(all, ga...), gb...)
	sortGrants(all)
	within(t, "total", maxWindow(all, start), 12_000_000)
	if st := total.Stats(); st.Bytes != a.Stats().Bytes+b.Stats().Bytes {
		t.Errorf("total metered %d, guests %d + %d", st.Bytes, a.Stats().Bytes, b.Stats().Bytes)
	}
}

func sortGrants(gs []grant) {
	for i := 1; i < len(gs); i++ {
		for j := i; j > 0 && gs[j].at.Before(gs[j-1].at); j-- {
			gs[j], gs[j-1] = gs[j-1], gs[j]
		}
	}
}

// SetRate while writes run: from a second after the change on, windows
// hold the new cap; lifting the cap lets writes through at once.
func TestLimiterSetRate(t *testing.T) {
	clk := newFakeClock()
	l := New(40_000_000, clk, nil)
	var gs []grant
	w := &writer{p: l.Bulk(), clk: clk, size: 1 << 20, grants: &gs}
	start := clk.Now()
	for clk.Now().Sub(start) < 3*time.Second {
		w.step(t)
	}
	changed := clk.Now()
	l.SetRate(8_000_000)
	for clk.Now().Sub(changed) < 5*time.Second {
		w.step(t)
	}
	within(t, "before", maxWindow(gs, start), 40_000_000)
	within(t, "after", maxWindow(gs, changed), 8_000_000)
	l.SetRate(0)
	t0 := clk.Now()
	for range 100 {
		w.step(t)
	}
	if clk.Now() != t0 {
		t.Errorf("uncapped writes waited %v", clk.Now().Sub(t0))
	}
	if l.Rate() != 0 || l.Stats().Rate != 0 {
		t.Errorf("rate %d after SetRate(0)", l.Rate())
	}
}

func TestPaceCancelled(t *testing.T) {
	l := New(MinRate, nil, nil)
	p := l.Bulk()
	ctx, cancel := context.WithCancel(context.Background())
	// Empty the bucket, then wait on a cancelled context.
	for range 10 {
		if _, err := p.Pace(ctx, 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	if _, err := p.Pace(ctx, 1<<20); !errors.Is(err, context.Canceled) {
		t.Fatalf("Pace on a cancelled context: %v", err)
	}
}

func TestParse(t *testing.T) {
	good := map[string]uint64{
		"": 0, "0": 0, "1000000": 1_000_000, "125M": 125_000_000, "125MB": 125_000_000, "125MB/s": 125_000_000,
		"1G": 1_000_000_000, "1.5G": 1_500_000_000, "1Gi": 1 << 30, "100Mi": 100 << 20, "100MiB/s": 100 << 20,
		"2000k": 2_000_000, "2000K": 2_000_000, "1T": 1e12,
	}
	for s, want := range good {
		if got, err := Parse(s); err != nil || got != want {
			t.Errorf("Parse(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"1Gbit", "1Gbit/s", "100Mb", "800Mbps", "fast", "10X", "-1M", "500k", "1", "1P0", "1e3M"} {
		if got, err := Parse(s); err == nil {
			t.Errorf("Parse(%q) = %d, want an error", s, got)
		}
	}
	for _, r := range []uint64{1_000_000, 125_000_000, 1_500_000_000} {
		if got, err := Parse(Format(r)); err != nil || got != r {
			t.Errorf("Parse(Format(%d)) = %d, %v", r, got, err)
		}
	}
}

// BenchmarkPaceUncapped is what every frame pays with no cap: the meter.
// (Batches are up to a megabyte, fault replies 4 KiB: against the write's
// system call this is noise.)
func BenchmarkPaceUncapped(b *testing.B) {
	l := New(0, nil, New(0, nil, nil))
	p := l.Bulk()
	ctx := context.Background()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := p.Pace(ctx, 1<<20); err != nil {
				b.Fatal(err)
			}
		}
	})
}
