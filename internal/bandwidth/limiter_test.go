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

// A cap lowered after fault replies ran the bucket into the old (large)
// budget's debt: bulk goes on within a few quanta of the new rate, not
// after the seconds the old debt would take to pay at the new rate, and
// from the change on every window holds the new cap.
func TestLimiterSetRateForgivesOldDebt(t *testing.T) {
	clk := newFakeClock()
	l := New(1_000_000_000, clk, nil)
	var gs []grant
	u := &writer{p: l.Urgent(), clk: clk, size: 1 << 20, grants: &gs}
	for range 20 { // 20 MiB at once: the budget (20 MB) and the burst
		u.step(t)
	}
	if l.tokens > -10e6 {
		t.Fatalf("the fault replies left the bucket at %.0f, want deep in debt", l.tokens)
	}
	changed := clk.Now()
	l.SetRate(2_000_000)
	var after []grant
	b := &writer{p: l.Bulk(), clk: clk, size: 1 << 20, grants: &after}
	b.step(t)
	if waited := clk.Now().Sub(changed); waited > 100*time.Millisecond {
		t.Errorf("the first bulk write after lowering the cap waited %v", waited)
	}
	for clk.Now().Sub(changed) < 5*time.Second {
		b.step(t)
	}
	within(t, "after lowering", maxWindow(after, changed), 2_000_000)
	if st := l.Stats(); st.Mean <= 0 {
		t.Errorf("stats %+v", st)
	}
}

// Every SetRate that changes the cap is remembered, with its time and the
// bytes granted before it; one that sets the same cap is not. The rate
// between two changes, from their figures, is the cap of that segment.
func TestLimiterChangesRecorded(t *testing.T) {
	clk := newFakeClock()
	l := New(10_000_000, clk, nil)
	var gs []grant
	w := &writer{p: l.Bulk(), clk: clk, size: 1 << 20, grants: &gs}
	run := func(d time.Duration) {
		t0 := clk.Now()
		for clk.Now().Sub(t0) < d {
			w.step(t)
		}
	}
	run(2 * time.Second)
	l.SetRate(30_000_000)
	l.SetRate(30_000_000)
	run(4 * time.Second)
	l.SetRate(0)
	st := l.Stats()
	if len(st.Changes) != 2 || st.Dropped != 0 {
		t.Fatalf("changes %+v, dropped %d; want 2", st.Changes, st.Dropped)
	}
	c0, c1 := st.Changes[0], st.Changes[1]
	if c0.From != 10_000_000 || c0.To != 30_000_000 || c1.From != 30_000_000 || c1.To != 0 {
		t.Fatalf("changes %+v", st.Changes)
	}
	if c0.Elapsed < 2*time.Second || c0.Elapsed > 2100*time.Millisecond || !c0.At.Equal(c0.At.Add(0)) {
		t.Errorf("first change at %v", c0.Elapsed)
	}
	seg := float64(c1.Bytes-c0.Bytes) / (c1.Elapsed - c0.Elapsed).Seconds()
	if seg > 1.05*30_000_000 || seg < 0.9*30_000_000 {
		t.Errorf("rate between the changes %.0f bytes/s, cap 30M", seg)
	}
	rep := st.Report()
	if len(rep.Changes) != 2 || rep.Changes[1].ToBytesPerS != 0 || rep.Changes[0].BytesBefore != c0.Bytes || rep.MaxBytesPerS != 0 {
		t.Errorf("report %+v", rep)
	}
	for range maxChanges {
		l.SetRate(MinRate)
		l.SetRate(2 * MinRate)
	}
	if st := l.Stats(); len(st.Changes) != maxChanges || st.Dropped != 2*maxChanges-(maxChanges-2) {
		t.Errorf("after %d more changes: %d kept, %d dropped", 2*maxChanges, len(st.Changes), st.Dropped)
	}
}

// SetRate from another goroutine while writers pace on the wall clock
// (run with -race): after raising the cap from 2M to 40M, the writers get
// far more than the old cap allows over the next second, and after
// lowering it to 2M, no more than the new cap allows. The bounds are
// generous (a loaded machine wakes writers late, so only the upper bound
// is the cap's own); what they catch is a writer still sleeping for the
// old rate, or a new rate not seen.
func TestLimiterSetRateLive(t *testing.T) {
	l := New(2_000_000, nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	for range 3 {
		p := l.Bulk()
		go func() {
			defer func() { done <- struct{}{} }()
			for {
				if _, err := p.Pace(ctx, 1<<20); err != nil {
					return
				}
			}
		}()
	}
	window := func() (uint64, time.Duration) {
		b0, t0 := l.Stats().Bytes, time.Now()
		time.Sleep(time.Second)
		return l.Stats().Bytes - b0, time.Since(t0)
	}
	time.Sleep(300 * time.Millisecond)
	l.SetRate(40_000_000)
	up, d := window()
	if float64(up) < 0.5*40e6 || float64(up) > 40e6*d.Seconds()*1.05+1e6 {
		t.Errorf("after raising the cap to 40M: %d bytes in %v", up, d)
	}
	l.SetRate(2_000_000)
	down, d := window()
	// The new burst and budget (a few percent of a second), and the
	// grant a writer was given just before the change (a quantum of the
	// old rate, 400 kB), on top of the new cap.
	if float64(down) > 2e6*d.Seconds()*1.05+3*400e3 {
		t.Errorf("after lowering the cap to 2M: %d bytes in %v", down, d)
	}
	if float64(down) < 0.5*2e6 {
		t.Errorf("after lowering the cap to 2M: only %d bytes in %v", down, d)
	}
	cancel()
	for range 3 {
		<-done
	}
}
