package compare

import (
	"bytes"
	"encoding/csv"
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/dmig/dmig/internal/report"
)

func completedReport(totalMS, downtimeMS float64, bytes, data, zero, storage, post uint64) *report.Report {
	return &report.Report{Outcome: report.Completed, TotalMS: totalMS, DowntimeMS: downtimeMS, BytesSent: bytes,
		Pages: report.Pages{Data: data, Zero: zero, StorageVerified: storage, PostcopyFault: post}}
}

// testResult has a mode with two completed rounds (hybrid), a baseline
// whose first round failed without a report (qemu-precopy), and a mode
// whose only round aborted with a report (postcopy).
func testResult() *Result {
	hyb1 := completedReport(3000, 40, 200e6, 50000, 100000, 80000, 0)
	hyb1.ReportedDowntimeMS = 55
	// Its events missing: the downtime is the engine's own.
	hyb2 := completedReport(5000, 30, 300e6, 70000, 90000, 60000, 10)
	hyb2.ReportedDowntimeMS, hyb2.DowntimeWarning = 30, "guest-visible downtime not measured: no RESUME"
	qemu2 := completedReport(10000, 100, 1500e6, 340000, 20000, 0, 0)
	qemu2.ReportedDowntimeMS = 80
	return &Result{Migrations: []Migration{
		{Mode: "hybrid", Round: 1, StartS: 10, EndS: 13.5, Report: hyb1,
			TPSBefore: 500, TPSDuring: 450, TPSAfter: 490, Check: "same"},
		{Mode: "precopy", Round: 1, StartS: 33.5, EndS: 42, Report: completedReport(8000, 60, 1000e6, 240000, 100000, 0, 0),
			TPSBefore: 495, TPSDuring: 400, TPSAfter: 480, WorkloadErrors: 2, Check: "same"},
		{Mode: "qemu-precopy", Round: 1, StartS: 62, EndS: 62.25, TPSBefore: 480, TPSDuring: 470, TPSAfter: 485,
			Error: "connect qemu:\trefused\nretry later"},
		{Mode: "hybrid", Round: 2, StartS: 82, EndS: 87.5, Report: hyb2,
			TPSBefore: 490, TPSDuring: 430, TPSAfter: 500, Check: "same"},
		{Mode: "qemu-precopy", Round: 2, StartS: 107.5, EndS: 118, Report: qemu2,
			TPSBefore: 470, TPSDuring: 300, TPSAfter: 460, Check: "differs"},
		{Mode: "postcopy", Round: 1, StartS: 138, EndS: 139, Report: &report.Report{Outcome: report.Aborted, TotalMS: 900, BytesSent: 5e6,
			Bandwidth: report.Bandwidth{MaxBytesPerS: 8e6, MeanBytesPerS: 5.5e6}},
			Error: "destination: lost"},
	}}
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*max(1, math.Abs(b)) }

func TestSummarize(t *testing.T) {
	got := Summarize(testResult())
	base := struct{ total, down, mb float64 }{10, 100, 1500}
	hyb := struct{ total, down, mb float64 }{(3.0 + 5.0) / 2, (40.0 + 30.0) / 2, (200.0 + 300.0) / 2}
	want := []ModeSummary{
		{Mode: "hybrid", N: 2, TotalS: hyb.total, DowntimeMS: hyb.down, NetworkMB: hyb.mb,
			DataPages: 60000, ZeroPages: 95000, StoragePages: 70000, PostcopyPages: 5,
			TPSBefore: (500.0 + 490) / 2, TPSDuring: (450.0 + 430) / 2, TPSAfter: (490.0 + 500) / 2,
			TotalX: hyb.total / base.total, BytesX: hyb.mb / base.mb, DowntimeX: hyb.down / base.down},
		{Mode: "precopy", N: 1, TotalS: 8, DowntimeMS: 60, NetworkMB: 1000, DataPages: 240000, ZeroPages: 100000,
			TPSBefore: 495, TPSDuring: 400, TPSAfter: 480,
			TotalX: 8 / base.total, BytesX: 1000 / base.mb, DowntimeX: 60 / base.down},
		// The failed first round counts as failed, not as zeros in the means.
		{Mode: "qemu-precopy", N: 1, Failed: 1, TotalS: 10, DowntimeMS: 100, NetworkMB: 1500, DataPages: 340000,
			ZeroPages: 20000, TPSBefore: 470, TPSDuring: 300, TPSAfter: 460, TotalX: 1, BytesX: 1, DowntimeX: 1},
		{Mode: "postcopy", Failed: 1},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d summaries, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		g := got[i]
		w.Baseline = "qemu-precopy"
		if g.Mode != w.Mode || g.N != w.N || g.Failed != w.Failed || g.Baseline != w.Baseline {
			t.Errorf("summary %d: got %s n=%d failed=%d baseline=%q, want %s n=%d failed=%d baseline=%q",
				i, g.Mode, g.N, g.Failed, g.Baseline, w.Mode, w.N, w.Failed, w.Baseline)
		}
		for _, f := range []struct {
			name     string
			got, exp float64
		}{
			{"TotalS", g.TotalS, w.TotalS}, {"DowntimeMS", g.DowntimeMS, w.DowntimeMS}, {"NetworkMB", g.NetworkMB, w.NetworkMB},
			{"DataPages", g.DataPages, w.DataPages}, {"ZeroPages", g.ZeroPages, w.ZeroPages},
			{"StoragePages", g.StoragePages, w.StoragePages}, {"PostcopyPages", g.PostcopyPages, w.PostcopyPages},
			{"TPSBefore", g.TPSBefore, w.TPSBefore}, {"TPSDuring", g.TPSDuring, w.TPSDuring}, {"TPSAfter", g.TPSAfter, w.TPSAfter},
			{"TotalX", g.TotalX, w.TotalX}, {"BytesX", g.BytesX, w.BytesX}, {"DowntimeX", g.DowntimeX, w.DowntimeX},
		} {
			if !near(f.got, f.exp) {
				t.Errorf("%s %s = %v, want %v", w.Mode, f.name, f.got, f.exp)
			}
		}
	}
}

func TestSummarizeBaseline(t *testing.T) {
	// qemu-precopy present but never completed: precopy is the baseline.
	r := testResult()
	r.Migrations = append(r.Migrations[:4], r.Migrations[5:]...)
	for _, s := range Summarize(r) {
		if s.Baseline != "precopy" {
			t.Errorf("%s: baseline %q, want precopy", s.Mode, s.Baseline)
		}
		if s.Mode == "hybrid" && !near(s.TotalX, 4.0/8) {
			t.Errorf("hybrid TotalX = %v, want %v", s.TotalX, 4.0/8)
		}
		if s.Mode == "qemu-precopy" && (s.N != 0 || s.TotalX != 0 || s.BytesX != 0 || s.DowntimeX != 0) {
			t.Errorf("qemu-precopy without a completed round: %+v, want no figures", s)
		}
	}

	// Neither: no baseline, no ratios.
	r = testResult()
	r.Migrations = []Migration{r.Migrations[0], r.Migrations[3], r.Migrations[5]}
	for _, s := range Summarize(r) {
		if s.Baseline != "" || s.TotalX != 0 || s.BytesX != 0 || s.DowntimeX != 0 {
			t.Errorf("%s: baseline %q ratios %v %v %v, want none", s.Mode, s.Baseline, s.TotalX, s.BytesX, s.DowntimeX)
		}
	}
}

func TestWriteTable(t *testing.T) {
	r := testResult()
	var b bytes.Buffer
	if err := WriteTable(&b, r); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(b.String(), "\n")
	// Header, the migrations, a blank line, header, one line per mode.
	if len(lines) < len(r.Migrations)+8 {
		t.Fatalf("table has %d lines:\n%s", len(lines), b.String())
	}
	want := [][]string{
		{"hybrid", "1", "completed", "3.00", "40.0", "55.0", "200.0", "50000", "100000", "80000", "0", "-", "500.0", "450.0", "0.0", "490.0", "0", "same", "-"},
		{"precopy", "1", "completed", "8.00", "60.0", "-", "1000.0", "240000", "100000", "0", "0", "-", "495.0", "400.0", "0.0", "480.0", "2", "same", "-"},
		{"qemu-precopy", "1", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "480.0", "470.0", "0.0", "485.0", "0", "-", "connect", "qemu:", "refused", "retry", "later"},
		{"hybrid", "2", "completed", "5.00", "30.0*", "30.0", "300.0", "70000", "90000", "60000", "10", "-", "490.0", "430.0", "0.0", "500.0", "0", "same", "-"},
		{"qemu-precopy", "2", "completed", "10.00", "100.0", "80.0", "1500.0", "340000", "20000", "0", "0", "-", "470.0", "300.0", "0.0", "460.0", "0", "differs", "-"},
		{"postcopy", "1", "aborted", "0.90", "0.0", "-", "5.0", "0", "0", "0", "0", "-", "0.0", "0.0", "0.0", "0.0", "0", "-", "destination:", "lost"},
	}
	for i, w := range want {
		if got := strings.Fields(lines[i+1]); strings.Join(got, "|") != strings.Join(w, "|") {
			t.Errorf("row %d:\n got %q\nwant %q", i+1, got, w)
		}
	}
	sum := strings.Join(lines[len(r.Migrations)+2:], "\n")
	for _, w := range []string{
		"total 0.40× qemu-precopy, bytes 0.17×, downtime 0.35×",
		"total 0.80× qemu-precopy, bytes 0.67×, downtime 0.60×",
		"total 1.00× qemu-precopy, bytes 1.00×, downtime 1.00×",
		"none completed",
	} {
		if !strings.Contains(sum, w) {
			t.Errorf("summary lacks %q:\n%s", w, sum)
		}
	}
	if f := strings.Fields(lines[len(r.Migrations)+6]); strings.Join(f[:4], " ") != "postcopy 0 1 -" {
		t.Errorf("postcopy summary row %q, want no means", f)
	}
	if f := strings.Fields(lines[len(r.Migrations)+3]); len(f) < 13 || f[0] != "hybrid" || f[1] != "2" || f[2] != "0" ||
		f[3] != "4.00" || f[4] != "35.0" || f[5] != "250.0" {
		t.Errorf("hybrid summary row %q", f)
	}
	// The fallback is said under the table, never silently.
	if note := "* hybrid round 2: guest-visible downtime not measured: no RESUME"; !strings.Contains(sum, note) || strings.Count(b.String(), "\n* ") != 1 {
		t.Errorf("table lacks the one downtime note %q:\n%s", note, b.String())
	}
}

func TestWriteCSV(t *testing.T) {
	r := testResult()
	var b bytes.Buffer
	if err := WriteCSV(&b, r); err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(&b).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != len(r.Migrations)+1 {
		t.Fatalf("got %d records, want a header and %d", len(recs), len(r.Migrations))
	}
	col := map[string]int{}
	for i, h := range recs[0] {
		col[h] = i
	}
	sums := map[string]ModeSummary{}
	for _, s := range Summarize(r) {
		sums[s.Mode] = s
	}
	for i, m := range r.Migrations {
		rec := recs[i+1]
		cell := func(name string) string {
			j, ok := col[name]
			if !ok {
				t.Fatalf("no column %s in %q", name, recs[0])
			}
			return rec[j]
		}
		num := func(name string, want float64) {
			t.Helper()
			got, err := strconv.ParseFloat(cell(name), 64)
			if err != nil || got != want {
				t.Errorf("row %d %s = %q, want %v", i+1, name, cell(name), want)
			}
		}
		if cell("mode") != m.Mode || cell("round") != strconv.Itoa(m.Round) || cell("check") != m.Check || cell("error") != m.Error {
			t.Errorf("row %d: %q", i+1, rec)
		}
		num("start_s", m.StartS)
		num("end_s", m.EndS)
		num("tps_before", m.TPSBefore)
		num("tps_during", m.TPSDuring)
		num("tps_after", m.TPSAfter)
		num("workload_errors", m.WorkloadErrors)
		if rep := m.Report; rep != nil {
			if cell("outcome") != string(rep.Outcome) {
				t.Errorf("row %d outcome %q, want %q", i+1, cell("outcome"), rep.Outcome)
			}
			num("total_ms", rep.TotalMS)
			num("downtime_ms", rep.DowntimeMS)
			num("bytes_sent", float64(rep.BytesSent))
			num("pages_data", float64(rep.Pages.Data))
			num("pages_zero", float64(rep.Pages.Zero))
			num("pages_storage_verified", float64(rep.Pages.StorageVerified))
			num("pages_postcopy_fault", float64(rep.Pages.PostcopyFault))
			num("max_bytes_per_s", float64(rep.Bandwidth.MaxBytesPerS))
			num("reported_downtime_ms", rep.ReportedDowntimeMS)
			if cell("downtime_warning") != rep.DowntimeWarning {
				t.Errorf("row %d downtime_warning %q, want %q", i+1, cell("downtime_warning"), rep.DowntimeWarning)
			}
			num("mean_bytes_per_s", rep.Bandwidth.MeanBytesPerS)
		} else {
			for _, c := range []string{"outcome", "total_ms", "downtime_ms", "bytes_sent", "pages_data"} {
				if cell(c) != "" {
					t.Errorf("row %d without a report has %s %q", i+1, c, cell(c))
				}
			}
		}
		s := sums[m.Mode]
		if cell("baseline") != "qemu-precopy" {
			t.Errorf("row %d baseline %q", i+1, cell("baseline"))
		}
		num("total_x", s.TotalX)
		num("bytes_x", s.BytesX)
		num("downtime_x", s.DowntimeX)
	}
	if got := recs[1][col["total_x"]]; got != "0.4" {
		t.Errorf("hybrid total_x %q, want 0.4", got)
	}
}
