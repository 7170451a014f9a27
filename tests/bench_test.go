package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/internal/testguest"
	"github.com/dmig/dmig/precopy"
)

// BenchmarkModes migrates a test guest (DMIG_BENCH_GUEST bytes, default
// 4 GiB, half its pages filled, writing 20 k pages/s) in each mode between
// two network namespaces, over an unshaped veth and over one shaped to
// 1 Gbit/s, with dmig serve and dmig migrate as the processes an operator
// runs. It reports total time, downtime, bytes and fault latency, each mode
// against pre-copy in the same run and against its bound (network bytes at
// the link's rate, plus downtime: the shaper's rate, or on the unshaped veth
// what raw TCP carries in the same run), and pre-copy's first pass against
// raw TCP carrying the same bytes over the same link.
func BenchmarkModes(b *testing.B) {
	size := int64(4 << 30)
	if v, err := strconv.ParseInt(os.Getenv("DMIG_BENCH_GUEST"), 10, 64); err == nil && v > 0 {
		size = v
	}
	for _, rate := range []string{"", "1gbit"} {
		name := "veth"
		if rate != "" {
			name = "veth-" + rate
		}
		b.Run(name, func(b *testing.B) {
			l := newLink(b, rate)
			bound := migrationBound{linkRate: linkRate(b, l, rate)}
			var base *report.Report
			for _, mode := range []precopy.Mode{precopy.ModePrecopy, precopy.ModePostcopy, precopy.ModeHybrid} {
				b.Run(string(mode), func(b *testing.B) {
					var rep *report.Report
					for range b.N {
						rep = migrateNetns(b, l, size, mode)
					}
					b.Logf("%s: %d iterations %+v, post-copy %d pages, pages %+v", mode, rep.Iterations, rep.IterationLog, rep.PostcopyPages, rep.Pages)
					b.ReportMetric(rep.TotalMS, "total_ms")
					b.ReportMetric(rep.DowntimeMS, "downtime_ms")
					b.ReportMetric(float64(rep.BytesSent)/1e6, "MB_sent")
					bound.print(b, name+"/"+string(mode), rep)
					if rep.FaultLatencyUS.Count > 0 {
						b.ReportMetric(rep.FaultLatencyUS.P50, "fault_p50_µs")
						b.ReportMetric(rep.FaultLatencyUS.P99, "fault_p99_µs")
					}
					if mode == precopy.ModePrecopy {
						base = rep
						it := rep.IterationLog[0]
						raw := l.rawTCP(b, int64(it.Bytes))
						engine := float64(it.Bytes) / (it.MS / 1e3)
						b.ReportMetric(engine/1e6, "pass1_MB/s")
						b.ReportMetric(engine/(float64(it.Bytes)/raw.Seconds()), "pass1/rawTCP")
					} else if base != nil {
						b.ReportMetric(rep.TotalMS/base.TotalMS, "total/precopy")
						b.ReportMetric(float64(rep.BytesSent)/float64(base.BytesSent), "bytes/precopy")
					}
				})
			}
		})
	}
}

// migrateNetns runs one migration of a fresh guest from l.src to l.dst and
// checks the destination guest verified its RAM and runs. DMIG_BENCH_MAXBW,
// if set, is passed as --max-bandwidth.
func migrateNetns(b *testing.B, l *link, size int64, mode precopy.Mode) *report.Report {
	b.Helper()
	b.StopTimer()
	g := startSource(b, guestOpts{size: size, writeRate: 20000})
	dir := b.TempDir()
	shm, err := os.MkdirTemp("/dev/shm", "dmig-bench-dst-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(shm)
	addr := l.dstIP + ":7000"
	serveArgs, args := []string{"serve"}, []string{"migrate"}
	// DMIG_BENCH_PROFILE=DIR: CPU profiles of both engines, per mode.
	prof := os.Getenv("DMIG_BENCH_PROFILE")
	if prof != "" {
		serveArgs = append(serveArgs, "--cpu-profile", filepath.Join(prof, "serve-"+string(mode)+".pprof"))
		args = append(args, "--cpu-profile", filepath.Join(prof, "migrate-"+string(mode)+".pprof"))
	}
	serveArgs = append(serveArgs, "--listen", addr, "--dir", shm, "--once", "--log-format", "json")
	serve := l.in(l.dst, dmigBin, append(serveArgs, insecureFlag()...)...)
	serve.Stderr = prefixWriter(b, "dmig-serve: ")
	if err := serve.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		if prof != "" {
			// --once: serve exits by itself, and writes its profile then.
			t := time.AfterFunc(20*time.Second, func() { serve.Process.Kill() })
			defer t.Stop()
		} else {
			serve.Process.Kill()
		}
		serve.Wait()
		killGuestsUnder(shm)
	}()
	time.Sleep(300 * time.Millisecond) // listening
	stats := filepath.Join(dir, "dst.stats")
	repPath := filepath.Join(dir, "report.json")
	args = append(args, "--to", addr, "--mode", string(mode), "--pid", fmt.Sprint(g.pid()), "--ram", g.ram, "--report", repPath, "--log-format", "json")
	if v := os.Getenv("DMIG_BENCH_MAXBW"); v != "" {
		args = append(args, "--max-bandwidth", v)
	}
	for _, w := range destCommand(stats) {
		args = append(args, "--dest-cmd="+w)
	}
	mig := l.in(l.src, dmigBin, args...)
	mig.Stderr = prefixWriter(b, "dmig-migrate: ")
	b.StartTimer()
	err = mig.Run()
	b.StopTimer()
	if err != nil {
		b.Fatalf("dmig migrate (%s): %v", mode, err)
	}
	var rep report.Report
	readJSON(b, repPath, &rep)
	if rep.Outcome != report.Completed {
		b.Fatalf("%s: outcome %s: %s", mode, rep.Outcome, rep.Error)
	}
	// The destination guest verified every page at resume and runs.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st, err := testguest.ReadStats(stats)
		if err == nil && st.Resumed && st.State == "running" {
			syscall.Kill(st.PID, syscall.SIGKILL)
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s: destination guest not running after verification (%+v, %v)", mode, st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return &rep
}
