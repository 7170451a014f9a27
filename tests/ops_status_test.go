package tests

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dmig/dmig/internal/ctl"
	"github.com/dmig/dmig/internal/drain"
	"github.com/dmig/dmig/internal/report"
)

// migrateProc is a 'dmig migrate' process run in the background.
type migrateProc struct {
	cmd    *exec.Cmd
	stderr *lockedBuffer
	done   chan struct{}
	code   int
}

// startMigrate runs dmig with args and returns at once.
func startMigrate(t *testing.T, args ...string) *migrateProc {
	t.Helper()
	m := &migrateProc{cmd: exec.Command(dmigBin, args...), stderr: new(lockedBuffer), done: make(chan struct{})}
	m.cmd.Stderr = m.stderr
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		err := m.cmd.Wait()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			m.code = ee.ExitCode()
		} else if err != nil {
			m.code = -1
		}
		close(m.done)
	}()
	t.Cleanup(func() {
		select {
		case <-m.done:
		default:
			m.cmd.Process.Kill()
			<-m.done
		}
	})
	return m
}

// wait waits for the process to exit and returns its status.
func (m *migrateProc) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-m.done:
		return m.code
	case <-time.After(3 * time.Minute):
		t.Fatalf("dmig still running after 3 minutes:\n%s", m.stderr.String())
	}
	return -1
}

// statusOf runs 'dmig status --json' on ctlDir, for guest if not empty,
// and returns its exit status and entries.
func statusOf(t *testing.T, ctlDir, guest string) (int, []ctl.Entry, string) {
	t.Helper()
	args := []string{"status", "--json", "--ctl-dir", ctlDir}
	if guest != "" {
		args = append(args, guest)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, dmigBin, args...)
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("dmig status: %v", err)
	}
	var es []ctl.Entry
	if err := json.Unmarshal(out, &es); err != nil {
		t.Fatalf("dmig status --json printed no JSON array: %v\n%s", err, out)
	}
	return code, es, stderr.String()
}

// roleEntry returns the entry of role among es.
func roleEntry(es []ctl.Entry, role string) (ctl.Entry, bool) {
	for _, e := range es {
		if e.Role == role {
			return e, true
		}
	}
	return ctl.Entry{}, false
}

// waitEntry polls status of guest until ok accepts its source entry, or
// the migration exits (fatal).
func waitEntry(t *testing.T, ctlDir, guest string, m *migrateProc, ok func(ctl.Entry) bool) ctl.Entry {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		_, es, _ := statusOf(t, ctlDir, guest)
		if e, found := roleEntry(es, report.RoleSource); found && ok(e) {
			return e
		}
		select {
		case <-m.done:
			t.Fatalf("migration ended (exit %d) before status showed what was awaited (last %+v):\n%s", m.code, es, m.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never showed what was awaited; last %+v", es)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// statusSetup is a serve and a test guest on a shaped link, the control
// sockets of both in a directory of the test's.
type statusSetup struct {
	ctlDir, stats, rep string
	g                  *srcGuest
	srv                *serveProc
	px                 *proxy
	guest              string // the name status and cancel are given: pid:PID
}

func newStatusSetup(t *testing.T, rate int64) *statusSetup {
	t.Helper()
	dir := t.TempDir()
	s := &statusSetup{ctlDir: filepath.Join(dir, "ctl"), stats: filepath.Join(dir, "dst.stats"), rep: filepath.Join(dir, "report.json")}
	s.srv = startServe(t, "--insecure", "--ctl-dir", s.ctlDir)
	s.g = startSource(t, guestOpts{size: 128 << 20, writeRate: 2000})
	s.px = startProxy(t, s.srv.addr, rate)
	killDestGuest(t, s.stats)
	s.guest = "pid:" + strconv.Itoa(s.g.pid())
	return s
}

func (s *statusSetup) migrate(t *testing.T, mode string) *migrateProc {
	args := append(migrateArgs(s.g, s.px.addr(), mode, s.stats), "--ctl-dir", s.ctlDir, "--report", s.rep)
	return startMigrate(t, args...)
}

// TestStatus watches a hybrid migration over a 10 MB/s link with dmig
// status: both ends list it, the source's bytes grow from one sample to
// the next while progress never falls and the ETA never rises without a
// reason given, and once migrate exited only the destination's entry is
// left, with the outcome. The destination guest verifies its RAM.
func TestStatus(t *testing.T) {
	s := newStatusSetup(t, 10<<20)
	m := s.migrate(t, "hybrid")
	first := waitEntry(t, s.ctlDir, s.guest, m, func(e ctl.Entry) bool { return e.BytesSent > 1<<20 && e.Phase == "precopy" })
	if st, err := os.Stat(s.ctlDir); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("control directory: %v, %v; want mode 0700", st, err)
	}
	socks, _ := filepath.Glob(filepath.Join(s.ctlDir, "*.sock"))
	for _, p := range socks {
		if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("control socket %s: %v, %v; want mode 0600", p, st, err)
		}
	}
	if !first.Cancellable || first.GoSent || first.Mode != "hybrid" || first.GuestPages != 128<<20/4096 || first.DowntimeMS != 50 || first.Session == "" {
		t.Fatalf("source entry %+v", first)
	}
	// Both ends, by the guest's own name too, once the destination has
	// its guest started (the source's first megabytes may be in the
	// sockets' buffers before).
	deadline := time.Now().Add(time.Minute)
	for {
		_, es, _ := statusOf(t, s.ctlDir, first.Guest)
		dst, ok := roleEntry(es, report.RoleDestination)
		if ok && len(es) == 2 {
			if dst.Session != first.Session || dst.Command != "serve" || first.Command != "migrate" {
				t.Fatalf("status of %s: %+v; want the source and destination of session %s", first.Guest, es, first.Session)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status of %s: %+v; want the source and destination of session %s", first.Guest, es, first.Session)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Samples until it ends: counters and progress only grow, the ETA
	// only falls unless re-estimated.
	samples := []ctl.Entry{first}
	shown := false
	for {
		_, es, _ := statusOf(t, s.ctlDir, s.guest)
		e, ok := roleEntry(es, report.RoleSource)
		if !ok {
			break
		}
		prev := samples[len(samples)-1]
		if e.BytesSent < prev.BytesSent || e.PagesDone < prev.PagesDone || e.Progress < prev.Progress {
			t.Fatalf("figures ran backwards:\n%+v\nthen\n%+v", prev, e)
		}
		if prev.ETASeconds != nil && e.ETASeconds != nil && *e.ETASeconds > *prev.ETASeconds && e.ETAReestimates == prev.ETAReestimates {
			t.Fatalf("ETA rose with no re-estimate said: %v s then %v s", *prev.ETASeconds, *e.ETASeconds)
		}
		samples = append(samples, e)
		if !shown && e.ETASeconds != nil && e.Progress > 0.3 && e.Phase == "precopy" {
			// The text form, once there is an ETA: both ends.
			txt, err := exec.Command(dmigBin, "status", "--ctl-dir", s.ctlDir).Output()
			if err != nil || strings.Count(string(txt), first.Guest) != 2 || !strings.Contains(string(txt), "pages left: data ") {
				t.Fatalf("dmig status: %v\n%s", err, txt)
			}
			t.Logf("dmig status:\n%s", txt)
			shown = true
		}
		time.Sleep(300 * time.Millisecond)
	}
	if code := m.wait(t); code != 0 {
		t.Fatalf("migrate: exit %d\n%s", code, m.stderr.String())
	}
	waitDestRunning(t, s.stats)
	if !shown {
		t.Fatalf("no sample in pre-copy past 30%% with an ETA among %d: %+v", len(samples), samples)
	}
	var grew bool
	for _, e := range samples[1:] {
		grew = grew || e.BytesSent > first.BytesSent
	}
	last := samples[len(samples)-1]
	if !grew || last.Progress <= first.Progress || last.RateBytes <= 0 || last.ETASeconds == nil {
		t.Fatalf("%d samples, the bytes did not grow or progress did not advance:\nfirst %+v\nlast %+v", len(samples), first, last)
	}
	t.Logf("%d samples: first %.1f%% %d B, last %.1f%% %d B phase %s, ETA re-estimated %d times", len(samples),
		first.Progress*100, first.BytesSent, last.Progress*100, last.BytesSent, last.Phase, last.ETAReestimates)
	// The source is gone from status with its process; the destination
	// lists the session with its outcome.
	code, es, _ := statusOf(t, s.ctlDir, first.Guest)
	dst, ok := roleEntry(es, report.RoleDestination)
	if code != 0 || len(es) != 1 || !ok || dst.Outcome != string(report.Completed) || dst.Progress != 1 {
		t.Fatalf("status after the migration: exit %d, %+v; want only the destination's entry, completed", code, es)
	}
	if code, _, out := statusOf(t, s.ctlDir, s.guest); code == 0 || !strings.Contains(out, "no such migration") {
		t.Fatalf("status of the finished source: exit %d, %q; want an error naming no migration", code, out)
	}
}

// TestCancelBeforeGo cancels a migration in its first pass: migrate exits
// 3 with the outcome aborted, the source guest runs on with its RAM
// intact, and the destination's session ends aborted.
func TestCancelBeforeGo(t *testing.T) {
	s := newStatusSetup(t, 10<<20)
	m := s.migrate(t, "hybrid")
	waitEntry(t, s.ctlDir, s.guest, m, func(e ctl.Entry) bool { return e.BytesSent > 1<<20 })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	code, out := dmigRun(t, ctx, "cancel", "--ctl-dir", s.ctlDir, "--reason", "test", s.guest)
	if code != 0 || !strings.Contains(out, "the source guest runs on") {
		t.Fatalf("cancel before go: exit %d\n%s", code, out)
	}
	if code := m.wait(t); code != 3 {
		t.Fatalf("migrate after cancel: exit %d, want 3\n%s", code, m.stderr.String())
	}
	rep := readReport(t, s.rep)
	if rep.Outcome != report.Aborted || !strings.Contains(rep.Error, "cancelled by dmig cancel") || rep.Restarts != 0 {
		t.Fatalf("report after cancel: outcome %s, restarts %d, error %q", rep.Outcome, rep.Restarts, rep.Error)
	}
	checkSourceRuns(t, s.g)
	// The destination's entry ends aborted, its session directory goes.
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, es, _ := statusOf(t, s.ctlDir, "")
		dst, ok := roleEntry(es, report.RoleDestination)
		if ok && dst.Outcome == string(report.Aborted) && len(s.srv.dirs(t)) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("destination after cancel: %+v, session directories %v", es, s.srv.dirs(t))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestCancelAfterGo asks to cancel a post-copy migration over a 5 MiB/s
// link once Go was sent:
// refused (exit 7) with the reason, the migration completes and the
// destination guest verifies its RAM.
func TestCancelAfterGo(t *testing.T) {
	// Slower: post-copy must outlast a status and a cancel.
	s := newStatusSetup(t, 5<<20)
	m := s.migrate(t, "postcopy")
	e := waitEntry(t, s.ctlDir, s.guest, m, func(e ctl.Entry) bool { return e.GoSent && e.PagesLeft.PostcopyMissing > 0 })
	if e.Cancellable || e.Phase != "postcopy" {
		t.Fatalf("source entry after go: %+v", e)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	code, out := dmigRun(t, ctx, "cancel", "--ctl-dir", s.ctlDir, s.guest)
	if code != 7 || !strings.Contains(out, "go was sent") {
		t.Fatalf("cancel after go: exit %d, %q; want 7 and the reason", code, out)
	}
	if code := m.wait(t); code != 0 {
		t.Fatalf("migrate after a refused cancel: exit %d\n%s", code, m.stderr.String())
	}
	waitDestRunning(t, s.stats)
	if rep := readReport(t, s.rep); rep.Outcome != report.Completed {
		t.Fatalf("report after a refused cancel: %+v", rep)
	}
}

// TestDrainStatusCancel drains two guests at once over a 10 MB/s link:
// status lists each under its drain entry's name, and cancelling one by
// that name aborts it alone. The drain exits 3 with the cancelled guest
// failed (aborted, running on the source with its RAM intact) and the
// other moved and verified on the destination.
func TestDrainStatusCancel(t *testing.T) {
	dir := t.TempDir()
	ctlDir := filepath.Join(dir, "ctl")
	srv := startServe(t, "--insecure", "--ctl-dir", ctlDir)
	px := startProxy(t, srv.addr, 10<<20)
	var vms []drainVM
	for _, name := range []string{"db-a", "db-b"} {
		v := drainVM{name: name, g: startSource(t, guestOpts{size: 128 << 20, writeRate: 2000}), stats: filepath.Join(dir, name+".stats")}
		killDestGuest(t, v.stats)
		vms = append(vms, v)
	}
	conf, sumFile := filepath.Join(dir, "drain.json"), filepath.Join(dir, "summary.json")
	writeDrainConfig(t, conf, px.addr(), vms, "")
	d := startMigrate(t, "drain", "--config", conf, "--state", filepath.Join(dir, "state.json"), "--lock-dir", filepath.Join(dir, "locks"),
		"--insecure", "--parallel", "2", "--ctl-dir", ctlDir, "--report", sumFile)
	waitEntry(t, ctlDir, "db-b", d, func(e ctl.Entry) bool { return e.BytesSent > 1<<20 && e.Cancellable })
	// The serve sets up one session at a time: the other guest's first
	// dial may have been turned away as busy and be waiting to retry.
	waitEntry(t, ctlDir, "db-a", d, func(e ctl.Entry) bool { return e.Cancellable })
	_, es, _ := statusOf(t, ctlDir, "")
	var drains int
	for _, e := range es {
		if e.Command == "drain" && len(e.Names) == 2 && (e.Names[1] == "db-a" || e.Names[1] == "db-b") {
			drains++
		}
	}
	if drains != 2 {
		t.Fatalf("status lists %d drain guests by name, want 2: %+v", drains, es)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if code, out := dmigRun(t, ctx, "cancel", "--ctl-dir", ctlDir, "db-b"); code != 0 {
		t.Fatalf("cancel db-b: exit %d\n%s", code, out)
	}
	if code := d.wait(t); code != 3 {
		t.Fatalf("drain with one guest cancelled: exit %d, want 3\n%s", code, d.stderr.String())
	}
	sum := readSummary(t, sumFile)
	if len(sum.VMs) != 2 || sum.VMs[0].Status != drain.StatusMoved || sum.VMs[1].Status != drain.StatusFailed ||
		sum.VMs[1].Outcome != report.Aborted || !strings.Contains(sum.VMs[1].Error, "cancelled by dmig cancel") {
		t.Fatalf("summary %+v", sum)
	}
	waitDestRunning(t, vms[0].stats)
	checkSourceRuns(t, vms[1].g)
}

// TestSetBandwidth starts a hybrid migration capped at 3M over a 40 MiB/s
// link and raises the cap to 30M with dmig set-bandwidth in its first
// pass: status shows the new cap (JSON and text), bad input is refused
// with the cap left as it was, the migration completes with the
// destination guest's RAM verified, and the report lists the change with
// the bytes before it, whose rate held the old cap.
func TestSetBandwidth(t *testing.T) {
	s := newStatusSetup(t, 40<<20)
	args := append(migrateArgs(s.g, s.px.addr(), "hybrid", s.stats), "--ctl-dir", s.ctlDir, "--report", s.rep, "--max-bandwidth", "3M")
	m := startMigrate(t, args...)
	e := waitEntry(t, s.ctlDir, s.guest, m, func(e ctl.Entry) bool { return e.BytesSent > 1<<20 && e.Phase == "precopy" })
	if e.MaxBandwidth == nil || *e.MaxBandwidth != 3_000_000 || e.BandwidthChanges != 0 {
		t.Fatalf("source entry before the change: %+v", e)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, bad := range [][]string{{s.guest, "fast"}, {s.guest, "500k"}, {"no-such-guest", "30M"}} {
		code, out := dmigRun(t, ctx, append([]string{"set-bandwidth", "--ctl-dir", s.ctlDir}, bad...)...)
		if code == 0 || !strings.Contains(out, "dmig: ") {
			t.Fatalf("set-bandwidth %v: exit %d, %q; want an error", bad, code, out)
		}
		t.Logf("set-bandwidth %v: exit %d: %s", bad, code, strings.TrimSpace(out))
	}
	code, out := dmigRun(t, ctx, "set-bandwidth", "--ctl-dir", s.ctlDir, s.guest, "30M")
	if code != 0 || !strings.Contains(out, "3M -> 30M") {
		t.Fatalf("set-bandwidth 30M: exit %d\n%s", code, out)
	}
	e = waitEntry(t, s.ctlDir, s.guest, m, func(ctl.Entry) bool { return true })
	if e.MaxBandwidth == nil || *e.MaxBandwidth != 30_000_000 || e.BandwidthChanges != 1 {
		t.Fatalf("source entry after the change: %+v", e)
	}
	txt, err := exec.Command(dmigBin, "status", "--ctl-dir", s.ctlDir, s.guest).Output()
	if err != nil || !strings.Contains(string(txt), "bandwidth cap 30M bytes/s, changed 1 times") {
		t.Fatalf("dmig status: %v\n%s", err, txt)
	}
	if code := m.wait(t); code != 0 {
		t.Fatalf("migrate: exit %d\n%s", code, m.stderr.String())
	}
	waitDestRunning(t, s.stats)
	rep := readReport(t, s.rep)
	bw := rep.Bandwidth
	if rep.Outcome != report.Completed || bw.MaxBytesPerS != 30_000_000 || len(bw.Changes) != 1 {
		t.Fatalf("report: outcome %s, bandwidth %+v; want completed, cap 30M, one change", rep.Outcome, bw)
	}
	c := bw.Changes[0]
	t.Logf("change at %.1f s after %d bytes; %d bytes in all over %.0f ms", c.ElapsedS, c.BytesBefore, bw.Bytes, rep.TotalMS)
	if c.FromBytesPerS != 3_000_000 || c.ToBytesPerS != 30_000_000 || c.BytesBefore < 1<<20 || c.BytesBefore >= bw.Bytes || c.At.IsZero() {
		t.Fatalf("change %+v", c)
	}
	// Under the old cap the traffic held it (from the start, set-up
	// included, so the bound is loose the right way), and the guest's
	// 128 MiB could not have gone at 3M in the time the whole took.
	if float64(c.BytesBefore) > 3e6*1.05*c.ElapsedS+150e3 {
		t.Errorf("%d bytes in the %.1f s before the change: past the 3M cap", c.BytesBefore, c.ElapsedS)
	}
	if after := float64(bw.Bytes-c.BytesBefore) / (rep.TotalMS/1e3 - c.ElapsedS); after <= 3e6*1.05 {
		t.Errorf("after the change %.0f bytes/s: no faster than the old cap", after)
	}
}

// TestDrainSetBandwidth drains one guest capped at 2M by its config entry,
// within a drain total of 40M, raises its cap to 30M by its entry's name
// and the total to 60M by drain:PID: status shows the guest's new cap
// within the shared 60M, the guest moves with its RAM verified on the
// destination, and its report and the summary's total list the changes.
func TestDrainSetBandwidth(t *testing.T) {
	dir := t.TempDir()
	ctlDir := filepath.Join(dir, "ctl")
	srv := startServe(t, "--insecure", "--ctl-dir", ctlDir)
	px := startProxy(t, srv.addr, 40<<20)
	v := drainVM{name: "db-a", g: startSource(t, guestOpts{size: 64 << 20, writeRate: 2000}), stats: filepath.Join(dir, "db-a.stats")}
	killDestGuest(t, v.stats)
	conf, sumFile := filepath.Join(dir, "drain.json"), filepath.Join(dir, "summary.json")
	writeDrainConfig(t, conf, px.addr(), []drainVM{v}, "")
	var cfg drain.Config
	b, err := os.ReadFile(conf)
	if err == nil {
		err = json.Unmarshal(b, &cfg)
	}
	if err != nil {
		t.Fatal(err)
	}
	cfg.VMs[0].MaxBandwidth = 2_000_000
	if b, err = json.Marshal(cfg); err != nil || os.WriteFile(conf, b, 0o600) != nil {
		t.Fatalf("drain config: %v", err)
	}
	d := startMigrate(t, "drain", "--config", conf, "--state", filepath.Join(dir, "state.json"), "--lock-dir", filepath.Join(dir, "locks"),
		"--insecure", "--ctl-dir", ctlDir, "--report", sumFile, "--max-bandwidth", "40M")
	e := waitEntry(t, ctlDir, "db-a", d, func(e ctl.Entry) bool { return e.BytesSent > 1<<20 })
	if e.MaxBandwidth == nil || *e.MaxBandwidth != 2_000_000 || e.SharedMaxBandwidth != 40_000_000 {
		t.Fatalf("drain guest's entry: %+v", e)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if code, out := dmigRun(t, ctx, "set-bandwidth", "--ctl-dir", ctlDir, "db-a", "30M"); code != 0 || !strings.Contains(out, "2M -> 30M") {
		t.Fatalf("set-bandwidth db-a 30M: exit %d\n%s", code, out)
	}
	total := "drain:" + strconv.Itoa(d.cmd.Process.Pid)
	if code, out := dmigRun(t, ctx, "set-bandwidth", "--ctl-dir", ctlDir, total, "60M"); code != 0 || !strings.Contains(out, "total bandwidth cap 40M -> 60M") {
		t.Fatalf("set-bandwidth %s 60M: exit %d\n%s", total, code, out)
	}
	if code, out := dmigRun(t, ctx, "set-bandwidth", "--ctl-dir", ctlDir, "drain:1", "60M"); code == 0 || !strings.Contains(out, "no such migration") {
		t.Fatalf("set-bandwidth drain:1: exit %d, %q; want no such drain", code, out)
	}
	e = waitEntry(t, ctlDir, "db-a", d, func(ctl.Entry) bool { return true })
	if e.MaxBandwidth == nil || *e.MaxBandwidth != 30_000_000 || e.SharedMaxBandwidth != 60_000_000 || e.BandwidthChanges != 1 {
		t.Fatalf("drain guest's entry after the change: %+v", e)
	}
	if code := d.wait(t); code != 0 {
		t.Fatalf("drain: exit %d\n%s", code, d.stderr.String())
	}
	waitDestRunning(t, v.stats)
	sum := readSummary(t, sumFile)
	if len(sum.VMs) != 1 || sum.VMs[0].Status != drain.StatusMoved || sum.VMs[0].Report == nil {
		t.Fatalf("summary %+v", sum)
	}
	bw := sum.VMs[0].Report.Bandwidth
	if bw.MaxBytesPerS != 30_000_000 || len(bw.Changes) != 1 || bw.Changes[0].FromBytesPerS != 2_000_000 || bw.Changes[0].ToBytesPerS != 30_000_000 {
		t.Fatalf("guest's report bandwidth %+v", bw)
	}
	if tb := sum.Bandwidth; tb == nil || tb.MaxBytesPerS != 60_000_000 || len(tb.Changes) != 1 || tb.Changes[0].FromBytesPerS != 40_000_000 {
		t.Fatalf("drain total %+v: want 60M, changed once from 40M", sum.Bandwidth)
	}
}
