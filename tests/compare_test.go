package tests

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmig/dmig/compare"
	"github.com/dmig/dmig/internal/bandwidth"
	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/internal/testvm"
	"github.com/dmig/dmig/layout"
	"github.com/dmig/dmig/vmm/qemu"
)

// The guest image's preloaded databases (build.sh): `pool`, ~750 MB that
// fill most of the buffer pool, and `sbtest`, sysbench's 2 tables of 20 000
// rows that the workloads run on (small enough for CHECKSUM TABLE to take
// seconds under TCG).
const (
	sbTables = 2
	sbRows   = 20000
)

func sysbench(addr, test string, extra ...string) string {
	a := []string{"sysbench", test, "--db-driver=mysql", "--mysql-host=" + addr, "--mysql-user=dmig", "--mysql-password=dmig",
		"--mysql-db=sbtest", fmt.Sprint("--tables=", sbTables), fmt.Sprint("--table-size=", sbRows)}
	return strings.Join(append(a, extra...), " ")
}

// compareGuest is the MariaDB guest of the comparison runs, booted on a
// bridge of its own, its buffer pool loaded.
type compareGuest struct {
	dir, ramDir string
	image       string // its disk: the shared storage of hybrid's references
	addr        string // the guest's address on the bridge
	qmp         string // its first QEMU's QMP socket
	db          *sql.DB
	poolSize    int64 // innodb_buffer_pool_size
}

// compareQEMU is the QEMU comparisons run on: QEMU 10 (make qemu10, or
// $DMIG_QEMU10), whose own migration does not lose a TCG guest's pages
// (docs/qemu.md). Without it the test fails.
func compareQEMU(ctx context.Context, tb testing.TB) string {
	tb.Helper()
	bin := os.Getenv("DMIG_QEMU10")
	if bin == "" {
		bin = qemu.QEMU10Binary
	}
	v, err := qemu.BinaryVersion(ctx, bin)
	if err == nil && !v.AtLeast(qemu.TCGDirtyFix.Major, qemu.TCGDirtyFix.Minor) {
		err = fmt.Errorf("%s is QEMU %s", bin, v)
	}
	if err != nil {
		tb.Fatalf("QEMU 10 is needed (make qemu10): %v", err)
	}
	return bin
}

// bootCompareGuest boots the guest on the QEMU binary bin and waits for its
// buffer pool. Its QEMUs and RAM files go when tb ends.
func bootCompareGuest(ctx context.Context, tb testing.TB, bin string, mem uint64) *compareGuest {
	tb.Helper()
	dir := tb.TempDir()
	img := testvm.BuildImage(tb, dir)
	br := testvm.NewBridge(tb, dir)
	g := &compareGuest{dir: dir, ramDir: fmt.Sprintf("/dev/shm/dmig-compare-%d", os.Getpid()), image: img.Path, addr: br.Addr(2)}
	if err := os.MkdirAll(g.ramDir, 0o755); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		testvm.KillUnder(dir)
		os.RemoveAll(g.ramDir)
	})
	cfg := qemu.Config{Dir: filepath.Join(dir, "vm"), Image: img.Path, Kernel: img.Kernel, Initrd: img.Initrd,
		MemPath: filepath.Join(g.ramDir, "source"), Tap: &qemu.Tap{Script: br.Script, Addr: br.CIDR(2)},
		AgentSocket: filepath.Join(dir, "vm", "agent.sock"), Binary: bin, KillWithParent: true, MemSize: mem}
	start := time.Now()
	vm, err := qemu.StartConfig(ctx, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	// QEMU serves one QMP client at a time: dmig compare's.
	vm.Mon.Close()
	g.qmp = cfg.QMPPath()
	g.db = testvm.WaitSQL(ctx, tb, g.addr)
	poolBytes := waitPoolLoaded(ctx, tb, g.db)
	tb.Logf("guest at %s: mariadb answered and its buffer pool holds %d MiB, %.0f s after qemu started", g.addr, poolBytes>>20, time.Since(start).Seconds())
	if err := g.db.QueryRowContext(ctx, "SELECT @@innodb_buffer_pool_size").Scan(&g.poolSize); err != nil {
		tb.Fatal(err)
	}
	// The image's agent refreshes its layout every 120 s; its first one
	// predates the pool's load. Refresh it now, as its next tick would, so
	// hybrid's first pass gets the whole pool's layout at once.
	t0 := time.Now()
	lay, err := layout.FetchWith(ctx, "unix:"+cfg.AgentSocket, true)
	if err != nil {
		tb.Fatalf("layout from the guest agent: %v", err)
	}
	tb.Logf("guest agent: layout of %d MiB taken in %.1f s", lay.Pages()>>8, time.Since(t0).Seconds())
	return g
}

// TestCompare boots the MariaDB guest on QEMU 10 on a bridge and runs
// `dmig compare` three times: dmig's modes under sysbench's read-only load
// with CHECKSUM TABLE of every table checked after each migration, then
// under its read/write load with page data compressed, after which
// mariadb-check and InnoDB's error log must find nothing wrong, then
// QEMU's own five modes. The guest keeps its address and its connections
// throughout (sysbench must report no error), and the RAM oracle finds no
// page differing in any mode.
func TestCompare(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	g := bootCompareGuest(ctx, t, compareQEMU(ctx, t), 0)
	dir, ramDir, addr, poolSize := g.dir, g.ramDir, g.addr, g.poolSize

	qmp := g.qmp
	// DMIG_TEST_KEEP=DIR keeps compare's outputs (JSON, CSV, plot, log)
	// after the test, to look at.
	outDir := dir
	if keep := os.Getenv("DMIG_TEST_KEEP"); keep != "" {
		outDir = keep
	}
	// runCompare runs dmig compare in modes (with extra flags) and returns
	// its result and exit error; outputs are checked against the JSON.
	runCompare := func(t *testing.T, name, modes, workload, check string, extra ...string) (*compare.Result, error) {
		t.Helper()
		out := filepath.Join(outDir, name)
		args := []string{"compare", "--qmp", qmp, "--modes", modes, "--dir", out, "--ram-dir", ramDir, "--workload", workload,
			"--warmup", "5s", "--cooldown", "15s", "--timeout", "5m", "--layout-timeout", "90s",
			"--json", out + ".json", "--csv", out + ".csv", "--plot", out + ".png", "--log-format", "text"}
		if check != "" {
			args = append(args, "--check", check)
		}
		args = append(args, extra...)
		cmd := exec.CommandContext(ctx, dmigBin, args...)
		var stderr bytes.Buffer
		logf, err := os.Create(out + ".log")
		if err != nil {
			t.Fatal(err)
		}
		defer logf.Close()
		cmd.Stderr = io.MultiWriter(&stderr, logf)
		runErr := cmd.Run()
		b, err := os.ReadFile(out + ".json")
		if err != nil {
			t.Fatalf("dmig compare: %v (no result: %v)\n%s", runErr, err, tail(stderr.String(), 60))
		}
		var res compare.Result
		if err := json.Unmarshal(b, &res); err != nil {
			t.Fatal(err)
		}
		qmp = res.QMP
		if runErr != nil {
			runErr = fmt.Errorf("%w\n%s", runErr, tail(stderr.String(), 30))
		}
		checkFiles(t, &res, out)
		for _, m := range res.Migrations {
			if r := m.Report; r != nil {
				t.Logf("%-21s total %6.0f ms (layout %5.0f)  downtime %5.0f ms  %5d MB  storage %6d  post-copy %6d  tps %.0f/%.0f(min %.0f)/%.0f  check %s %s",
					m.Mode, r.TotalMS, r.LayoutMS, r.DowntimeMS, r.BytesSent>>20, r.Pages.StorageVerified, r.Pages.PostcopyFault,
					m.TPSBefore, m.TPSDuring, m.TPSDuringMin, m.TPSAfter, m.Check, m.Error)
			}
		}
		return &res, runErr
	}
	dmigModes := "hybrid,precopy,postcopy"
	checksum := checksumCmd(addr)

	ok := t.Run("read-only", func(t *testing.T) {
		res, err := runCompare(t, "ro", dmigModes, sysbench(addr, "oltp_read_only", "--threads=2", "--time=0", "--report-interval=1", "run"), checksum)
		if err != nil {
			t.Fatalf("dmig compare: %v", err)
		}
		if len(res.Migrations) != 3 {
			t.Fatalf("%d migrations, want one per mode (3)", len(res.Migrations))
		}
		if lines := strings.Count(res.Baseline, "\n") + 1; lines != sbTables {
			t.Fatalf("checksum baseline has %d lines, want %d: %q", lines, sbTables, res.Baseline)
		}
		checkMigrations(t, res)
		for _, m := range res.Migrations {
			if m.Check != "same" {
				t.Errorf("%s: CHECKSUM TABLE after the migration %q, before %q", m.Mode, m.CheckOutput, res.Baseline)
			}
			if r := m.Report; m.Mode == "hybrid" && int64(r.Pages.StorageVerified)*4096 < poolSize/2 {
				t.Errorf("hybrid placed %d MiB from storage, want at least half the %d MiB buffer pool", r.Pages.StorageVerified>>8, poolSize>>20)
			}
		}
		guestHealthy(t, dir, outDir)
	})
	if !ok {
		return
	}

	// Read/write, with page data compressed: the same checks hold.
	ok = t.Run("read-write", func(t *testing.T) {
		res, err := runCompare(t, "rw", dmigModes, sysbench(addr, "oltp_read_write", "--threads=2", "--time=0", "--report-interval=1", "run"), "", "--compress")
		if err != nil {
			t.Fatalf("dmig compare: %v", err)
		}
		checkMigrations(t, res)
		for _, m := range res.Migrations {
			if r := m.Report; r != nil && (!r.Compressed || r.BytesSent >= (r.Pages.Data+r.Pages.Prefetch)*4096) {
				t.Errorf("%s with --compress: compressed %v, %d bytes sent for %d data pages", m.Mode, r.Compressed, r.BytesSent, r.Pages.Data+r.Pages.Prefetch)
			}
		}
		out, err := exec.CommandContext(ctx, "mariadb-check", "-h", addr, "-u", "dmig", "-pdmig", "--databases", "pool", "sbtest").CombinedOutput()
		if err != nil {
			t.Fatalf("mariadb-check: %v\n%s", err, out)
		}
		checked := 0
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if !strings.HasSuffix(strings.TrimSpace(line), "OK") {
				t.Errorf("mariadb-check: %q", line)
			}
			checked++
		}
		if checked < sbTables+10 {
			t.Fatalf("mariadb-check checked %d tables:\n%s", checked, out)
		}
		// The server came through every migration: InnoDB logged no
		// corruption, and it did not restart.
		db := testvm.WaitSQL(ctx, t, addr)
		var log sql.NullString
		// LOAD_FILE reads only world-readable files (build.sh makes the
		// log one) under secure_file_priv.
		if err := db.QueryRowContext(ctx, "SELECT LOAD_FILE('/var/log/mysql/error.log')").Scan(&log); err != nil || !log.Valid {
			t.Fatalf("read the guest's error log /var/log/mysql/error.log: %v (NULL: %v)", err, !log.Valid)
		}
		if !strings.Contains(log.String, "ready for connections") {
			t.Fatalf("the guest's error log lacks the server's start:\n%s", tail(log.String, 20))
		}
		for _, line := range strings.Split(log.String, "\n") {
			l := strings.ToLower(line)
			if strings.Contains(l, "corrupt") || strings.Contains(l, "[error] innodb") || strings.Contains(l, "crash recovery") {
				t.Errorf("guest error log: %s", line)
			}
		}
		guestHealthy(t, dir, outDir)
	})
	if !ok {
		return
	}

	t.Run("qemu", func(t *testing.T) {
		// QEMU 10's own modes, its strongest settings included: each must
		// complete with its figures, keep the checksums and the guest, and
		// the RAM oracle find no page differing.
		res, err := runCompare(t, "qemu", strings.Join(qemu.NativeModes, ","),
			sysbench(addr, "oltp_read_only", "--threads=2", "--time=0", "--report-interval=1", "run"), checksum)
		if err != nil {
			t.Errorf("dmig compare: %v", err)
		}
		if len(res.Migrations) != len(qemu.NativeModes) {
			t.Fatalf("%d migrations, want one per mode (%d)", len(res.Migrations), len(qemu.NativeModes))
		}
		checkMigrations(t, res)
		for _, m := range res.Migrations {
			if m.Report == nil || m.Report.BytesSent < 100<<20 {
				t.Errorf("%s: no figures: %+v %s", m.Mode, m.Report, m.Error)
			}
			if m.Check != "same" {
				t.Errorf("%s: CHECKSUM TABLE after the migration %q, before %q", m.Mode, m.CheckOutput, res.Baseline)
			}
		}
		guestHealthy(t, dir, outDir)
	})
}

// checkMigrations requires every migration completed with the workload
// running through it without errors.
func checkMigrations(t *testing.T, res *compare.Result) {
	t.Helper()
	for i, m := range res.Migrations {
		if m.Report == nil || m.Report.Outcome != report.Completed || m.Error != "" {
			t.Errorf("migration %d (%s): %s", i, m.Mode, m.Error)
			continue
		}
		if m.WorkloadErrors != 0 {
			t.Errorf("%s: the workload saw %.0f errors", m.Mode, m.WorkloadErrors)
		}
		checkDowntime(t, m.Mode, m.Report)
		// The RAM oracle ran and found every page it compared equal; in
		// pre-copy modes it compared every page.
		switch o := m.Oracle; {
		case o == nil:
			t.Errorf("%s: no RAM oracle", m.Mode)
		case o.PagesDiffer != 0:
			t.Errorf("%s: %d of %d pages differ between source and destination (first at %#x)", m.Mode, o.PagesDiffer, o.PagesChecked, *o.FirstDiffer)
		case (m.Mode == "precopy" || !strings.Contains(m.Mode, "postcopy") && m.Mode != "hybrid") && o.PagesUnchecked != 0:
			t.Errorf("%s: the oracle left %d pages unchecked", m.Mode, o.PagesUnchecked)
		default:
			t.Logf("%s: RAM oracle: %d pages equal, %d not placed at the resume (unchecked), the check paused the destination %.0f ms",
				m.Mode, o.PagesChecked, o.PagesUnchecked, o.PauseMS)
		}
		// The workload must run around every migration and at the end.
		// A pause that outlasts one window is logged, not failed:
		// sysbench's connections sometimes sit idle for ~10 s after a
		// migration (seen after hybrid and post-copy), then go on without
		// an error; the 15 s cooldown gives the last migration's "after"
		// window room to see them go on.
		last := i == len(res.Migrations)-1
		switch {
		case m.TPSBefore <= 0 && m.TPSDuring <= 0 && m.TPSAfter <= 0:
			t.Errorf("%s: no workload throughput before, during or after it", m.Mode)
		case last && m.TPSAfter <= 0:
			t.Errorf("%s: workload throughput before/during/after %.1f/%.1f/%.1f: it stalled at the end", m.Mode, m.TPSBefore, m.TPSDuring, m.TPSAfter)
		case m.TPSBefore <= 0 || m.TPSDuring <= 0 || m.TPSAfter <= 0:
			t.Logf("%s: workload throughput before/during/after %.1f/%.1f/%.1f: it paused", m.Mode, m.TPSBefore, m.TPSDuring, m.TPSAfter)
		}
	}
	if len(res.WorkloadFailures) > 0 {
		t.Errorf("workload failures: %q", res.WorkloadFailures)
	}
}

// checkDowntime requires a migration's downtime to be guest-visible,
// measured from QMP events (no fallback), and > 0. Against the tool's own
// figure: QEMU's ends when the source has written the stream's last byte,
// which the destination reads before its run point (pre-copy: loaded;
// post-copy: the switch package is read whole before postcopy-active), so
// the guest's is no shorter, but for QEMU's millisecond rounding and STOP
// being raised once the vCPUs have left their translated code, after QEMU
// starts counting (2.7 ms in a CI run with both cores busy: 5 ms
// allowed). dmig's engine counts from before it sends stop to the
// destination's word, after cont returned, that the guest runs, so the
// guest's is no longer (1 ms for two readings of one clock). Both have the
// oracle's pause taken out.
func checkDowntime(t *testing.T, mode string, r *report.Report) {
	t.Helper()
	const stopLag = 5 // ms
	g, own := r.DowntimeMS, r.ReportedDowntimeMS
	t.Logf("%s: downtime %.1f ms guest-visible, %.1f ms by the tool", mode, g, own)
	switch {
	case r.DowntimeWarning != "":
		t.Errorf("%s: downtime not measured from events: %s", mode, r.DowntimeWarning)
	case g <= 0:
		t.Errorf("%s: guest-visible downtime %.1f ms", mode, g)
	case qemu.IsNative(mode) && g < own-stopLag:
		t.Errorf("%s: guest-visible downtime %.1f ms, shorter than QEMU's own %.0f ms", mode, g, own)
	case !qemu.IsNative(mode) && g > own+1:
		t.Errorf("%s: guest-visible downtime %.1f ms, longer than the engine's %.1f ms", mode, g, own)
	}
}

// crashed returns the first line of a guest kernel crash in any serial log
// of the guest's QEMUs (the first one in dir, each destination in out).
func crashed(dirs ...string) string {
	for _, d := range dirs {
		var found string
		_ = filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err != nil || found != "" || e.Name() != "serial.log" {
				return nil
			}
			b, _ := os.ReadFile(p)
			for _, line := range strings.Split(string(b), "\n") {
				for _, sig := range []string{"Kernel panic", "BUG:", "Oops:", "general protection fault", "list_add corruption", "list_del corruption"} {
					if strings.Contains(line, sig) {
						found = p + ": " + strings.TrimSpace(line)
						return filepath.SkipAll
					}
				}
			}
			return nil
		})
		if found != "" {
			return found
		}
	}
	return ""
}

// guestHealthy fails the test if the guest's kernel logged a crash.
func guestHealthy(t *testing.T, dirs ...string) {
	t.Helper()
	if c := crashed(dirs...); c != "" {
		t.Fatalf("the guest's kernel crashed: %s", c)
	}
}

// checksumCmd is a shell command printing CHECKSUM TABLE of every sysbench
// table of the guest at addr.
func checksumCmd(addr string) string {
	var tables []string
	for i := 1; i <= sbTables; i++ {
		tables = append(tables, fmt.Sprintf("sbtest%d", i))
	}
	return fmt.Sprintf("mariadb -h %s -u dmig -pdmig sbtest -N -e 'CHECKSUM TABLE %s'", addr, strings.Join(tables, ", "))
}

// BenchmarkCompare runs `dmig compare` in every mode on the guest (on QEMU
// 10) under sysbench's read-only load (DMIG_BENCH_SYSBENCH: another test,
// e.g. oltp_read_write, then without the checksum check), the migration
// traffic shaped on the loopback to DMIG_BENCH_RATE (default 1gbit;
// "none": unshaped), and logs its table: each mode's figures and their
// ratios against QEMU's fastest mode of the same run.
// DMIG_BENCH_COMPRESS=1 compresses dmig's page data (--compress; =s2:
// with --codec s2);
// DMIG_BENCH_MODES picks the modes (compare's --modes), DMIG_BENCH_QEMU
// the QEMU binary, DMIG_BENCH_MEM the guest's RAM (default 2Gi; give a
// bigger one a bigger pool through the image's DMIG_POOL_* settings,
// docs/testing.md), DMIG_BENCH_LOG_LEVEL compare's --log-level.
// DMIG_TEST_KEEP=DIR keeps the JSON, the CSV, the plot and compare's log.
//
//	go test -run '^$' -bench Compare -benchtime 1x -timeout 40m ./tests/
func BenchmarkCompare(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	// DMIG_BENCH_QEMU runs the guest on another QEMU, one whose TCG loses
	// pages included (--allow-buggy-qemu): to measure the loss.
	bin := os.Getenv("DMIG_BENCH_QEMU")
	var buggy bool
	if bin == "" {
		bin = compareQEMU(ctx, b)
	} else if v, err := qemu.BinaryVersion(ctx, bin); err != nil {
		b.Fatal(err)
	} else {
		buggy = !v.AtLeast(qemu.TCGDirtyFix.Major, qemu.TCGDirtyFix.Minor)
	}
	var mem uint64 // the image's 2 GiB
	if v := os.Getenv("DMIG_BENCH_MEM"); v != "" {
		n, err := bandwidth.Parse(v)
		if err != nil || n%(2<<20) != 0 {
			b.Fatalf("DMIG_BENCH_MEM=%q: want a RAM size in whole 2 MiB, e.g. 3Gi", v)
		}
		mem = n
	}
	g := bootCompareGuest(ctx, b, bin, mem)
	rate := os.Getenv("DMIG_BENCH_RATE")
	if rate == "" {
		rate = "1gbit"
	}
	outDir := g.dir
	if keep := os.Getenv("DMIG_TEST_KEEP"); keep != "" {
		outDir = keep
	}
	test := os.Getenv("DMIG_BENCH_SYSBENCH")
	if test == "" {
		test = "oltp_read_only"
	}
	for i := range b.N {
		out := filepath.Join(outDir, fmt.Sprint("bench", i))
		args := []string{"compare", "--qmp", g.qmp, "--dir", out, "--ram-dir", g.ramDir,
			"--workload", sysbench(g.addr, test, "--threads=2", "--time=0", "--report-interval=1", "run"),
			"--warmup", "5s", "--cooldown", "15s", "--timeout", "10m", "--layout-timeout", "90s",
			"--json", out + ".json", "--csv", out + ".csv", "--plot", out + ".png", "--log-format", "text"}
		if test == "oltp_read_only" {
			// Tables only read keep their checksums.
			args = append(args, "--check", checksumCmd(g.addr))
		}
		if rate != "none" {
			args = append(args, "--rate", rate)
		}
		if buggy {
			args = append(args, "--allow-buggy-qemu")
		}
		switch c := os.Getenv("DMIG_BENCH_COMPRESS"); c {
		case "":
		case "1":
			args = append(args, "--compress")
		default:
			args = append(args, "--compress", "--codec", c)
		}
		if m := os.Getenv("DMIG_BENCH_MODES"); m != "" {
			args = append(args, "--modes", m)
		}
		if l := os.Getenv("DMIG_BENCH_LOG_LEVEL"); l != "" {
			args = append(args, "--log-level", l)
		}
		cmd := exec.CommandContext(ctx, dmigBin, args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		table, err := cmd.Output()
		var res compare.Result
		if b2, rerr := os.ReadFile(out + ".json"); rerr == nil && json.Unmarshal(b2, &res) == nil {
			g.qmp = res.QMP
		}
		b.Logf("dmig compare, link %s:\n%s", rate, table)
		if err := os.WriteFile(out+".log", stderr.Bytes(), 0o644); err != nil {
			b.Errorf("keep dmig compare's log: %v", err)
		}
		if err != nil {
			b.Errorf("dmig compare: %v\n%s", err, tail(stderr.String(), 20))
		}
		printCompareBounds(b, g, tcRate(rate), res.Migrations)
	}
}

// printCompareBounds prints each migration's total against its bound. The
// restore's ceiling is a plain copy from the guest's disk, measured now,
// of as many pages as the first mode that read from it placed (1 GiB at
// most).
func printCompareBounds(b *testing.B, g *compareGuest, linkRate float64, ms []compare.Migration) {
	b.Helper()
	bound := migrationBound{linkRate: linkRate}
	for _, m := range ms {
		if r := m.Report; r != nil && r.Storage.BytesRead > 0 {
			bound.ceiling = copyCeiling(b, g.image, max(min(int64(r.Pages.StorageVerified), 1<<18), 256))
			break
		}
	}
	for _, m := range ms {
		if m.Report != nil && m.Report.TotalMS > 0 {
			bound.print(b, fmt.Sprintf("%s (round %d)", m.Mode, m.Round), m.Report)
		}
	}
}

// waitPoolLoaded waits for the guest's server to load its buffer-pool
// dump and returns the bytes of data pages in the pool.
func waitPoolLoaded(ctx context.Context, t testing.TB, db *sql.DB) int64 {
	t.Helper()
	for {
		var name, status string
		err := db.QueryRowContext(ctx, "SHOW STATUS LIKE 'Innodb_buffer_pool_load_status'").Scan(&name, &status)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(status, "completed") {
			var pages int64
			if err := db.QueryRowContext(ctx, "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'INNODB_BUFFER_POOL_PAGES_DATA'").Scan(&pages); err != nil {
				t.Fatal(err)
			}
			if pages*16384 < 600<<20 {
				t.Fatalf("buffer pool loaded (%s) with %d MiB of data pages, want the preloaded ~750 MB", status, pages>>6)
			}
			return pages * 16384
		}
		select {
		case <-ctx.Done():
			t.Fatalf("buffer pool never loaded: %s", status)
		case <-time.After(2 * time.Second):
		}
	}
}

// checkFiles checks the CSV and the plot dmig compare wrote agree with its
// JSON.
func checkFiles(t *testing.T, res *compare.Result, out string) {
	t.Helper()
	f, err := os.Open(out + ".csv")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(res.Migrations)+1 {
		t.Errorf("csv has %d rows, want a header and %d", len(rows), len(res.Migrations))
	}
	p, err := os.Open(out + ".png")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := png.Decode(p); err != nil {
		t.Errorf("plot: %v", err)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
