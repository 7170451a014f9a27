package tests

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmig/dmig/internal/drain"
	"github.com/dmig/dmig/internal/report"
)

// TestMigrateExitCodes: a migration to a dead address exits 3 with the
// source guest running and an aborted report; a second migration of a
// guest already being migrated exits 5 and leaves the first alone.
func TestMigrateExitCodes(t *testing.T) {
	g := startSource(t, guestOpts{size: 64 << 20, writeRate: 2000})
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	rep := filepath.Join(dir, "dead.json")
	prom := filepath.Join(dir, "dead.prom")
	args := append(migrateArgs(g, freeAddr(t), "hybrid", filepath.Join(dir, "x.stats")), "--report", rep, "--metrics-file", prom)
	code, out := dmigRun(t, ctx, args...)
	if code != 3 {
		t.Fatalf("migrate to a dead address: exit %d, want 3\n%s", code, out)
	}
	r := readReport(t, rep)
	if r.Outcome != report.Aborted || r.Error == "" || r.Mode != "hybrid" {
		t.Fatalf("report of the dead-address migration: %+v", r)
	}
	checkMetrics(t, prom, r)
	if !g.progressing(t) {
		t.Fatal("source guest not running after an aborted migration")
	}

	// A destination that accepts TCP and never answers keeps the first
	// migration in its handshake, holding the guest.
	tarpit, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tarpit.Close()
	arrived := make(chan struct{}, 8)
	go func() {
		for {
			c, err := tarpit.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			arrived <- struct{}{}
		}
	}()
	first := make(chan int, 1)
	fctx, fcancel := context.WithCancel(ctx)
	defer fcancel()
	go func() {
		c, _ := dmigRun(t, fctx, migrateArgs(g, tarpit.Addr().String(), "hybrid", filepath.Join(dir, "y.stats"))...)
		first <- c
	}()
	select {
	case <-arrived:
	case <-time.After(30 * time.Second):
		t.Fatal("first migration never dialled")
	}
	code, out = dmigRun(t, ctx, migrateArgs(g, freeAddr(t), "hybrid", filepath.Join(dir, "z.stats"))...)
	if code != 5 {
		t.Fatalf("second migration of the same guest: exit %d, want 5\n%s", code, out)
	}
	select {
	case c := <-first:
		t.Fatalf("the first migration ended (%d) when the second was refused", c)
	default:
	}
	fcancel() // kills the first dmig
	<-first
	if !g.progressing(t) {
		t.Fatal("source guest not running after both migrations")
	}

	// Unattended, a destination that never answers must not hold the
	// guest: --connect-timeout aborts, source intact.
	start := time.Now()
	args = append(migrateArgs(g, tarpit.Addr().String(), "hybrid", filepath.Join(dir, "w.stats")), "--connect-timeout", "500ms")
	code, out = dmigRun(t, ctx, args...)
	if code != 3 || !strings.Contains(out, "did not answer in time") {
		t.Fatalf("migrate to a silent destination with --connect-timeout: exit %d, want 3\n%s", code, out)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("gave up after %v", d)
	}
	if !g.progressing(t) {
		t.Fatal("source guest not running after the timed-out migration")
	}
}

// drainVM is a test guest listed in a drain config.
type drainVM struct {
	name  string
	g     *srcGuest
	stats string // the destination guest's stats
}

func writeDrainConfig(t *testing.T, path string, to string, vms []drainVM, failing string) {
	t.Helper()
	var cfg drain.Config
	for _, v := range vms {
		cmd := destCommand(v.stats)
		if v.name == failing {
			// Its destination guest dies as it starts.
			cmd = []string{"/bin/sh", "-c", "exit 7"}
		}
		cfg.VMs = append(cfg.VMs, drain.VM{Name: v.name, Pid: v.g.pid(), RAM: []string{v.g.ram}, DestCmd: cmd, To: to, Mode: "precopy"})
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func readSummary(t *testing.T, path string) drain.Summary {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var s drain.Summary
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("summary %s: %v\n%s", path, err, b)
	}
	return s
}

func startDrainVMs(t *testing.T, dir string, n int) []drainVM {
	var vms []drainVM
	for i := range n {
		name := "vm" + strconv.Itoa(i)
		v := drainVM{name: name, g: startSource(t, guestOpts{size: 64 << 20, writeRate: 2000}), stats: filepath.Join(dir, name+".stats")}
		killDestGuest(t, v.stats)
		vms = append(vms, v)
	}
	return vms
}

// TestDrain drains three test guests, the second of which fails (its
// destination guest dies at start): the other two move and run verified on
// the destination, the failed one runs on at the source, the summary and
// the exit status (3) say so; a rerun skips the two moved guests.
func TestDrain(t *testing.T) {
	dir := t.TempDir()
	srv := startServe(t, "--insecure")
	vms := startDrainVMs(t, dir, 3)
	conf := filepath.Join(dir, "drain.json")
	writeDrainConfig(t, conf, srv.addr, vms, "vm1")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sumFile := filepath.Join(dir, "summary.json")
	state := filepath.Join(dir, "state.json")
	common := []string{"drain", "--config", conf, "--state", state, "--lock-dir", filepath.Join(dir, "locks"), "--insecure"}
	prom := filepath.Join(dir, "drain.prom")
	code, out := dmigRun(t, ctx, append(common, "--report", sumFile, "--metrics-file", prom)...)
	if code != 3 {
		t.Fatalf("drain with one failing guest: exit %d, want 3\n%s", code, out)
	}
	sum := readSummary(t, sumFile)
	for i, r := range sum.VMs {
		if r.Report == nil {
			t.Fatalf("summary line %d has no report: %+v", i, r)
		}
		checkMetrics(t, prom, *r.Report)
	}
	t.Logf("summary: moved %d, failed %d", sum.Moved, sum.Failed)
	want := []drain.Status{drain.StatusMoved, drain.StatusFailed, drain.StatusMoved}
	for i, r := range sum.VMs {
		if r.Name != vms[i].name || r.Status != want[i] {
			t.Fatalf("summary line %d: %+v, want %s %s", i, r, vms[i].name, want[i])
		}
	}
	if sum.Moved != 2 || sum.Failed != 1 || sum.VMs[1].Outcome != report.Aborted || sum.VMs[1].Error == "" ||
		sum.VMs[0].Report == nil || sum.VMs[0].Report.Outcome != report.Completed {
		t.Fatalf("summary %+v", sum)
	}
	for _, i := range []int{0, 2} {
		waitDestRunning(t, vms[i].stats)
		select {
		case <-vms[i].g.exit:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s still runs on the source after it moved", vms[i].name)
		}
	}
	if !vms[1].g.progressing(t) {
		t.Fatal("the failed guest does not run on its source")
	}

	// The rerun skips the moved guests and retries the failed one.
	code, out = dmigRun(t, ctx, append(common, "--report", sumFile)...)
	sum = readSummary(t, sumFile)
	if code != 3 || sum.AlreadyMoved != 2 || sum.Failed != 1 || sum.VMs[0].Status != drain.StatusAlreadyMoved {
		t.Fatalf("rerun: exit %d, summary %+v\n%s", code, sum, out)
	}
	if n := len(srv.sessions(t)); n != 4 {
		t.Fatalf("%d sessions reached the destination, want 4 (two moves, the failing guest twice)", n)
	}
	// The failed guest's attempts left nothing; the moved guests' RAM
	// stays with them.
	if d := srv.dirs(t); len(d) != 2 {
		t.Fatalf("session directories %v, want the 2 moved guests'", d)
	}
}

// TestConcurrentDrains runs two drains of the same config at once: each
// guest moves exactly once, and the destination sees one session per guest.
func TestConcurrentDrains(t *testing.T) {
	dir := t.TempDir()
	srv := startServe(t, "--insecure")
	vms := startDrainVMs(t, dir, 2)
	conf := filepath.Join(dir, "drain.json")
	writeDrainConfig(t, conf, srv.addr, vms, "")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	codes := make([]int, 2)
	outs := make([]string, 2)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i], outs[i] = dmigRun(t, ctx, "drain", "--config", conf, "--state", filepath.Join(dir, "state.json"),
				"--lock-dir", filepath.Join(dir, "locks"), "--insecure", "--parallel", "2", "--report", filepath.Join(dir, "sum"+strconv.Itoa(i)))
		}()
	}
	wg.Wait()
	moved := map[string]int{}
	for i := range 2 {
		if codes[i] != 0 && codes[i] != 5 {
			t.Fatalf("drain %d: exit %d\n%s", i, codes[i], outs[i])
		}
		for _, r := range readSummary(t, filepath.Join(dir, "sum"+strconv.Itoa(i))).VMs {
			switch r.Status {
			case drain.StatusMoved:
				moved[r.Name]++
			case drain.StatusBusy, drain.StatusAlreadyMoved:
			default:
				t.Fatalf("drain %d: %+v", i, r)
			}
		}
	}
	for _, v := range vms {
		if moved[v.name] != 1 {
			t.Fatalf("%s moved %d times", v.name, moved[v.name])
		}
		waitDestRunning(t, v.stats)
	}
	if n := len(srv.sessions(t)); n != 2 {
		t.Fatalf("%d sessions reached the destination, want 2", n)
	}
}
