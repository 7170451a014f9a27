package main

import (
	"context"
	"errors"
	"testing"

	"github.com/dmig/dmig/internal/ctl"
	"github.com/dmig/dmig/internal/report"
)

// TestWatchedRestart: the counters an entry shows go on across a restart
// (the new attempt's start at zero), and the entry shows connecting until
// the new attempt's session is open.
func TestWatchedRestart(t *testing.T) {
	w := &watched{name: "g", mode: "hybrid"}
	attempt := func(sent, done uint64) {
		w.mu.Lock()
		w.snap = func() report.Live {
			return report.Live{Role: report.RoleSource, Phase: report.PhasePrecopy, BytesSent: sent, PagesDone: done, GuestPages: 100}
		}
		w.mu.Unlock()
	}
	attempt(1000, 10)
	if l := w.live(); l.BytesSent != 1000 || l.PagesDone != 10 || l.Phase != report.PhasePrecopy {
		t.Fatalf("first attempt: %+v", l)
	}
	w.restart()
	if l := w.live(); l.BytesSent != 1000 || l.PagesDone != 10 || l.Phase != report.PhaseConnecting || l.GuestPages != 100 {
		t.Fatalf("between attempts: %+v", l)
	}
	attempt(50, 1)
	if l := w.live(); l.BytesSent != 1050 || l.PagesDone != 11 {
		t.Fatalf("second attempt: %+v", l)
	}
}

// TestGatedGuard: a cancel accepted before Go makes Going fail with its
// reason, and the guard behind never hears of Go; once Going passed, a
// cancel is refused.
func TestGatedGuard(t *testing.T) {
	var inner countGuard
	var cancelled error
	ctx, cancel := context.WithCancelCause(context.Background())
	w := &watched{cancel: cancel}
	g := gatedGuard{Guard: &inner, gate: &w.gate}
	reason := errors.New("operator")
	if err := w.cancelFor(reason); err != nil {
		t.Fatal(err)
	}
	cancelled = context.Cause(ctx)
	if err := g.Going(context.Background()); !errors.Is(err, reason) || inner.going != 0 || !errors.Is(cancelled, reason) {
		t.Fatalf("going after a cancel: %v, guard told %d times, context cause %v", err, inner.going, cancelled)
	}

	w2 := &watched{cancel: func(error) { t.Fatal("a refused cancel cancelled the migration") }}
	g2 := gatedGuard{Guard: &inner, gate: &w2.gate}
	if err := g2.Going(context.Background()); err != nil || inner.going != 1 {
		t.Fatalf("going: %v", err)
	}
	if err := w2.cancelFor(reason); !errors.Is(err, ctl.ErrPastGo) {
		t.Fatalf("cancel after go: %v", err)
	}
}

type countGuard struct{ going int }

func (*countGuard) Pausing(context.Context) error { return nil }
func (g *countGuard) Going(context.Context) error { g.going++; return nil }
