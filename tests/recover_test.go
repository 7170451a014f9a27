package tests

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dmig/dmig/dbrestore"
	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/internal/testguest"
	"github.com/dmig/dmig/precopy"
	"github.com/dmig/dmig/wire"
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
				p.restore()
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
	st := waitDestRunning(t, stats)
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

// TestRecoverNetnsLinkDown: source and destination in network namespaces
// of their own; the veth between them goes down in post-copy for longer
// than the link timeout (no reset: the connections just stop answering)
// and comes back. Both sides notice, the source reconnects, and the
// migration completes with the guest's every page verified.
func TestRecoverNetnsLinkDown(t *testing.T) {
	l := newLink(t, "")
	g := faultGuest(t)
	dir, err := os.MkdirTemp("/dev/shm", "dmig-e2e-netns-")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.dstIP + ":7071"
	serve := l.in(l.dst, dmigBin, append([]string{"serve", "--listen", addr, "--dir", dir, "--once",
		"--recover-timeout", "30s", "--link-timeout", "1s"}, insecureFlag()...)...)
	serve.Stderr = prefixWriter(t, "dmig-serve: ")
	serve.WaitDelay = time.Second
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		serve.Process.Kill()
		serve.Wait()
		killGuestsUnder(dir)
		os.RemoveAll(dir)
	})
	stats := filepath.Join(t.TempDir(), "dst.stats")
	repPath := filepath.Join(t.TempDir(), "report.json")
	args := []string{"migrate", "--to", addr, "--mode", "postcopy", "--pid", strconv.Itoa(g.pid()), "--ram", g.ram,
		"--recover-timeout", "30s", "--link-timeout", "1s", "--connect-timeout", "10s", "--report", repPath}
	for _, w := range destCommand(stats) {
		args = append(args, "--dest-cmd="+w)
	}
	// serve may still be starting: migrate retries nothing before Go.
	time.Sleep(500 * time.Millisecond)
	mig := l.in(l.src, dmigBin, args...)
	mig.Stderr = prefixWriter(t, "dmig-migrate: ")
	if err := mig.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mig.Process.Kill(); mig.Wait() })
	go func() {
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			if st, err := testguest.ReadStats(stats); err == nil && st.PID != 0 {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(200 * time.Millisecond)
		vd := "vd" + l.dst[len("dmig-d"):]
		exec.Command("ip", "-n", l.dst, "link", "set", vd, "down").Run()
		time.Sleep(3 * time.Second)
		exec.Command("ip", "-n", l.dst, "link", "set", vd, "up").Run()
	}()
	if err := mig.Wait(); err != nil {
		t.Fatalf("migration across a link down for 3s: %v", err)
	}
	var rep report.Report
	readJSON(t, repPath, &rep)
	if rep.Outcome != report.Completed || rep.Recoveries < 1 {
		t.Fatalf("outcome %s after %d recoveries; want completed after at least one", rep.Outcome, rep.Recoveries)
	}
	waitDestRunning(t, stats)
}

// TestRecoverHybridRefs: post-copy with storage references pushed and
// queued for the restore when the link drops; after the reconnection the
// destination lists every page not yet placed (queued references too), the
// source sends them as data, and whichever copy lands first wins. The
// guest's RAM and data file verify.
func TestRecoverHybridRefs(t *testing.T) {
	dir := t.TempDir()
	g := startDBSource(t, dir, dbOpts{size: gib / 4, poolPart: 0.75, readRate: 4000, modifyRate: 500, flushRate: 400})
	l, err := wire.Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := startDBDestOn(t, l, map[string]string{"data": g.dataFile}, func(c *dbrestore.Config) {
		c.RecoverTimeout = 20 * time.Second
		// A slow restore: references are still queued at the cut.
		c.PostcopyRestoreRate = 1 << 20
	})
	p := startProxy(t, d.addr, 20<<20)
	go func() {
		tt := <-d.targets
		d.targets <- tt
		<-tt.resumed
		// At once: the source lets the restore check what it was sent
		// before the pause, so post-copy has little left and may end
		// within a few hundred milliseconds.
		p.cut()
		time.Sleep(time.Second)
		p.restore()
	}()
	stats := filepath.Join(t.TempDir(), "dst.stats")
	rep, err := migrateDBWith(t, g, precopy.Config{To: p.addr(), Mode: precopy.ModeHybrid, LayoutAddr: g.layout, MaxIterations: 1, RecoverTimeout: 20 * time.Second}, stats)
	if err != nil {
		t.Fatalf("migration: %v", err)
	}
	if err := <-d.result; err != nil {
		t.Fatalf("destination: %v", err)
	}
	if rep.Recoveries < 1 || rep.PostcopyPages == 0 {
		t.Fatalf("%d recoveries, %d pages owed at switchover: the cut missed post-copy", rep.Recoveries, rep.PostcopyPages)
	}
	checkDestGuest(t, d, stats)
}
