package precopy

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dmig/dmig/internal/pages"
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
