package ctl

import (
	"testing"
	"time"

	"github.com/dmig/dmig/internal/report"
)

// TestFiguresMonotone feeds the figures a dirtying guest's samples: each
// pass finds new dirty pages, so the pages left jump up at every pass, and
// a reconnection reads a new link's counters before the old link's bytes
// are added in. Progress and the counters never fall; the ETA never rises
// without a re-estimate counted and its note set.
func TestFiguresMonotone(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var f figures
	l := report.Live{Role: report.RoleSource, Phase: report.PhaseConnecting, GuestPages: 1000, Started: t0}
	f.observe(t0, l)
	var e Entry
	f.entry(t0, &e)
	if e.ETASeconds != nil || e.Progress != 0 {
		t.Fatalf("while connecting: %+v", e)
	}
	l.Phase = report.PhasePrecopy
	left := uint64(1000)
	var prev Entry
	now := t0
	for i := 1; i <= 60; i++ {
		now = now.Add(500 * time.Millisecond)
		l.PagesDone += 50
		l.BytesSent += 50 * 4096
		switch {
		case i%10 == 0:
			left += 300 // a new pass: the guest dirtied these meanwhile
		case left >= 50:
			left -= 50
		}
		if i == 35 {
			l.BytesSent -= 100 * 4096 // a new link, the old one's bytes not yet in
		}
		l.Left.Data = left
		f.observe(now, l)
		var e Entry
		f.entry(now, &e)
		if e.Progress < prev.Progress || e.BytesSent < prev.BytesSent || e.PagesDone < prev.PagesDone {
			t.Fatalf("sample %d ran backwards: %+v after %+v", i, e, prev)
		}
		if e.Progress < 0 || e.Progress > 1 {
			t.Fatalf("sample %d: progress %v", i, e.Progress)
		}
		if prev.ETASeconds != nil {
			if e.ETASeconds == nil {
				t.Fatalf("sample %d lost its ETA", i)
			}
			if *e.ETASeconds > *prev.ETASeconds && (e.ETAReestimates == prev.ETAReestimates || e.ETANote == "") {
				t.Fatalf("sample %d: ETA rose from %v to %v with no reason", i, *prev.ETASeconds, *e.ETASeconds)
			}
		}
		prev = e
	}
	if prev.ETASeconds == nil || prev.RateBytes < 50*4096*1.9 || prev.RateBytes > 50*4096*2.1 {
		t.Fatalf("rate %v B/s, ETA %v; want about %v B/s", prev.RateBytes, prev.ETASeconds, 100*4096)
	}
	l.Phase, l.Left = report.PhaseDone, report.PagesLeft{}
	now = now.Add(time.Second)
	f.observe(now, l)
	f.entry(now, &e)
	if e.Progress != 1 || e.ETASeconds == nil || *e.ETASeconds != 0 {
		t.Fatalf("done: progress %v, ETA %v", e.Progress, e.ETASeconds)
	}
}

// TestFiguresETAFalls: with a steady rate and no dirtying, the ETA counts
// down with the clock and is never re-estimated.
func TestFiguresETAFalls(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var f figures
	l := report.Live{Role: report.RoleDestination, Phase: report.PhasePostcopy, Started: t0, Left: report.PagesLeft{PostcopyMissing: 1000}}
	var last float64 = 1e9
	for i := 1; i <= 18; i++ {
		now := t0.Add(time.Duration(i) * 500 * time.Millisecond)
		l.PagesDone += 25
		l.BytesReceived += 25 * 4096
		l.Left.PostcopyMissing -= 25
		f.observe(now, l)
		var e Entry
		f.entry(now, &e)
		if e.ETASeconds == nil || *e.ETASeconds > last || e.ETAReestimates != 0 {
			t.Fatalf("sample %d: ETA %v after %v, %d re-estimates", i, e.ETASeconds, last, e.ETAReestimates)
		}
		last = *e.ETASeconds
		// 50 pages/s: the estimate is what is left at that rate.
		if want := float64(l.Left.PostcopyMissing) / 50; last < want-0.6 || last > want+0.6 {
			t.Fatalf("sample %d: ETA %v s, want about %v s", i, last, want)
		}
	}
}
