package tests

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/internal/testguest"
	"github.com/dmig/dmig/precopy"
	"github.com/dmig/dmig/vmm/proc"
)

// The failure rule under test (README, "Failures"): until the source sends
// Go, any failure aborts and the source guest runs on with its memory
// intact; after Go the source guest stays paused, intact; a destination
// that loses the source after resuming kills its guest rather than let it
// run on zero pages.

const faultGuestSize = 256 << 20

func faultGuest(t *testing.T) *srcGuest {
	return startSource(t, guestOpts{size: faultGuestSize, writeRate: 20000, fill: 1})
}

// hookedSource pauses the real guest, then runs hook (the fault) before the
// engine goes on with the switchover.
type hookedSource struct {
	*proc.Source
	hook func()
}

func (h *hookedSource) Pause(ctx context.Context) error {
	if err := h.Source.Pause(ctx); err != nil {
		return err
	}
	h.hook()
	return nil
}

// runSource migrates g in-process through to, with the given pause hook.
func runSource(t *testing.T, g *srcGuest, to string, mode precopy.Mode, destStats string, pauseHook func()) (*report.Report, error) {
	t.Helper()
	src, err := proc.NewSource(g.pid(), []string{g.ram}, destCommand(destStats))
	if err != nil {
		t.Fatal(err)
	}
	var guest precopy.Guest = src
	if pauseHook != nil {
		guest = &hookedSource{Source: src, hook: pauseHook}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	return precopy.Run(ctx, precopy.Config{To: to, Mode: mode, Logger: testLogger(t, "source")}, guest)
}

// sourceProcess runs `dmig migrate` as a process (so it can be killed).
func sourceProcess(t *testing.T, g *srcGuest, to string, mode precopy.Mode, destStats string) *exec.Cmd {
	t.Helper()
	args := []string{"migrate", "--to", to, "--mode", string(mode), "--pid", fmt.Sprint(g.pid()), "--ram", g.ram}
	for _, w := range destCommand(destStats) {
		args = append(args, "--dest-cmd="+w)
	}
	cmd := exec.Command(dmigBin, args...)
	cmd.Stderr = prefixWriter(t, "dmig-migrate: ")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

// killableServe is `dmig serve --once` run as a process (so it can be killed).
type killableServe struct {
	*exec.Cmd
	addr string
	dir  string // its --dir
}

func destProcess(t *testing.T, extra ...string) *killableServe {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	dir, err := os.MkdirTemp("/dev/shm", "dmig-e2e-serve-")
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"serve", "--listen", addr, "--dir", dir, "--once"}, insecureFlag()...)
	args = append(args, extra...)
	cmd := exec.Command(dmigBin, args...)
	cmd.Stderr = prefixWriter(t, "dmig-serve: ")
	// Its sessions' keepers share its stderr and outlive it: Wait must not
	// wait for them.
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		killGuestsUnder(dir)
		os.RemoveAll(dir)
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dmig serve not listening on %s", addr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return &killableServe{Cmd: cmd, addr: addr, dir: dir}
}

// insecureFlag is what `dmig serve` needs to run without TLS certificates
// (tests on one host): --insecure.
func insecureFlag() []string {
	if help, _ := exec.Command(dmigBin, "serve", "--help").CombinedOutput(); strings.Contains(string(help), "--insecure") {
		return []string{"--insecure"}
	}
	return nil
}

// killGuestsUnder kills processes whose DMIG_RAM names a file under dir:
// guests a killed `dmig serve` left behind.
func killGuestsUnder(dir string) {
	for _, pid := range guestsUnder(dir) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// guestsUnder lists the processes whose DMIG_RAM names a file under dir:
// the guests a `dmig serve --dir dir` started.
func guestsUnder(dir string) []int {
	return procsWith(proc.EnvRAM+"="+dir, false)
}

// procsWith lists the processes (other than this one) whose environment,
// or also command line if cmdline, contains s.
func procsWith(s string, cmdline bool) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		env, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		var args []byte
		if cmdline {
			args, _ = os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		}
		if strings.Contains(string(env), s) || strings.Contains(string(args), s) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func waitForwarded(t *testing.T, p *proxy, n int64) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for p.forwarded() < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d bytes through the link after 60s", p.forwarded())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkSourceRuns asserts the source guest runs its workload again and its
// RAM verifies (checked while it is briefly stopped).
func checkSourceRuns(t *testing.T, g *srcGuest) {
	t.Helper()
	if !g.progressing(t) {
		t.Fatalf("source guest is not running after the failure (state %s)", procState(g.pid()))
	}
	verifyStopped(t, g, true)
}

// checkSourcePaused asserts the source guest is still paused and its RAM
// verifies.
func checkSourcePaused(t *testing.T, g *srcGuest) {
	t.Helper()
	time.Sleep(200 * time.Millisecond)
	if st := procState(g.pid()); st != "T" {
		t.Fatalf("source guest state %q, want paused (T)", st)
	}
	verifyStopped(t, g, false)
}

func verifyStopped(t *testing.T, g *srcGuest, cont bool) {
	t.Helper()
	if err := stopAndVerify(g.pid(), []string{g.ram}, cont); err != nil {
		t.Fatalf("source RAM after the failure: %v", err)
	}
}

// stopAndVerify stops the test guest pid (SIGSTOP), verifies its RAM files
// ram, and continues it if cont. A *testguest.MismatchError names the
// wrong pages.
func stopAndVerify(pid int, ram []string, cont bool) error {
	syscall.Kill(pid, syscall.SIGSTOP)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := testguest.WaitStopped(ctx, pid); err != nil {
		return err
	}
	r, err := testguest.Verify(ram...)
	if err != nil {
		return err
	}
	if cont {
		syscall.Kill(pid, syscall.SIGCONT)
	}
	if !r.OK() {
		return &testguest.MismatchError{Report: r}
	}
	return nil
}

func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "gone"
	}
	s := string(b)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+1:])[0]
}

// checkDestGone asserts an in-process destination failed and left no guest
// and no RAM file behind.
func checkDestGone(t *testing.T, d *dest, wantErr string) {
	t.Helper()
	select {
	case err := <-d.result:
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("destination error %v, want one containing %q", err, wantErr)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("destination still busy 60s after the failure")
	}
	select {
	case tt := <-d.targets:
		d.targets <- tt
		select {
		case <-tt.Exited():
		case <-time.After(10 * time.Second):
			t.Fatalf("destination guest pid %d still alive", tt.Pid())
		}
		for _, p := range tt.Paths() {
			t.Errorf("destination RAM file %s left behind", p)
		}
	default:
	}
}

func TestFaultsBeforeGo(t *testing.T) {
	t.Run("precopy/cut-link", func(t *testing.T) {
		g := faultGuest(t)
		d := startDest(t, destOpts{})
		p := startProxy(t, d.addr, 40<<20)
		go func() { waitForwarded(t, p, 20<<20); p.cut() }()
		rep, err := runSource(t, g, p.addr(), precopy.ModeHybrid, filepath.Join(t.TempDir(), "dst.stats"), nil)
		if err == nil || rep.Outcome != report.Aborted {
			t.Fatalf("migration over a cut link: outcome %s, err %v", rep.Outcome, err)
		}
		checkSourceRuns(t, g)
		checkDestGone(t, d, "")
	})
	t.Run("precopy/kill-destination", func(t *testing.T) {
		g := faultGuest(t)
		serve := destProcess(t)
		addr := serve.addr
		p := startProxy(t, addr, 40<<20)
		go func() { waitForwarded(t, p, 20<<20); serve.Process.Kill() }()
		rep, err := runSource(t, g, p.addr(), precopy.ModeHybrid, filepath.Join(t.TempDir(), "dst.stats"), nil)
		if err == nil || rep.Outcome != report.Aborted {
			t.Fatalf("migration to a killed destination: outcome %s, err %v", rep.Outcome, err)
		}
		checkSourceRuns(t, g)
	})
	t.Run("precopy/kill-source", func(t *testing.T) {
		g := faultGuest(t)
		d := startDest(t, destOpts{})
		p := startProxy(t, d.addr, 40<<20)
		src := sourceProcess(t, g, p.addr(), precopy.ModeHybrid, filepath.Join(t.TempDir(), "dst.stats"))
		waitForwarded(t, p, 20<<20)
		src.Process.Kill()
		src.Wait()
		checkSourceRuns(t, g)
		checkDestGone(t, d, "")
	})
	t.Run("switchover/cut-link", func(t *testing.T) {
		g := faultGuest(t)
		d := startDest(t, destOpts{})
		p := startProxy(t, d.addr, 0)
		rep, err := runSource(t, g, p.addr(), precopy.ModePrecopy, filepath.Join(t.TempDir(), "dst.stats"), p.cut)
		if err == nil || rep.Outcome != report.Aborted {
			t.Fatalf("link cut at switchover: outcome %s, err %v", rep.Outcome, err)
		}
		checkSourceRuns(t, g)
		checkDestGone(t, d, "")
	})
	t.Run("switchover/kill-destination", func(t *testing.T) {
		g := faultGuest(t)
		serve := destProcess(t)
		addr := serve.addr
		rep, err := runSource(t, g, addr, precopy.ModePrecopy, filepath.Join(t.TempDir(), "dst.stats"), func() {
			serve.Process.Kill()
			serve.Wait()
		})
		if err == nil || rep.Outcome != report.Aborted {
			t.Fatalf("destination killed at switchover: outcome %s, err %v", rep.Outcome, err)
		}
		checkSourceRuns(t, g)
	})
}

// TestFaultAfterGo: the link drops after Go, before the destination guest
// runs. The source cannot tell whether it runs, so it keeps its guest
// paused; the destination, losing the source, kills its guest.
func TestFaultAfterGo(t *testing.T) {
	g := faultGuest(t)
	d := startDest(t, destOpts{})
	p := startProxy(t, d.addr, 0)
	d.beforeResume = func() { p.cut(); time.Sleep(100 * time.Millisecond) }
	rep, err := runSource(t, g, p.addr(), precopy.ModePostcopy, filepath.Join(t.TempDir(), "dst.stats"), nil)
	if err == nil || rep.Outcome != report.FailedAfterResume {
		t.Fatalf("link cut after go: outcome %s, err %v", rep.Outcome, err)
	}
	checkSourcePaused(t, g)
	checkDestGone(t, d, "killed rather than run on pages dmig did not place")
}

// TestFaultsAfterResume: post-copy in progress (the destination guest runs
// with pages missing) when the link, the source or the destination dies.
func TestFaultsAfterResume(t *testing.T) {
	t.Run("cut-link", func(t *testing.T) {
		g := faultGuest(t)
		d := startDest(t, destOpts{})
		p := startProxy(t, d.addr, 20<<20)
		done := make(chan struct{})
		go func() {
			defer close(done)
			tt := <-d.targets
			d.targets <- tt
			<-tt.resumed
			time.Sleep(300 * time.Millisecond)
			p.cut()
		}()
		rep, err := runSource(t, g, p.addr(), precopy.ModePostcopy, filepath.Join(t.TempDir(), "dst.stats"), nil)
		<-done
		if err == nil || rep.Outcome != report.FailedAfterResume {
			t.Fatalf("link cut in post-copy: outcome %s, err %v", rep.Outcome, err)
		}
		checkSourcePaused(t, g)
		checkDestGone(t, d, "killed rather than run on pages dmig did not place")
	})
	t.Run("kill-source", func(t *testing.T) {
		g := faultGuest(t)
		d := startDest(t, destOpts{})
		p := startProxy(t, d.addr, 20<<20)
		src := sourceProcess(t, g, p.addr(), precopy.ModePostcopy, filepath.Join(t.TempDir(), "dst.stats"))
		d.resumedTarget(t)
		time.Sleep(300 * time.Millisecond)
		src.Process.Kill()
		src.Wait()
		checkDestGone(t, d, "killed rather than run on pages dmig did not place")
		checkSourcePaused(t, g)
	})
	t.Run("kill-destination", func(t *testing.T) {
		g := faultGuest(t)
		serve := destProcess(t, "--recover-timeout", "2s")
		addr := serve.addr
		p := startProxy(t, addr, 20<<20)
		stats := filepath.Join(t.TempDir(), "dst.stats")
		var guestPid atomic.Int64
		go func() {
			deadline := time.Now().Add(60 * time.Second)
			for time.Now().Before(deadline) {
				if st, err := testguest.ReadStats(stats); err == nil && st.PID != 0 {
					guestPid.Store(int64(st.PID))
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			time.Sleep(300 * time.Millisecond)
			serve.Process.Kill()
		}()
		rep, err := runSource(t, g, p.addr(), precopy.ModePostcopy, stats, nil)
		if err == nil || rep.Outcome != report.FailedAfterResume {
			t.Fatalf("destination killed in post-copy: outcome %s, err %v", rep.Outcome, err)
		}
		checkSourcePaused(t, g)
		// The guest keeps its own copy of the uffd: its faulting threads
		// block instead of reading zero pages, until the keeper, seeing no
		// serve take the session over within the recover timeout, kills it
		// and removes its directory.
		deadline := time.Now().Add(30 * time.Second)
		for {
			logs, _ := filepath.Glob(filepath.Join(serve.dir, "*", "*.log"))
			for _, l := range logs {
				if b, _ := os.ReadFile(l); strings.Contains(string(b), testguest.ErrMismatch.Error()) {
					t.Fatalf("destination guest read a page dmig did not place:\n%s", b)
				}
			}
			dirs, _ := filepath.Glob(filepath.Join(serve.dir, "*"))
			pid := int(guestPid.Load())
			if pid != 0 && procState(pid) == "gone" && len(dirs) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("30s after serve died: guest pid %d state %s, session dirs %v", pid, procState(pid), dirs)
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
}
