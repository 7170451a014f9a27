// Command demotable prints the figures of make demo's migrations side by
// side: for each MODE=DIR argument, DIR/report.json (dmig migrate --report)
// and DIR/dst.stats (the destination guest's stats file). It exits 1 when a
// migration did not complete or a destination guest did not verify its RAM
// at resume, after printing the table.
//
//	go run ./internal/tools/demotable precopy=DIR hybrid=DIR
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/internal/testguest"
)

// run is one migration's figures.
type run struct {
	mode  string
	rep   report.Report
	stats testguest.Stats
	err   error // reading the report or the stats
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: demotable MODE=DIR...")
		os.Exit(2)
	}
	var runs []run
	for _, a := range os.Args[1:] {
		mode, dir, ok := strings.Cut(a, "=")
		if !ok {
			fmt.Fprintf(os.Stderr, "demotable: %q is not MODE=DIR\n", a)
			os.Exit(2)
		}
		runs = append(runs, load(mode, dir))
	}
	ok := printTable(runs)
	if !ok {
		os.Exit(1)
	}
}

func load(mode, dir string) run {
	r := run{mode: mode}
	b, err := os.ReadFile(filepath.Join(dir, "report.json"))
	if err == nil {
		err = json.Unmarshal(b, &r.rep)
	}
	if err != nil {
		r.err = fmt.Errorf("read report: %w", err)
		return r
	}
	r.stats, err = testguest.ReadStats(filepath.Join(dir, "dst.stats"))
	if err != nil {
		r.err = err
	}
	return r
}

// verdict is the destination guest's own word on its RAM (from its stats
// file: it verifies every page at resume, then runs its workload on, or
// exits 3 naming the wrong pages), and whether it is a pass.
func verdict(r run) (string, bool) {
	switch {
	case r.err != nil:
		return "unknown", false
	case r.stats.State == "failed":
		return "FAILED", false
	case !r.stats.Resumed || r.stats.VerifiedPages == 0:
		return "none (state " + r.stats.State + ")", false
	case r.stats.State != "running":
		return "stopped (state " + r.stats.State + ")", false
	}
	return fmt.Sprintf("%s pages OK", count(uint64(r.stats.VerifiedPages))), true
}

// printTable writes the table and reports whether every run completed with a
// verified destination guest.
func printTable(runs []run) bool {
	type row struct {
		name string
		cell func(r run) string
	}
	rows := []row{
		{"outcome", func(r run) string { return string(r.rep.Outcome) }},
		{"total time", func(r run) string { return fmt.Sprintf("%.2f s", r.rep.TotalMS/1e3) }},
		{"downtime", func(r run) string { return fmt.Sprintf("%.1f ms", r.rep.DowntimeMS) }},
		{"network bytes", func(r run) string { return mb(r.rep.BytesSent) }},
		{"pre-copy passes", func(r run) string { return fmt.Sprint(r.rep.Iterations) }},
		{"guest RAM, 4 KiB pages", func(r run) string { return count(r.rep.GuestPages) }},
		{"pages as data", func(r run) string { return count(r.rep.Pages.Data) }},
		{"pages as zero", func(r run) string { return count(r.rep.Pages.Zero) }},
		{"pages storage-verified", func(r run) string { return count(r.rep.Pages.StorageVerified) }},
		{"storage mismatches", func(r run) string { return count(r.rep.Pages.StorageMismatch) }},
		{"  re-sent as data or zero", func(r run) string { return count(r.rep.Pages.StorageResent) }},
		{"read from shared storage", func(r run) string { return mb(r.rep.Storage.BytesRead) }},
		{"left to post-copy at switchover", func(r run) string { return count(r.rep.PostcopyPages) }},
		{"post-copy faults", func(r run) string { return count(r.rep.Pages.PostcopyFault) }},
		{"post-copy prefetch", func(r run) string { return count(r.rep.Pages.Prefetch) }},
		{"guest's verify at resume", func(r run) string { v, _ := verdict(r); return v }},
		{"destination guest", func(r run) string {
			if r.stats.State == "running" {
				return "runs on"
			}
			return r.stats.State
		}},
	}
	w := 0
	for _, rw := range rows {
		w = max(w, len(rw.name))
	}
	cells := make([][]string, len(rows))
	cw := make([]int, len(runs))
	for i, rw := range rows {
		for j, r := range runs {
			c := "-"
			if r.err == nil {
				c = rw.cell(r)
			}
			cells[i] = append(cells[i], c)
			cw[j] = max(cw[j], len(c), len(r.mode))
		}
	}
	line := func(name string, cs []string) {
		fmt.Printf("%-*s", w, name)
		for j, c := range cs {
			fmt.Printf("  %*s", cw[j], c)
		}
		fmt.Println()
	}
	var modes []string
	for _, r := range runs {
		modes = append(modes, r.mode)
	}
	line("", modes)
	for i, rw := range rows {
		line(rw.name, cells[i])
	}
	ok := true
	for _, r := range runs {
		_, good := verdict(r)
		ok = ok && good && r.rep.Outcome == report.Completed
		if r.rep.Error != "" {
			fmt.Printf("%s: error: %s\n", r.mode, r.rep.Error)
		}
	}
	return ok
}

// mb formats bytes as decimal megabytes.
func mb(b uint64) string { return fmt.Sprintf("%.1f MB", float64(b)/1e6) }

// count formats n with thousands separators.
func count(n uint64) string {
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
