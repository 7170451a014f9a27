package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/dmig/dmig/internal/report"
)

func TestProgressViewOffTerminal(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	v := newProgressView(w)
	if v != nil {
		t.Fatal("a progress view on a pipe")
	}
	// A nil view is inert.
	v.update(report.Progress{Phase: report.PhasePrecopy, GuestPages: 10})
	v.finish()
}

func TestProgressViewDraws(t *testing.T) {
	var buf bytes.Buffer
	v := newProgressViewTo(&buf)
	v.update(report.Progress{Phase: report.PhasePrecopy, Iteration: 2, GuestPages: 1000, Remaining: 250,
		DataPages: 700, ZeroPages: 300, Rate: 4096e3})
	v.update(report.Progress{Phase: report.PhasePostcopy, Iteration: 3, GuestPages: 1000, Remaining: 100,
		DataPages: 900, ZeroPages: 300, Rate: 4096e3, MaxBandwidth: 5_000_000})
	v.update(report.Progress{Phase: report.PhaseDone, Iteration: 3, GuestPages: 1000, DataPages: 1000, ZeroPages: 300})
	v.finish()
	out := buf.String()
	for _, want := range []string{"precopy pass 2", "data 700 zero 300", "left 250", "ETA 250ms", "75%",
		"postcopy pass 3", "left 100", "4 MB/s (cap 5M)", "90%", "100% |", "done pass 3 | data 1000 zero 300 | left 0"} {
		if !strings.Contains(out, want) {
			t.Errorf("progress output lacks %q:\n%q", want, out)
		}
	}
}

func TestProgressETA(t *testing.T) {
	p := report.Progress{Remaining: 1000, Rate: 4096 * 1000}
	if p.ETA() != time.Second {
		t.Fatalf("ETA %v, want 1s", p.ETA())
	}
	if (report.Progress{Remaining: 5}).ETA() != 0 {
		t.Fatal("ETA without a rate")
	}
}

func TestRefsLine(t *testing.T) {
	r := &report.Report{Refs: &report.Refs{Layout: "unix:/run/a.sock", PoolDirtyPages: 900,
		FirstPass: report.Routes{Reference: 500, Zero: 100, NotInLayout: 400}}}
	got := refsLine(r)
	for _, want := range []string{"50% of the RAM in the first pass (500 of 1000 pages)", "zero 10%", "not in the layout 40%", "900 dirty"} {
		if !strings.Contains(got, want) {
			t.Errorf("refsLine = %q, want %q in it", got, want)
		}
	}
	r.Refs = &report.Refs{FirstPass: report.Routes{NoLayout: 90, Zero: 10}}
	if got := refsLine(r); !strings.Contains(got, "no layout endpoint 90%") {
		t.Errorf("without endpoint: %q", got)
	}
	if got := refsLine(&report.Report{}); got != "" {
		t.Errorf("precopy: %q", got)
	}
}
