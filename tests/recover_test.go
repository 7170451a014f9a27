package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dmig/dmig/internal/testguest"
	"github.com/dmig/dmig/precopy"
)

// TestRecoverLinkCut: the link drops in post-copy and comes back within
// the recover timeout; both sides kept their state, the source reconnects,
// the destination lists what it still lacks, and the migration completes
// with every page right (the guest verifies every page it reads, and all
// of them at resume).
func TestRecoverLinkCut(t *testing.T) {
	for _, at := range []string{"at-resume", "in-postcopy"} {
		t.Run(at, func(t *testing.T) {
			g := faultGuest(t)
			d := startDest(t, destOpts{recoverTimeout: 20 * time.Second})
			p := startProxy(t, d.addr, 20<<20)
			outage := func() {
				p.cut()
				time.Sleep(time.Second)
				p.restore(t)
			}
			if at == "at-resume" {
				d.beforeResume = func() { go outage() }
			} else {
				go func() {
					tt := <-d.targets
					d.targets <- tt
					<-tt.resumed
					time.Sleep(300 * time.Millisecond)
					outage()
				}()
			}
			stats := filepath.Join(t.TempDir(), "dst.stats")
			rep, err := migrateWith(t, g, precopy.Config{To: p.addr(), Mode: precopy.ModePostcopy, RecoverTimeout: 20 * time.Second}, stats)
			if err != nil {
				t.Fatalf("migration over a link cut and restored: %v", err)
			}
			if rep.Recoveries < 1 {
				t.Fatalf("migration completed with %d recoveries: the cut did not happen in post-copy", rep.Recoveries)
			}
			tt := <-d.targets
			d.targets <- tt
			waitGuestHealthy(t, tt, stats)
		})
	}
}

// TestRecoverServeRestart: `dmig serve` is SIGKILLed in post-copy and
// started again on the same --dir (as systemd's Restart= would). The guest
// waits, blocked on its kept uffd; the new serve adopts it, the source
// reconnects, and the migration completes. Once the guest exits its
// session directory goes.
func TestRecoverServeRestart(t *testing.T) {
	g := faultGuest(t)
	serve := destProcess(t, "--recover-timeout", "20s")
	p := startProxy(t, serve.addr, 20<<20)
	stats := filepath.Join(t.TempDir(), "dst.stats")
	restarted := make(chan *exec.Cmd, 1)
	go func() {
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			if st, err := testguest.ReadStats(stats); err == nil && st.PID != 0 {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(300 * time.Millisecond)
		serve.Process.Kill()
		serve.Wait()
		time.Sleep(500 * time.Millisecond)
		args := append([]string{"serve", "--listen", serve.addr, "--dir", serve.dir, "--recover-timeout", "20s"}, insecureFlag()...)
		cmd := exec.Command(dmigBin, args...)
		cmd.Stderr = prefixWriter(t, "dmig-serve-2: ")
		cmd.WaitDelay = time.Second
		if err := cmd.Start(); err != nil {
			t.Errorf("restart serve: %v", err)
		}
		restarted <- cmd
	}()
	rep, err := migrateWith(t, g, precopy.Config{To: p.addr(), Mode: precopy.ModePostcopy, RecoverTimeout: 20 * time.Second}, stats)
	cmd := <-restarted
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if err != nil {
		t.Fatalf("migration across a serve restart: %v", err)
	}
	if rep.Recoveries < 1 {
		t.Fatalf("migration completed with %d recoveries: serve was not killed in post-copy", rep.Recoveries)
	}
	st := waitStatsRunning(t, stats)
	logs, _ := filepath.Glob(filepath.Join(serve.dir, "*", "*.log"))
	for _, l := range logs {
		if b, _ := os.ReadFile(l); strings.Contains(string(b), testguest.ErrMismatch.Error()) {
			t.Fatalf("destination guest read a page dmig did not place:\n%s", b)
		}
	}
	// The guest is on its own; when it exits, its keeper removes its RAM.
	if err := syscall.Kill(st.PID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		dirs, _ := filepath.Glob(filepath.Join(serve.dir, "*"))
		if len(dirs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("session directories left 20s after the guest exited: %v", dirs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitStatsRunning waits until the destination guest, known only by its
// stats file, verified its RAM at resume and keeps writing.
func waitStatsRunning(t *testing.T, stats string) testguest.Stats {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var first testguest.Stats
	for {
		st, err := testguest.ReadStats(stats)
		if err == nil && st.State == "failed" {
			t.Fatalf("destination guest failed: %+v", st)
		}
		if err == nil && st.Resumed && first.Resumed && st.Writes > first.Writes {
			return st
		}
		if err == nil && st.Resumed && !first.Resumed {
			first = st
		}
		if time.Now().After(deadline) {
			t.Fatalf("destination guest not verified and running after 60s (stats %+v, err %v)", st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
