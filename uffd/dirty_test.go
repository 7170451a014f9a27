package uffd

import (
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"testing"
)

// TestDirtyTracking: over 25 random rounds the child writes random pages
// (some never touched before, one through a pread: a write by the kernel)
// and reads others; every Collect must report every page written since the
// last one. A miss would lose guest data; false positives only cost a
// resend, and are counted.
func TestDirtyTracking(t *testing.T) {
	const pages = 4096
	c := startChild(t, childOpts{pages: pages})
	fileData := make([]byte, PageSize)
	pattern(1, 1, fileData)
	if err := os.WriteFile(c.ram.Name()+".src", fileData, 0o600); err != nil {
		t.Fatal(err)
	}
	// Half of the pages hold data before tracking starts; half are holes
	// (WP_UNPOPULATED must catch a first write to those too).
	for p := 0; p < pages; p += 2 {
		pattern(p, 1, c.mem[p*PageSize:(p+1)*PageSize])
	}
	u, err := Attach(c.pid(), DirtyFeatures|FeatureMissingShmem)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	r := Range{Start: c.addr, Len: pages * PageSize}
	if _, err := u.Register(r, ModeWP); err != nil {
		t.Fatal(err)
	}
	tr, err := u.TrackDirty(r)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	rng := rand.New(rand.NewPCG(42, 1))
	var falsePos, written int
	var buf []Range
	for round := range 25 {
		n := 1 + rng.IntN(300)
		set := map[int]bool{}
		var cmd strings.Builder
		fmt.Fprintf(&cmd, "write %d", round+2)
		for range n {
			p := rng.IntN(pages)
			if p == 7 {
				continue
			}
			set[p] = true
			fmt.Fprintf(&cmd, " %d", p)
		}
		if got := c.do("%s", cmd.String()); got != "ok" {
			t.Fatal(got)
		}
		// Reads must not count as writes.
		cmd.Reset()
		cmd.WriteString("read")
		for range 50 {
			fmt.Fprintf(&cmd, " %d", rng.IntN(pages))
		}
		c.do("%s", cmd.String())
		if round%5 == 0 {
			// A kernel write into page 7 (pread into it).
			if got := c.do("pread 0 7"); !strings.HasPrefix(got, "ok") {
				t.Fatal(got)
			}
			set[7] = true
		}
		buf, err = tr.Collect(buf[:0])
		if err != nil {
			t.Fatal(err)
		}
		reported := map[int]bool{}
		for _, rg := range buf {
			if rg.Start < c.addr || rg.End() > r.End() || rg.Start%PageSize != 0 || rg.Len%PageSize != 0 {
				t.Fatalf("round %d: reported run %v outside the tracked range %v or unaligned", round, rg, r)
			}
			for a := rg.Start; a < rg.End(); a += PageSize {
				reported[int((a-c.addr)/PageSize)] = true
			}
		}
		var missed []int
		for p := range set {
			if !reported[p] {
				missed = append(missed, p)
			}
		}
		sort.Ints(missed)
		if len(missed) > 0 {
			t.Fatalf("round %d: %d written pages not reported: %v", round, len(missed), missed)
		}
		for p := range reported {
			if !set[p] {
				falsePos++
			}
		}
		written += len(set)
	}
	t.Logf("25 rounds: %d pages written, all reported; %d false positives", written, falsePos)
	// Nothing written since the last round: nothing reported.
	buf, err = tr.Collect(buf[:0])
	if err != nil {
		t.Fatal(err)
	}
	if len(buf) != 0 {
		t.Errorf("idle collect reported %v", buf)
	}
}

// TestDirtyNeedsAsyncWP: tracking refuses a uffd without WP_ASYNC, saying so.
func TestDirtyNeedsAsyncWP(t *testing.T) {
	u, err := Open(FeatureMissingShmem)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if _, err := u.TrackDirty(); err == nil || !strings.Contains(err.Error(), "WP_ASYNC") {
		t.Fatalf("track dirty without WP_ASYNC: %v", err)
	}
}
