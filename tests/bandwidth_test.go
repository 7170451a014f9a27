package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dmig/dmig/internal/drain"
	"github.com/dmig/dmig/internal/report"
)

// TestBandwidthCap migrates a test guest with 'dmig migrate --max-bandwidth
// 8M' in hybrid mode (pre-copy passes on two bulk connections, then
// post-copy push and fault replies): the destination guest verifies its
// RAM and runs on, and the report carries the cap and the measured rate,
// within 5 % of the cap on average and in its busiest second.
func TestBandwidthCap(t *testing.T) {
	const capBytes = 8_000_000
	srv := startServe(t, "--insecure")
	g := startSource(t, guestOpts{size: 48 << 20, writeRate: 2000})
	dir := t.TempDir()
	stats := filepath.Join(dir, "dst.stats")
	killDestGuest(t, stats)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	repFile := filepath.Join(dir, "report.json")
	args := append(migrateArgs(g, srv.addr, "hybrid", stats), "--max-bandwidth", "8M", "--report", repFile, "--no-progress")
	code, out := dmigRun(t, ctx, args...)
	if code != 0 {
		t.Fatalf("capped migration: exit %d\n%s", code, out)
	}
	waitDestRunning(t, stats)
	rep := readReport(t, repFile)
	bw := rep.Bandwidth
	t.Logf("cap %d bytes/s: mean %.0f, busiest second %.0f, %d bytes paced (%d urgent), %d sent in all over %.0f ms",
		bw.MaxBytesPerS, bw.MeanBytesPerS, bw.PeakBytesPerS, bw.Bytes, bw.UrgentBytes, rep.BytesSent, rep.TotalMS)
	if rep.Outcome != report.Completed || bw.MaxBytesPerS != capBytes {
		t.Fatalf("report: outcome %s, cap %d; want completed, %d", rep.Outcome, bw.MaxBytesPerS, capBytes)
	}
	// At least 2 s of traffic at the cap, so the bucket's burst weighs
	// little in the mean.
	if bw.Bytes < 2*capBytes || bw.Bytes > rep.BytesSent || bw.MeanBytesPerS <= 0 || bw.PeakBytesPerS <= 0 {
		t.Fatalf("bandwidth figures %+v with %d bytes sent", bw, rep.BytesSent)
	}
	if bw.MeanBytesPerS > capBytes*1.05 || bw.PeakBytesPerS > capBytes*1.05 {
		t.Errorf("rate past the cap: mean %.0f, busiest second %.0f bytes/s, cap %d", bw.MeanBytesPerS, bw.PeakBytesPerS, capBytes)
	}
	// The whole migration, set-up and the wait for completion included,
	// cannot have gone faster than the cap either.
	if float64(bw.Bytes) > capBytes*1.05*rep.TotalMS/1e3 {
		t.Errorf("%d paced bytes in %.0f ms: faster than the cap", bw.Bytes, rep.TotalMS)
	}
	checkFaultFigures(t, rep)
}

// TestFaultLatencyHistogram migrates a test guest in post-copy mode (it
// resumes at once and verifies every page, faulting on what the push has
// not brought yet): the report's fault latency histogram sums to its fault
// count, which is the post-copy fault page count.
func TestFaultLatencyHistogram(t *testing.T) {
	srv := startServe(t, "--insecure")
	g := startSource(t, guestOpts{size: 64 << 20, writeRate: 2000})
	dir := t.TempDir()
	stats := filepath.Join(dir, "dst.stats")
	killDestGuest(t, stats)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	repFile := filepath.Join(dir, "report.json")
	code, out := dmigRun(t, ctx, append(migrateArgs(g, srv.addr, "postcopy", stats), "--report", repFile)...)
	if code != 0 {
		t.Fatalf("post-copy migration: exit %d\n%s", code, out)
	}
	waitDestRunning(t, stats)
	rep := readReport(t, repFile)
	if rep.Outcome != report.Completed || rep.Pages.PostcopyFault == 0 {
		t.Fatalf("report: outcome %s, %d fault pages; want completed with faults", rep.Outcome, rep.Pages.PostcopyFault)
	}
	t.Logf("faults %d, prefetch %d, latency %+v", rep.Pages.PostcopyFault, rep.Pages.Prefetch, rep.FaultLatencyUS)
	checkFaultFigures(t, rep)
}

// checkFaultFigures checks what every report must hold of its fault and
// page figures.
func checkFaultFigures(t *testing.T, rep report.Report) {
	t.Helper()
	for name, l := range map[string]report.Latency{"source": rep.FaultLatencyUS, "storage": rep.Storage.FaultLatencyUS} {
		var sum uint64
		for _, n := range l.Dist {
			sum += n
		}
		if sum != uint64(l.Count) || (l.Count > 0 && len(l.Dist) != report.DistBuckets) {
			t.Errorf("%s fault latency: %d buckets summing to %d, count %d", name, len(l.Dist), sum, l.Count)
		}
	}
	if uint64(rep.FaultLatencyUS.Count) != rep.Pages.PostcopyFault {
		t.Errorf("fault_latency_us.count %d, pages.postcopy_fault %d", rep.FaultLatencyUS.Count, rep.Pages.PostcopyFault)
	}
	p := rep.Pages
	if p.Data+p.Zero+p.StorageVerified > rep.GuestPages+p.SentAgain {
		t.Errorf("pages: data %d + zero %d + storage_verified %d > guest_pages %d + sent_again %d",
			p.Data, p.Zero, p.StorageVerified, rep.GuestPages, p.SentAgain)
	}
}

// TestDrainBandwidth drains two test guests at once, each to its own
// destination, with a cap per guest (6M) under a total for the drain
// (8M): both move and verify their RAM, each guest's report holds its cap
// and the summary's the total, each within 5 %.
func TestDrainBandwidth(t *testing.T) {
	const guestCap, totalCap = 6_000_000, 8_000_000
	dir := t.TempDir()
	var cfg drain.Config
	cfg.MaxBandwidth = totalCap
	var stats []string
	for i := range 2 {
		srv := startServe(t, "--insecure")
		g := startSource(t, guestOpts{size: 32 << 20, writeRate: 2000})
		st := filepath.Join(dir, fmt.Sprintf("vm%d.stats", i))
		killDestGuest(t, st)
		stats = append(stats, st)
		cfg.VMs = append(cfg.VMs, drain.VM{Name: fmt.Sprintf("vm%d", i), Pid: g.pid(), RAM: []string{g.ram},
			DestCmd: destCommand(st), To: srv.addr, Mode: "hybrid", MaxBandwidth: guestCap})
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "drain.json")
	if err := os.WriteFile(conf, b, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sumFile := filepath.Join(dir, "summary.json")
	code, out := dmigRun(t, ctx, "drain", "--config", conf, "--parallel", "2", "--state", filepath.Join(dir, "state.json"),
		"--lock-dir", filepath.Join(dir, "locks"), "--insecure", "--report", sumFile)
	if code != 0 {
		t.Fatalf("capped drain: exit %d\n%s", code, out)
	}
	for _, st := range stats {
		waitDestRunning(t, st)
	}
	sum := readSummary(t, sumFile)
	if sum.Moved != 2 || sum.Bandwidth == nil {
		t.Fatalf("summary %+v", sum)
	}
	within := func(what string, bw report.Bandwidth, limit uint64) {
		t.Helper()
		t.Logf("%s: cap %d, mean %.0f, busiest second %.0f, %d bytes", what, bw.MaxBytesPerS, bw.MeanBytesPerS, bw.PeakBytesPerS, bw.Bytes)
		if bw.MaxBytesPerS != limit || bw.Bytes == 0 {
			t.Errorf("%s: cap %d, %d bytes; want cap %d", what, bw.MaxBytesPerS, bw.Bytes, limit)
		}
		if bw.MeanBytesPerS > float64(limit)*1.05 || bw.PeakBytesPerS > float64(limit)*1.05 {
			t.Errorf("%s: past the cap %d: mean %.0f, busiest second %.0f", what, limit, bw.MeanBytesPerS, bw.PeakBytesPerS)
		}
	}
	var guests uint64
	for _, r := range sum.VMs {
		if r.Report == nil || r.Report.Outcome != report.Completed {
			t.Fatalf("%s: %+v", r.Name, r)
		}
		within(r.Name, r.Report.Bandwidth, guestCap)
		guests += r.Report.Bandwidth.Bytes
	}
	within("drain", *sum.Bandwidth, totalCap)
	if sum.Bandwidth.Bytes != guests {
		t.Errorf("drain total %d bytes, the guests' %d", sum.Bandwidth.Bytes, guests)
	}
}

// BenchmarkBandwidthCap migrates a 256 MiB test guest (90 % filled) in
// hybrid mode on loopback under caps of 25M, 50M and 100M through real
// dmig processes, and reports how close to each cap the rate came: mean
// and busiest second over the cap (goal ≤ 1.05), and the time.
func BenchmarkBandwidthCap(b *testing.B) {
	for _, c := range []struct {
		name string
		rate float64
	}{{"25M", 25e6}, {"50M", 50e6}, {"100M", 100e6}} {
		b.Run(c.name, func(b *testing.B) {
			for range b.N {
				srv := startServe(b, "--insecure")
				g := startSource(b, guestOpts{size: 256 << 20, writeRate: 2000, fill: 0.9})
				dir := b.TempDir()
				stats := filepath.Join(dir, "dst.stats")
				killDestGuest(b, stats)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
				repFile := filepath.Join(dir, "report.json")
				code, out := dmigRun(b, ctx, append(migrateArgs(g, srv.addr, "hybrid", stats), "--max-bandwidth", c.name, "--report", repFile, "--no-progress")...)
				cancel()
				if code != 0 {
					b.Fatalf("exit %d\n%s", code, out)
				}
				waitDestRunning(b, stats)
				rep := readReportTB(b, repFile)
				bw := rep.Bandwidth
				b.ReportMetric(bw.MeanBytesPerS/c.rate, "mean/cap")
				b.ReportMetric(bw.PeakBytesPerS/c.rate, "peak1s/cap")
				b.ReportMetric(rep.TotalMS/1e3, "total_s")
				b.ReportMetric(float64(bw.Bytes)/1e6, "paced_MB")
				// The cap is the link: bytes at it plus downtime.
				migrationBound{linkRate: c.rate}.print(b, c.name, &rep)
			}
		})
	}
}

func readReportTB(tb testing.TB, path string) report.Report {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	var r report.Report
	if err := json.Unmarshal(b, &r); err != nil {
		tb.Fatalf("report %s: %v\n%s", path, err, b)
	}
	return r
}
