package tests

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/dmig/dmig/dbrestore"
	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/precopy"
	"github.com/dmig/dmig/wire"
)

// BenchmarkDMigrateModes migrates the same database-mode guest (a fresh one
// per mode: RAM DMIG_BENCH_GIB GiB, default 2, buffer pool 70 % of it, under
// read/modify/flush load) with precopy, postcopy and hybrid, and reports
// total time, downtime and network bytes as ratios to precopy. The
// destination listens in a network namespace behind a veth pair shaped to
// DMIG_BENCH_RATE (tc tbf, default 1gbit; "none" for plain loopback). The
// data file (on the file system of the test's temporary directory: give it
// a disk, not tmpfs, for large guests) holds DMIG_BENCH_DATA_RATIO times
// the pool's pages (default 4/3: a quarter of the pool reads load a page);
// 1 keeps its page cache within reach of the two RAM files of an 8 GiB
// guest on a 24 GiB host. DMIG_BENCH_DATA_CACHE=cold drops the data file
// from the page cache before each migration and before the ceiling's copy,
// as on a destination host that never read the shared storage (default
// warm: the file stays cached from its writing, as far as memory lets it;
// at 8 GiB the RAM files push part of it out, an uncontrolled mix). Run:
//
//	go test -run '^$' -bench DMigrateModes -benchtime 1x -timeout 30m ./tests/
func BenchmarkDMigrateModes(b *testing.B) {
	size := int64(2)
	if v := os.Getenv("DMIG_BENCH_GIB"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			b.Fatalf("DMIG_BENCH_GIB=%q: want a whole number of GiB", v)
		}
		size = n
	}
	ratio := 4.0 / 3
	if v := os.Getenv("DMIG_BENCH_DATA_RATIO"); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f < 1 {
			b.Fatalf("DMIG_BENCH_DATA_RATIO=%q: want a number ≥ 1", v)
		}
		ratio = f
	}
	cold := false
	switch v := os.Getenv("DMIG_BENCH_DATA_CACHE"); v {
	case "", "warm":
	case "cold":
		cold = true
	default:
		b.Fatalf("DMIG_BENCH_DATA_CACHE=%q: want warm or cold", v)
	}
	listen, rate := benchListener(b)
	frames := int64(float64(size*gib/4096)*0.7) / 4
	modes := []precopy.Mode{precopy.ModePrecopy, precopy.ModePostcopy, precopy.ModeHybrid}
	// Sub-benchmarks, so that each mode's guests are gone before the next
	// starts (their cleanups run at the end of each).
	reps := map[precopy.Mode]*report.Report{}
	var ceiling float64 // bytes/s, measured after the hybrid run
	for _, mode := range modes {
		b.Run(string(mode), func(b *testing.B) {
			for range b.N {
				dir := b.TempDir()
				g := startDBSource(b, dir, dbOpts{size: size * gib, poolPart: 0.7, dbPages: int64(float64(frames) * ratio), readRate: 3000, modifyRate: 1000, flushRate: 800})
				d := startDBDestOn(b, listen(b), map[string]string{"data": g.dataFile})
				destStats := filepath.Join(b.TempDir(), "dst.stats")
				if cold {
					dropPageCache(b, g.dataFile)
				}
				rep, err := migrateDB(b, g, d.addr, mode, g.layout, destStats)
				if err != nil {
					b.Fatalf("%s: migrate: %v", mode, err)
				}
				if err := <-d.result; err != nil {
					b.Fatalf("%s: destination: %v", mode, err)
				}
				checkDestGuest(b, d, destStats)
				reps[mode] = rep
				if mode == precopy.ModeHybrid {
					// The restore's ceiling, on the same data file while it
					// is still in the page cache, or dropped from it again
					// if cold (1 GiB at most: a rate, not a copy of the
					// pool, next to both guests' RAM).
					if cold {
						dropPageCache(b, g.dataFile)
					}
					ceiling = copyCeiling(b, g.dataFile, min(int64(rep.Pages.StorageVerified), 1<<18))
				}
				// Each mode's figures as it ends, for a run of one mode.
				fmt.Printf("%s: total %.0f ms (then %.0f ms of teardown), downtime %.1f ms, network %.1f MB, storage %.1f MB at %.0f MB/s, %d mismatches, passes %+v\n",
					mode, rep.TotalMS, rep.TeardownMS, rep.DowntimeMS, float64(rep.BytesSent)/1e6, float64(rep.Storage.BytesRead)/1e6, rep.Storage.MBps, rep.Pages.StorageMismatch, rep.IterationLog)
			}
		})
	}
	if len(reps) == len(modes) {
		pre := reps[precopy.ModePrecopy]
		bound := migrationBound{linkRate: tcRate(rate), ceiling: ceiling}
		var tab strings.Builder
		where := "warm"
		if cold {
			where = "cold"
		}
		fmt.Fprintf(&tab, "%d GiB guest, pool 70 %%, data file %.2f× the pool in %s (%s), link %s; restore ceiling (plain scattered copy) %.0f MB/s\n",
			size, ratio, os.TempDir(), where, rate, ceiling/1e6)
		fmt.Fprintf(&tab, "%-9s %9s %8s %11s %9s %9s %9s %7s %7s %7s %9s %7s\n", "mode", "total ms", "down ms", "network MB", "data pg", "storage", "faults", "total×", "down×", "bytes×", "bound ms", "/bound")
		for _, mode := range modes {
			r := reps[mode]
			fmt.Fprintf(&tab, "%-9s %9.0f %8.1f %11.1f %9d %9d %9d %7.2f %7.2f %7.2f %9.0f %7.2f\n", mode, r.TotalMS, r.DowntimeMS, float64(r.BytesSent)/1e6,
				r.Pages.Data, r.Pages.StorageVerified, r.Pages.PostcopyFault, r.TotalMS/pre.TotalMS, r.DowntimeMS/pre.DowntimeMS, float64(r.BytesSent)/float64(pre.BytesSent),
				bound.ms(r), r.TotalMS/bound.ms(r))
		}
		h := reps[precopy.ModeHybrid]
		fmt.Fprintf(&tab, "hybrid storage: %.1f MB read at %.0f MB/s, %d mismatches; postcopy fault latency p50 %.0f µs p99 %.0f µs\n",
			float64(h.Storage.BytesRead)/1e6, h.Storage.MBps, h.Pages.StorageMismatch, reps[precopy.ModePostcopy].FaultLatencyUS.P50, reps[precopy.ModePostcopy].FaultLatencyUS.P99)
		// Stdout, not b.Log: the engines' debug logs would truncate it.
		fmt.Print(tab.String())
		for _, mode := range modes {
			fmt.Printf("%s passes: %+v\n", mode, reps[mode].IterationLog)
		}
	}
}

const (
	benchSrcIP  = "10.231.7.1"
	benchDestIP = "10.231.7.2"
)

// shapedLink makes a network namespace reached over a veth pair whose both
// directions are shaped to rate, and returns the namespace's name.
func shapedLink(b *testing.B, rate string) string {
	b.Helper()
	ns := fmt.Sprintf("dmigb%d", os.Getpid())
	veth := fmt.Sprintf("dmb%d", os.Getpid()%100000)
	run := func(args ...string) {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			b.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	removeStaleBenchNetns(b)
	run("ip", "netns", "add", ns)
	b.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
	b.Cleanup(func() { exec.Command("ip", "link", "del", veth).Run() })
	run("ip", "addr", "add", benchSrcIP+"/30", "dev", veth)
	run("ip", "link", "set", veth, "up")
	run("ip", "-n", ns, "addr", "add", benchDestIP+"/30", "dev", "eth0")
	run("ip", "-n", ns, "link", "set", "eth0", "up")
	run("ip", "-n", ns, "link", "set", "lo", "up")
	run("tc", "qdisc", "add", "dev", veth, "root", "tbf", "rate", rate, "burst", "256kb", "latency", "50ms")
	run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", rate, "burst", "256kb", "latency", "50ms")
	return ns
}

// removeStaleBenchNetns deletes the namespaces shapedLink made for
// benchmark processes that are gone (killed before their cleanups ran):
// their veths hold the same source address, and the kernel would route to
// the first of them, where nothing listens. Deleting a namespace deletes
// its veth pair with it.
func removeStaleBenchNetns(b *testing.B) {
	b.Helper()
	ents, err := os.ReadDir("/var/run/netns")
	if err != nil {
		return // no namespaces yet
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(strings.TrimPrefix(e.Name(), "dmigb"))
		if err != nil || !strings.HasPrefix(e.Name(), "dmigb") || pid == os.Getpid() {
			continue
		}
		if unix.Kill(pid, 0) != unix.ESRCH {
			b.Fatalf("network namespace %s belongs to benchmark process %d, which still runs: its veth has this benchmark's address", e.Name(), pid)
		}
		if out, err := exec.Command("ip", "netns", "del", e.Name()).CombinedOutput(); err != nil {
			b.Fatalf("remove stale namespace %s: %v: %s", e.Name(), err, out)
		}
		b.Logf("removed namespace %s of a benchmark process that is gone", e.Name())
	}
}

// listenIn opens a listener inside network namespace ns: a socket belongs
// to the namespace of the thread that creates it.
func listenIn(b *testing.B, ns, addr string) *wire.Listener {
	b.Helper()
	type result struct {
		l   *wire.Listener
		err error
	}
	ch := make(chan result)
	go func() {
		// The thread stays locked and dies with this goroutine: it never
		// runs other goroutines in the wrong namespace.
		runtime.LockOSThread()
		f, err := os.Open("/var/run/netns/" + ns)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("enter netns %s: %w", ns, err)}
			return
		}
		l, err := wire.Listen(context.Background(), addr)
		ch <- result{l, err}
	}()
	r := <-ch
	if r.err != nil {
		b.Fatal(r.err)
	}
	return r.l
}

// BenchmarkDMigrateStorageFaults measures post-copy faults resolved from
// shared storage against those resolved from the source, in one hybrid
// migration. Hybrid switches over after one pass (MaxIterations 1) while
// the guest's buffer pool churns (uniform reads over a data file four times
// the pool, so most reads load a page into a frame): frames loaded during
// the pass and clean at the pause are owed as storage references, frames
// written since as data. The destination caps its background restore after
// switchover (dbrestore.Config.PostcopyRestoreRate, DMIG_BENCH_RESTORE_MBPS,
// default 64 MB/s), as an operator would to leave the shared disk to the
// running guest; at this machine's scale that also stands in for a pool of
// many GiB, whose owed references take seconds to restore at full speed.
// The destination guest goes straight to its workload
// (--skip-resume-verify), so it faults on owed pages of both kinds while
// they are still owed. RAM DMIG_BENCH_GIB GiB (default 1), link as in
// BenchmarkDMigrateModes (DMIG_BENCH_RATE); the data file is in the page
// cache. Run:
//
//	go test -run '^$' -bench DMigrateStorageFaults -benchtime 1x ./tests/
func BenchmarkDMigrateStorageFaults(b *testing.B) {
	size := int64(1)
	if v := os.Getenv("DMIG_BENCH_GIB"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			b.Fatalf("DMIG_BENCH_GIB=%q: want a whole number of GiB", v)
		}
		size = n
	}
	restoreRate := int64(64)
	if v := os.Getenv("DMIG_BENCH_RESTORE_MBPS"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			b.Fatalf("DMIG_BENCH_RESTORE_MBPS=%q: want a whole number of MB/s (0: no cap)", v)
		}
		restoreRate = n
	}
	listen, rate := benchListener(b)
	for range b.N {
		dir := b.TempDir()
		frames := size * gib * 3 / 4 / 4096 / 4
		g := startDBSource(b, dir, dbOpts{size: size * gib, poolPart: 0.75, dbPages: 4 * frames, hot: 1, writeRate: 1, readRate: 20000, modifyRate: 500, flushRate: 400})
		d := startDBDestOn(b, listen(b), map[string]string{"data": g.dataFile}, func(c *dbrestore.Config) { c.PostcopyRestoreRate = restoreRate * 1e6 })
		destStats := filepath.Join(b.TempDir(), "dst.stats")
		rep, err := migrateDBWith(b, g, precopy.Config{To: d.addr, Mode: precopy.ModeHybrid, LayoutAddr: g.layout, MaxIterations: 1}, destStats, "--skip-resume-verify")
		if err != nil {
			b.Fatalf("migrate: %v", err)
		}
		if err := <-d.result; err != nil {
			b.Fatalf("destination: %v", err)
		}
		checkDestGuestVerify(b, d, destStats, true)
		st, src := rep.Storage.FaultLatencyUS, rep.FaultLatencyUS
		fmt.Printf("%d GiB guest, link %s, post-copy restore capped at %d MB/s: total %.0f ms, downtime %.1f ms, owed at switchover %d pages, %d of them placed from storage\n",
			size, rate, restoreRate, rep.TotalMS, rep.DowntimeMS, rep.PostcopyPages, rep.Storage.PostcopyPages)
		fmt.Printf("faults from storage: %d, p50 %.1f µs, p99 %.1f µs, max %.0f µs\n", st.Count, st.P50, st.P99, st.Max)
		fmt.Printf("faults from source:  %d, p50 %.1f µs, p99 %.1f µs, max %.0f µs\n", src.Count, src.P50, src.P99, src.Max)
		if src.P50 > 0 && src.P99 > 0 {
			fmt.Printf("storage / source: p50 %.2f×, p99 %.2f×\n", st.P50/src.P50, st.P99/src.P99)
		}
		b.ReportMetric(st.P50, "storage-p50-µs")
		b.ReportMetric(st.P99, "storage-p99-µs")
		b.ReportMetric(float64(st.Count), "storage-faults")
		b.ReportMetric(src.P50, "source-p50-µs")
		b.ReportMetric(src.P99, "source-p99-µs")
		b.ReportMetric(float64(src.Count), "source-faults")
		// The restore's ceiling on the same data file, still in the page
		// cache (1 GiB at most), measured after the migration.
		ceiling := copyCeiling(b, g.dataFile, max(min(int64(rep.Pages.StorageVerified+rep.Storage.PostcopyPages), 1<<18), 256))
		migrationBound{linkRate: tcRate(rate), ceiling: ceiling}.print(b, fmt.Sprintf("%d GiB hybrid, link %s", size, rate), rep)
		if st.Count == 0 {
			b.Errorf("no fault was resolved from storage")
		}
	}
}

// benchListener returns how a benchmark's destinations listen, and the
// link's rate: behind a veth pair shaped to DMIG_BENCH_RATE (default
// 1gbit), or on plain loopback with DMIG_BENCH_RATE=none.
func benchListener(b *testing.B) (func(*testing.B) *wire.Listener, string) {
	rate := os.Getenv("DMIG_BENCH_RATE")
	if rate == "" {
		rate = "1gbit"
	}
	if rate == "none" {
		return func(b *testing.B) *wire.Listener {
			l, err := wire.Listen(context.Background(), "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			return l
		}, rate
	}
	ns := shapedLink(b, rate)
	return func(b *testing.B) *wire.Listener { return listenIn(b, ns, benchDestIP+":0") }, rate
}
