package testguest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestStoppedAtRandomMomentsVerifies stops a busy guest (data writes and
// buffer-pool loads, modifications and flushes) at random moments, copies
// its RAM while it is stopped, as dmig's switchover does, and verifies each
// copy.
func TestStoppedAtRandomMomentsVerifies(t *testing.T) {
	dir := shmDir(t)
	ram := filepath.Join(dir, "ram")
	p := smallDBParams(dir)
	p.WriteRate = 200000
	c := startChild(t, Config{RAM: []string{ram}, Params: p, Run: RunOptions{StatsFile: filepath.Join(dir, "stats")}})
	waitStats(t, filepath.Join(dir, "stats"), 20*time.Second, func(s Stats) bool { return s.Counter > 0 })

	const rounds = 60
	var last uint64
	var midOp int
	for i := range rounds {
		time.Sleep(time.Duration(rand.IntN(15000)) * time.Microsecond)
		c.stop(t)
		snap := filepath.Join(dir, "snap")
		copyFile(t, ram, snap)
		r := mustVerify(t, snap)
		c.signal(t, syscall.SIGCONT)
		if r.Counter < last {
			t.Fatalf("round %d: counter went back from %d to %d", i, last, r.Counter)
		}
		last = r.Counter
		if len(r.Interrupted) > 0 {
			midOp++
		}
	}
	t.Logf("%d of %d stops interrupted an operation; counter %d", midOp, rounds, last)
	waitStats(t, filepath.Join(dir, "stats"), 20*time.Second, func(s Stats) bool { return s.Counter > last })
	c.signal(t, syscall.SIGTERM)
	if code := c.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("guest exited %d: %s", code, c.stderr)
	}
	if r := mustVerify(t, ram); r.Counter <= last {
		t.Fatalf("counter %d after the run, %d at the last stop", r.Counter, last)
	}
}

func TestIncomingTouchesNoPageBeforeItStops(t *testing.T) {
	dir := shmDir(t)
	ram := filepath.Join(dir, "ram")
	f, err := os.Create(ram)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(64 << 20); err != nil {
		t.Fatal(err)
	}
	c := startChild(t, Config{}, EnvIncoming+"=1", EnvRAM+"="+ram)
	waitSelfStop(t, c)
	if !mapsFile(t, c.pid(), ram) {
		t.Fatal("the stopped incoming guest has not mapped its RAM file")
	}
	if _, err := unix.Seek(int(f.Fd()), 0, unix.SEEK_DATA); !errors.Is(err, unix.ENXIO) {
		t.Fatalf("SEEK_DATA on the RAM file of a stopped incoming guest: %v, want ENXIO (no data)", err)
	}
	f.Close()
	c.signal(t, syscall.SIGCONT)
	if code := c.wait(t, 20*time.Second); code != ExitMismatch {
		t.Fatalf("incoming guest on empty RAM exited %d, want %d; stderr:\n%s", code, ExitMismatch, c.stderr)
	}
	if !strings.Contains(c.stderr.String(), "header page 0") {
		t.Fatalf("stderr does not name page 0:\n%s", c.stderr)
	}
}

// migrated starts a database-mode guest, stops it after it has worked a
// while and returns a copy of its RAM, as a destination would hold after
// a pre-copy migration. The source is killed while stopped: the copy now
// owns the data file.
func migrated(t *testing.T) (dir, dst string, at Report) {
	t.Helper()
	dir = shmDir(t)
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	stats := filepath.Join(dir, "stats")
	c := startChild(t, Config{RAM: []string{src}, Params: smallDBParams(dir), Run: RunOptions{StatsFile: stats}})
	waitStats(t, stats, 20*time.Second, func(s Stats) bool { return s.Counter > 20000 && s.DBFlushes > 100 })
	c.stop(t)
	copyFile(t, src, dst)
	c.signal(t, syscall.SIGKILL)
	c.wait(t, 10*time.Second)
	return dir, dst, mustVerify(t, dst)
}

// waitSelfStop waits for an incoming guest to stop itself.
func waitSelfStop(t *testing.T, c *child) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		stopped, err := isStopped(c.pid())
		if err != nil {
			t.Fatalf("%v; stderr:\n%s", err, c.stderr)
		}
		if stopped {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("incoming guest did not stop itself")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestIncomingVerifiesAndContinues(t *testing.T) {
	dir, dst, at := migrated(t)
	want, err := HashRAM(dst)
	if err != nil {
		t.Fatal(err)
	}
	stats := filepath.Join(dir, "dst-stats")
	c := startChild(t, Config{Run: RunOptions{StatsFile: stats}}, EnvIncoming+"=1", EnvRAM+"="+dst)
	waitSelfStop(t, c)
	if _, err := os.Stat(stats); err == nil {
		t.Fatal("the guest wrote stats before it was continued")
	}
	c.signal(t, syscall.SIGCONT)
	s := waitStats(t, stats, 20*time.Second, func(s Stats) bool { return s.Counter > at.Counter+10000 && s.DBFlushes > 10 })
	if !s.Resumed || s.VerifiedPages != at.Pages || s.ResumeRAMHash != want {
		t.Fatalf("stats %+v: want resumed with %d pages verified, RAM hash %s", s, at.Pages, want)
	}
	c.signal(t, syscall.SIGTERM)
	if code := c.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("guest exited %d: %s", code, c.stderr)
	}
	after := mustVerify(t, dst)
	if after.Counter <= at.Counter || after.Modifies <= at.Modifies {
		t.Fatalf("counters did not continue: writes %d→%d, modifications %d→%d", at.Counter, after.Counter, at.Modifies, after.Modifies)
	}
}

func TestIncomingWithACorruptPageExits3NamingIt(t *testing.T) {
	_, dst, _ := migrated(t)
	g := readRAM(t, dst)
	var n int64 = -1
	for i := range g.geo.dataPages {
		if g.ver(i).Load() > 0 {
			n = g.geo.dataStart + i
			break
		}
	}
	f, err := os.OpenFile(dst, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := []byte{0}
	f.ReadAt(b, n*PageSize+1000)
	b[0] ^= 0x80
	if _, err := f.WriteAt(b, n*PageSize+1000); err != nil {
		t.Fatal(err)
	}
	f.Close()

	c := startChild(t, Config{}, EnvIncoming+"=1", EnvRAM+"="+dst)
	waitSelfStop(t, c)
	c.signal(t, syscall.SIGCONT)
	if code := c.wait(t, 20*time.Second); code != ExitMismatch {
		t.Fatalf("guest exited %d, want %d; stderr:\n%s", code, ExitMismatch, c.stderr)
	}
	if want := fmt.Sprintf("data page %d: want version", n); !strings.Contains(c.stderr.String(), want) {
		t.Fatalf("stderr does not contain %q:\n%s", want, c.stderr)
	}
}

func mapsFile(t *testing.T, pid int, path string) bool {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(b), path)
}
