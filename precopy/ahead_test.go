package precopy

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dmig/dmig/internal/pages"
	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/layout"
)

func TestPassETA(t *testing.T) {
	t0 := time.Unix(1000, 0)
	e := passETA{last: 10000, at: t0}
	if _, ok := e.update(10000, t0.Add(50*time.Millisecond)); ok {
		t.Fatal("an estimate with nothing sent yet")
	}
	// 1000 pages per 50 ms: 20 000 pages/s.
	left, ok := e.update(9000, t0.Add(100*time.Millisecond))
	if !ok || left != 450*time.Millisecond {
		t.Fatalf("left %v (%v), want 450ms", left, ok)
	}
	// References done, data at a tenth of the rate: the estimate grows
	// towards it rather than jumping.
	left, _ = e.update(8900, t0.Add(150*time.Millisecond))
	if left <= 450*time.Millisecond || left >= 4450*time.Millisecond {
		t.Fatalf("left %v after the rate fell tenfold, want between the two rates' estimates", left)
	}
}

// countingAgent serves layout l and signals each take on took.
func countingAgent(t *testing.T, l *layout.Layout) (string, *atomic.Int32, chan struct{}) {
	t.Helper()
	var n atomic.Int32
	took := make(chan struct{}, 16)
	addr := serveGet(t, func(context.Context) (*layout.Layout, error) {
		n.Add(1)
		took <- struct{}{}
		return l, nil
	})
	return addr, &n, took
}

// TestLayoutFetchedAhead: during a pass, the next pass's layout is fetched
// before the pass ends, and that pass takes it without a fetch of its own;
// a fetch ahead no pass takes is dropped.
func TestLayoutFetchedAhead(t *testing.T) {
	l := &layout.Layout{Disks: []layout.Disk{{ID: 0, Name: "data"}}, Runs: []layout.Run{{GuestPage: 0, Pages: 16, Offset: 4096}}}
	addr, takes, took := countingAgent(t, l)
	const n = 4096
	b := &srcBlock{idx: 0, npages: n, pending: pages.NewSet(n)}
	s := &source{blocks: []*srcBlock{b}}
	s.refs = newRefSource(hybridCfg(Config{Mode: ModeHybrid, LayoutAddr: addr}), s.blocks, nil)
	ctx := context.Background()

	s.refs.startFetch(ctx, 1, n)
	s.prepareRefs(ctx, 1)
	if s.refs.lay == nil || s.refs.pass != 1 || takes.Load() != 1 {
		t.Fatalf("first pass: layout %v for pass %d after %d takes, want the one fetched ahead", s.refs.lay != nil, s.refs.pass, takes.Load())
	}
	<-took
	s.refs.fetchTook = 20 * time.Millisecond // a quick walk: the lead is 60 ms

	// A pass of n pages sent over about 600 ms.
	b.pending.Fill()
	stop := s.fetchAhead(ctx, 1)
	for p := range uint64(n) {
		b.pending.Remove(p)
		if p%64 == 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	select {
	case <-took:
	case <-time.After(10 * time.Second):
		t.Fatal("no layout fetched ahead for pass 2")
	}
	stop()
	if s.refs.ahead == nil || s.refs.ahead.iter != 2 {
		t.Fatalf("fetch ahead %+v, want one for pass 2", s.refs.ahead)
	}
	s.prepareRefs(ctx, 2)
	if s.refs.pass != 2 || takes.Load() != 2 || s.refs.ahead != nil {
		t.Fatalf("pass 2 has the layout of pass %d after %d takes (ahead %v), want the one fetched ahead", s.refs.pass, takes.Load(), s.refs.ahead)
	}

	// Fetched ahead for a pass that does not come: the final layout is
	// fetched anew, the other dropped.
	s.refs.startFetch(ctx, 3, n)
	s.refs.prepare(ctx, 4, n)
	if s.refs.pass != 4 || s.refs.ahead != nil {
		t.Fatalf("layout of pass %d, ahead %v: want pass 4's, none ahead", s.refs.pass, s.refs.ahead)
	}
}

// TestLayoutAheadWaitedOnlyForItsSaving: a layout fetched ahead that is
// still being walked when its pass starts is waited for only as long as it
// would save that pass; then it is dropped, the pass goes without
// references, and the walk's time so far counts as the last fetch's.
func TestLayoutAheadWaitedOnlyForItsSaving(t *testing.T) {
	l := &layout.Layout{Disks: []layout.Disk{{ID: 0, Name: "data"}}, Runs: []layout.Run{{GuestPage: 0, Pages: 16, Offset: 4096}}}
	var takes atomic.Int32
	addr := serveGet(t, func(ctx context.Context) (*layout.Layout, error) {
		if takes.Add(1) == 1 {
			return l, nil
		}
		<-ctx.Done() // a walk that does not end while the test runs
		return nil, ctx.Err()
	})
	const n = 64
	b := &srcBlock{idx: 0, npages: n, pending: pages.NewSet(n)}
	s := &source{blocks: []*srcBlock{b}}
	s.refs = newRefSource(hybridCfg(Config{Mode: ModeHybrid, LayoutAddr: addr, LayoutTimeout: time.Minute}), s.blocks, nil)
	ctx := context.Background()
	s.prepareRefs(ctx, 1)
	if s.refs.pass != 1 {
		t.Fatalf("first pass has the layout of pass %d", s.refs.pass)
	}
	// Pass 1 sent 4 MB in 1 s; pass 2 has the 16 named pages pending
	// (64 KiB: 16 ms at that rate, so the least wait applies).
	s.rep.IterationLog = append(s.rep.IterationLog, report.Iteration{Bytes: 4 << 20, MS: 1000})
	for p := range uint64(16) {
		b.pending.Add(p)
	}
	s.refs.startFetch(ctx, 2, n)
	time.Sleep(50 * time.Millisecond) // the walk has run a while
	t0 := time.Now()
	s.prepareRefs(ctx, 2)
	waited := time.Since(t0)
	if waited > 2*time.Second {
		t.Fatalf("pass 2 waited %v for a layout that would save 16 ms", waited)
	}
	if s.refs.pass != 1 || s.refs.ahead != nil {
		t.Fatalf("pass 2 has the layout of pass %d (ahead %v), want none of its own and the fetch dropped", s.refs.pass, s.refs.ahead)
	}
	if s.refs.fetchTook < 50*time.Millisecond+aheadMinWait {
		t.Fatalf("last fetch counted as %v, want at least the %v the dropped walk ran", s.refs.fetchTook, 50*time.Millisecond+aheadMinWait)
	}
	// The next pass weighs a fetch at that cost: 16 named pages do not pay.
	if s.fetchPays(3) {
		t.Fatal("a fetch that took longer than the pass it would save still pays")
	}
}
