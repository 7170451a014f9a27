package tests

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dmig/dmig/dbrestore"
	"github.com/dmig/dmig/internal/guardian"
	"github.com/dmig/dmig/internal/ramfile"
	"github.com/dmig/dmig/precopy"
	"github.com/dmig/dmig/vmm/proc"
	"github.com/dmig/dmig/vmm/qemu"
	"github.com/dmig/dmig/wire"
)

// The guardian (internal/guardian, docs/operating.md): `dmig migrate` or
// `dmig drain` killed, with its whole process group, at any instant before
// Go leaves a guardian that resumes the source guest within a second;
// killed after Go the source stays paused until `dmig resume`.

// guardGuest is a test guest whose switchover pause is wide on a link of
// guardRate per connection (two bulk connections): with --max-iterations 1
// in precopy mode, the pages written during the first pass (~4 s) are
// sent while it is paused (~2 s).
func guardGuest(t *testing.T) *srcGuest {
	return startSource(t, guestOpts{size: 64 << 20, writeRate: 20000, fill: 1})
}

const guardRate = 8 << 20

// startGroup runs dmig in a process group of its own, so the test can kill
// the whole group as a terminal's ^\ or a service manager would.
func startGroup(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(dmigBin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stderr = prefixWriter(t, "dmig "+args[0]+": ")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killGroup(cmd); cmd.Wait() })
	return cmd
}

func killGroup(cmd *exec.Cmd) { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }

// waitPaused waits until the source guest is stopped (the switchover).
func waitPaused(t *testing.T, g *srcGuest) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for procState(g.pid()) != "T" {
		if time.Now().After(deadline) {
			t.Fatal("source guest never paused for switchover")
		}
		time.Sleep(time.Millisecond)
	}
}

// checkResumedWithin asserts the source guest leaves the stopped state
// within d, then runs its workload with RAM that verifies.
func checkResumedWithin(t *testing.T, g *srcGuest, d time.Duration) {
	t.Helper()
	t0 := time.Now()
	for procState(g.pid()) == "T" {
		if time.Since(t0) > d {
			t.Fatalf("source guest still stopped %v after the kill", d)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("source guest running %v after the kill", time.Since(t0).Round(time.Millisecond))
	checkSourceRuns(t, g)
}

// guardiansOf lists the dmig guardian processes watching pid.
func guardiansOf(pid int) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) > 2 && args[1] == "guardian" && strings.Contains(string(b), "\x00--pid\x00"+strconv.Itoa(pid)+"\x00") {
			n, _ := strconv.Atoi(e.Name())
			out = append(out, n)
		}
	}
	return out
}

// checkNoGuardian asserts the guardian of g has exited (it is bounded).
func checkNoGuardian(t *testing.T, g *srcGuest) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for len(guardiansOf(g.pid())) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("guardian %v of guest pid %d still running", guardiansOf(g.pid()), g.pid())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestGuardianBeforeGo(t *testing.T) {
	// Killed at the first instants (guardian starting, attach, first
	// pass: the guest was never paused) and at several instants of the
	// switchover pause.
	for _, c := range []struct {
		name   string
		paused bool          // wait for the pause before the delay
		delay  time.Duration // then kill after this long
	}{
		{"start", false, 0},
		{"attach", false, 30 * time.Millisecond},
		{"first-pass", false, time.Second},
		{"paused", true, 0},
		{"paused+400ms", true, 400 * time.Millisecond},
		{"paused+800ms", true, 800 * time.Millisecond},
	} {
		t.Run(c.name, func(t *testing.T) {
			g := guardGuest(t)
			d := startDest(t, destOpts{})
			p := startProxy(t, d.addr, guardRate)
			args := append(migrateArgs(g, p.addr(), "precopy", filepath.Join(t.TempDir(), "dst.stats")), "--max-iterations", "1", "--no-progress")
			src := startGroup(t, args...)
			if c.paused {
				waitPaused(t, g)
			}
			time.Sleep(c.delay)
			paused := procState(g.pid()) == "T"
			killGroup(src)
			t.Logf("killed dmig migrate (guest paused: %v)", paused)
			if c.paused && !paused {
				t.Fatal("the switchover pause ended before the kill: the test needs a wider pause (guardRate)")
			}
			checkResumedWithin(t, g, time.Second)
			checkNoGuardian(t, g)
			if c.paused {
				checkDestGone(t, d, "")
			}
		})
	}
	t.Run("drain/paused", func(t *testing.T) {
		dir := t.TempDir()
		g := guardGuest(t)
		d := startDest(t, destOpts{})
		p := startProxy(t, d.addr, guardRate)
		vm := drainVM{name: "vm0", g: g, stats: filepath.Join(dir, "vm0.stats")}
		cfg := filepath.Join(dir, "drain.json")
		writeDrainConfig(t, cfg, p.addr(), []drainVM{vm}, "")
		src := startGroup(t, "drain", "--config", cfg, "--insecure", "--max-iterations", "1",
			"--state", filepath.Join(dir, "state.json"), "--lock-dir", filepath.Join(dir, "locks"))
		waitPaused(t, g)
		time.Sleep(200 * time.Millisecond)
		killGroup(src)
		checkResumedWithin(t, g, time.Second)
		checkNoGuardian(t, g)
		checkDestGone(t, d, "")
	})
}

// TestGuardianAfterGo: killed once Go is out, dmig migrate leaves the
// source paused (the destination may run it); `dmig resume` refuses while
// a migration holds the guest and resumes it once none does.
func TestGuardianAfterGo(t *testing.T) {
	for _, c := range []struct {
		name     string
		postcopy bool // kill in post-copy (destination running) rather than at Go
	}{
		{"go", false},
		{"postcopy", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			g := guardGuest(t)
			d := startDest(t, destOpts{})
			p := startProxy(t, d.addr, guardRate)
			var src *exec.Cmd
			if !c.postcopy {
				// Go has arrived; the destination guest is not resumed yet.
				d.beforeResume = func() { killGroup(src); time.Sleep(100 * time.Millisecond) }
			}
			args := append(migrateArgs(g, p.addr(), "postcopy", filepath.Join(t.TempDir(), "dst.stats")), "--no-progress")
			src = startGroup(t, args...)
			if c.postcopy {
				d.resumedTarget(t)
				time.Sleep(300 * time.Millisecond)
				killGroup(src)
			}
			src.Wait()
			checkDestGone(t, d, "")
			// Longer than the guardian takes to resume a guest it should.
			time.Sleep(1500 * time.Millisecond)
			checkSourcePaused(t, g)
			checkNoGuardian(t, g)
			checkResumeCommand(t, g)
		})
	}
}

// checkResumeCommand runs `dmig resume` on the paused source guest g:
// refused (5) while its RAM file is locked as a migration locks it,
// resumes it (0) once not, then refuses (6) since it runs.
func checkResumeCommand(t *testing.T, g *srcGuest) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f, err := os.Open(g.ram)
	if err != nil {
		t.Fatal(err)
	}
	if err := ramfile.Lock(f); err != nil {
		t.Fatal(err)
	}
	pid := strconv.Itoa(g.pid())
	if code, out := dmigRun(t, ctx, "resume", "--pid", pid); code != 5 || !strings.Contains(out, "--force") {
		t.Fatalf("dmig resume of a guest a migration holds: exit %d, want 5 naming --force\n%s", code, out)
	}
	if st := procState(g.pid()); st != "T" {
		t.Fatalf("a refused dmig resume left the guest in state %s", st)
	}
	f.Close()
	if code, out := dmigRun(t, ctx, "resume", "--pid", pid); code != 0 {
		t.Fatalf("dmig resume: exit %d, want 0\n%s", code, out)
	}
	checkSourceRuns(t, g)
	if code, out := dmigRun(t, ctx, "resume", "--pid", pid); code != 6 {
		t.Fatalf("dmig resume of a running guest: exit %d, want 6\n%s", code, out)
	}
}

// TestMigrateFailedAfterGoNamesResume: a migration whose link is cut as
// the destination resumes keeps the source paused while it tries to
// reconnect (dmig resume refuses it then: exit 5), then exits 4 and prints
// the one command that resumes the source.
func TestMigrateFailedAfterGoNamesResume(t *testing.T) {
	g := guardGuest(t)
	d := startDest(t, destOpts{})
	p := startProxy(t, d.addr, 0)
	cut := make(chan struct{})
	d.beforeResume = func() { p.cut(); close(cut); time.Sleep(100 * time.Millisecond) }
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	type result struct {
		code int
		out  string
	}
	res := make(chan result, 1)
	go func() {
		code, out := dmigRun(t, ctx, append(migrateArgs(g, p.addr(), "postcopy", filepath.Join(t.TempDir(), "dst.stats")), "--no-progress", "--recover-timeout", "5s")...)
		res <- result{code, out}
	}()
	select {
	case <-cut:
	case <-time.After(time.Minute):
		t.Fatal("the migration never reached the destination's resume")
	}
	time.Sleep(time.Second)
	if code, out := dmigRun(t, ctx, "resume", "--pid", strconv.Itoa(g.pid())); code != 5 {
		t.Fatalf("dmig resume while the migration waits to reconnect: exit %d, want 5\n%s", code, out)
	}
	r := <-res
	code, out := r.code, r.out
	want := fmt.Sprintf("resume the source with: dmig resume --pid %d", g.pid())
	if code != 4 || !strings.Contains(out, want) {
		t.Fatalf("migration failed after go: exit %d, want 4 and %q\n%s", code, want, out)
	}
	t.Logf("dmig migrate, exit 4:\n%s", out)
	checkSourcePaused(t, g)
	checkNoGuardian(t, g)
	if code, out := dmigRun(t, ctx, "resume", "--pid", strconv.Itoa(g.pid())); code != 0 {
		t.Fatalf("dmig resume: exit %d\n%s", code, out)
	}
	checkSourceRuns(t, g)
}

// wedgedGuest cuts the link once paused (the migration aborts) and never
// manages to resume, as a QEMU whose QMP stopped answering.
type wedgedGuest struct {
	hookedSource
}

func (w *wedgedGuest) Resume(ctx context.Context) error {
	<-ctx.Done()
	return ctx.Err()
}

// TestAbortResumeBounded: the abort's resume of the source guest is
// bounded; its failure says the guest stays paused (precopy.ErrSourcePaused).
func TestAbortResumeBounded(t *testing.T) {
	g := guardGuest(t)
	d := startDest(t, destOpts{})
	p := startProxy(t, d.addr, 0)
	src, err := proc.NewSource(g.pid(), []string{g.ram}, destCommand(filepath.Join(t.TempDir(), "dst.stats")))
	if err != nil {
		t.Fatal(err)
	}
	paused := make(chan time.Time, 1)
	guest := &wedgedGuest{hookedSource{Source: src, hook: func() { p.cut(); paused <- time.Now() }}}
	done := make(chan error, 1)
	go func() {
		_, err := precopy.Run(context.Background(), precopy.Config{To: p.addr(), Mode: precopy.ModePrecopy, MaxIterations: 1, Logger: testLogger(t, "source")}, guest)
		done <- err
	}()
	var t0 time.Time
	select {
	case t0 = <-paused:
	case err := <-done:
		t.Fatalf("migration ended before the pause: %v", err)
	case <-time.After(3 * time.Minute):
		t.Fatal("the migration never paused the guest")
	}
	select {
	case err := <-done:
		if !errors.Is(err, precopy.ErrSourcePaused) {
			t.Fatalf("abort with a wedged resume: %v, want ErrSourcePaused", err)
		}
		t.Logf("abort returned %v after the pause: %v", time.Since(t0).Round(time.Millisecond), err)
	case <-time.After(30 * time.Second):
		t.Fatal("abort with a wedged resume still running 30s after the pause (its bound is 10s)")
	}
	checkSourcePaused(t, g)
	checkDestGone(t, d, "")
}

// startBareQEMU runs a QEMU with no guest (its firmware finds nothing to
// boot and retries: it runs), RAM in a shared file, and a QMP socket.
func startBareQEMU(t *testing.T) (qmp string) {
	qmp, _ = startBareQEMUPid(t)
	return qmp
}

func startBareQEMUPid(t *testing.T) (qmp string, pid int) {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatalf("qemu-system-x86_64 is needed (.ci/run installs qemu-system-x86): %v", err)
	}
	shm, err := os.MkdirTemp("/dev/shm", "guard-qemu-")
	if err != nil {
		t.Fatal(err)
	}
	qmp = filepath.Join(t.TempDir(), "qmp.sock")
	cmd := exec.Command("qemu-system-x86_64", "-machine", "q35,accel=tcg", "-m", "64M", "-nodefaults", "-display", "none",
		"-object", "memory-backend-file,id=ram0,size=64M,mem-path="+filepath.Join(shm, "ram0")+",share=on",
		"-machine", "memory-backend=ram0", "-qmp", "unix:"+qmp+",server=on,wait=off")
	cmd.Stderr = prefixWriter(t, "qemu: ")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); os.RemoveAll(shm) })
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(qmp); err == nil {
			return qmp, cmd.Process.Pid
		}
		if time.Now().After(deadline) {
			t.Fatal("qemu made no QMP socket within 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// vmStatus asks QEMU its run state over a connection of its own.
func vmStatus(t *testing.T, qmp string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := qemu.Dial(ctx, qmp)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	st, err := m.QueryStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st.Status
}

// pauseAsMigrate pauses the VM over a connection held as dmig migrate
// holds it (QMP serves one client at a time), and starts a guardian of the
// VM armed for that pause, as migrate does.
func pauseAsMigrate(t *testing.T, ctx context.Context, qmp string) (*qemu.Monitor, *guardian.Client) {
	t.Helper()
	m, err := qemu.Dial(ctx, qmp)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(dmigBin, "guardian", "--qmp", qmp)
	cmd.Stderr = prefixWriter(t, "dmig guardian: ")
	running := func(ctx context.Context) (bool, error) {
		st, err := m.QueryStatus(ctx)
		return st.Running, err
	}
	c, err := guardian.Start(ctx, cmd, running, testLogger(t, "guard-client"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Pausing(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	return m, c
}

// TestGuardianQEMU: the guardian of a QEMU guest resumes it over QMP once
// the migration's connection is gone (here a moment after the pipe ends,
// as a killed process's descriptors may close in any order), and leaves it
// paused after go; dmig resume --qmp refuses while another client holds
// the socket, resumes the VM, then refuses a running one.
func TestGuardianQEMU(t *testing.T) {
	qmp := startBareQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if st := vmStatus(t, qmp); st != "running" {
		t.Fatalf("bare qemu status %q, want running", st)
	}

	m, c := pauseAsMigrate(t, ctx, qmp)
	t0 := time.Now()
	time.AfterFunc(200*time.Millisecond, func() { m.Close() })
	v, err := c.Release(ctx)
	if err != nil || v != guardian.Resumed {
		t.Fatalf("guardian of a vm paused before go: %s, %v; want resumed", v, err)
	}
	if st := vmStatus(t, qmp); st != "running" {
		t.Fatalf("vm status %q %v after the guardian resumed it, want running", st, time.Since(t0))
	}
	if el := time.Since(t0); el > time.Second {
		t.Fatalf("the guardian took %v to resume the vm, want under a second", el)
	}

	m, c = pauseAsMigrate(t, ctx, qmp)
	if err := c.Going(ctx); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Release(ctx); err != nil || v != guardian.LeftPaused {
		t.Fatalf("guardian of a vm paused after go: %s, %v; want left-paused", v, err)
	}
	code, out := dmigRun(t, ctx, "resume", "--qmp", qmp, "--wait", "2s")
	if code != 5 {
		t.Fatalf("dmig resume with the QMP socket held: exit %d, want 5\n%s", code, out)
	}
	m.Close()
	if st := vmStatus(t, qmp); st != "paused" {
		t.Fatalf("vm status %q after go, want paused", st)
	}
	if code, out := dmigRun(t, ctx, "resume", "--qmp", qmp); code != 0 {
		t.Fatalf("dmig resume --qmp: exit %d\n%s", code, out)
	}
	if st := vmStatus(t, qmp); st != "running" {
		t.Fatalf("vm status %q after dmig resume, want running", st)
	}
	if code, out := dmigRun(t, ctx, "resume", "--qmp", qmp); code != 6 {
		t.Fatalf("dmig resume --qmp of a running vm: exit %d, want 6\n%s", code, out)
	}
}

// qemuTestTarget is a destination QEMU that reports when the source's
// device state arrives (the source is paused by then) and runs a hook
// before it resumes (Go has arrived).
type qemuTestTarget struct {
	*qemu.Target
	devState     chan struct{}
	failLoad     func() error // if set, fails the device state's load
	beforeResume func()
}

func (q *qemuTestTarget) LoadDeviceState(ctx context.Context, r io.Reader) error {
	select {
	case q.devState <- struct{}{}:
	default:
	}
	if q.failLoad != nil {
		return q.failLoad()
	}
	return q.Target.LoadDeviceState(ctx, r)
}

func (q *qemuTestTarget) Resume(ctx context.Context) error {
	if q.beforeResume != nil {
		q.beforeResume()
	}
	return q.Target.Resume(ctx)
}

// startQEMUDest is an in-process destination (dbrestore.Serve, once) of
// QEMU guests: its QEMUs end with the test.
func startQEMUDest(t *testing.T, beforeResume func(), failLoad func() error) (addr string, devState chan struct{}) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l, err := wire.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("/dev/shm", "guard-qemu-dst-")
	if err != nil {
		t.Fatal(err)
	}
	devState = make(chan struct{}, 1)
	var targets []*qemuTestTarget
	var mu sync.Mutex
	cfg := dbrestore.Config{
		Logger: testLogger(t, "dest"),
		NewGuest: func(h *wire.Hello) (dbrestore.Guest, error) {
			q := &qemuTestTarget{Target: &qemu.Target{Command: h.Command, Dir: dir, Session: h.Session, KillWithParent: true}, devState: devState, failLoad: failLoad, beforeResume: beforeResume}
			mu.Lock()
			targets = append(targets, q)
			mu.Unlock()
			return q, nil
		},
	}
	done := make(chan struct{})
	go func() { dbrestore.Serve(ctx, l, cfg, true, nil); l.Close(); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, q := range targets {
			q.Kill()
		}
		os.RemoveAll(dir)
	})
	return l.Addr().String(), devState
}

// TestGuardianQEMUMigrate: dmig migrate --qmp of a bare QEMU killed while
// the VM is paused (its device state on the way) leaves a guardian that
// resumes it within a second; killed at Go it stays paused until dmig
// resume --qmp.
func TestGuardianQEMUMigrate(t *testing.T) {
	waitStatus := func(t *testing.T, qmp string, within time.Duration, want func(string) bool) string {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			st := vmStatus(t, qmp)
			if want(st) || time.Now().After(deadline) {
				return st
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	t.Run("device-state", func(t *testing.T) {
		qmp := startBareQEMU(t)
		addr, devState := startQEMUDest(t, nil, nil)
		p := startProxy(t, addr, 1<<20)
		src := startGroup(t, "migrate", "--qmp", qmp, "--to", p.addr(), "--mode", "precopy", "--no-progress")
		select {
		case <-devState:
		case <-time.After(2 * time.Minute):
			t.Fatal("no device state reached the destination")
		}
		killGroup(src)
		t0 := time.Now()
		// vmStatus waits for the QMP socket, free once migrate is gone.
		if st := waitStatus(t, qmp, time.Second, func(s string) bool { return s == "running" }); st != "running" {
			t.Fatalf("vm status %q 1s after migrate was killed while it was paused, want running", st)
		}
		t.Logf("vm running %v after the kill", time.Since(t0).Round(time.Millisecond))
	})
	t.Run("go", func(t *testing.T) {
		qmp := startBareQEMU(t)
		var src *exec.Cmd
		addr, _ := startQEMUDest(t, func() { killGroup(src); time.Sleep(100 * time.Millisecond) }, nil)
		src = startGroup(t, "migrate", "--qmp", qmp, "--to", addr, "--mode", "precopy", "--no-progress")
		src.Wait()
		time.Sleep(1500 * time.Millisecond)
		if st := vmStatus(t, qmp); !qemu.Paused(st) {
			t.Fatalf("vm status %q after migrate was killed at go, want paused", st)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if code, out := dmigRun(t, ctx, "resume", "--qmp", qmp); code != 0 {
			t.Fatalf("dmig resume --qmp: exit %d\n%s", code, out)
		}
		if st := vmStatus(t, qmp); st != "running" {
			t.Fatalf("vm status %q after dmig resume, want running", st)
		}
	})
}

// TestAbortResumeWedgedQEMU: the destination fails while the source VM is
// paused, and the source QEMU stops answering QMP (here: SIGSTOPped). The
// abort's own cont gives up after its bound; migrate hands the VM to the
// guardian over a fresh connection, which resumes it once QEMU answers
// again: exit 3, the VM runs.
func TestAbortResumeWedgedQEMU(t *testing.T) {
	qmp, pid := startBareQEMUPid(t)
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGCONT) })
	var wedged atomic.Int64 // unix ns
	addr, _ := startQEMUDest(t, nil, func() error {
		wedged.Store(time.Now().UnixNano())
		syscall.Kill(pid, syscall.SIGSTOP)
		// QEMU unwedges after the abort's bound (10 s) but within the
		// guardian's (10 s more).
		time.AfterFunc(13*time.Second, func() { syscall.Kill(pid, syscall.SIGCONT) })
		return errors.New("test: device state refused")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	code, out := dmigRun(t, ctx, "migrate", "--qmp", qmp, "--to", addr, "--mode", "precopy", "--no-progress")
	t.Logf("dmig migrate, exit %d after %v wedged:\n%s", code, time.Since(time.Unix(0, wedged.Load())).Round(time.Millisecond), out)
	if code != 3 || !strings.Contains(out, "the guardian resumed it") {
		t.Fatalf("abort with a wedged qemu: exit %d, want 3 saying the guardian resumed it", code)
	}
	if st := vmStatus(t, qmp); st != "running" {
		t.Fatalf("vm status %q after the guardian resumed it, want running", st)
	}
}
