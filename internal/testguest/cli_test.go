package testguest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// buildDmig builds the dmig binary the engine's tests will run the guest
// with, so the flags Command writes are checked against the real CLI.
func buildDmig(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("find the module root: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "dmig")
	build := exec.Command("go", "build", "-o", bin, "./cmd/dmig")
	build.Dir = filepath.Dir(strings.TrimSpace(string(out)))
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build dmig: %v\n%s", err, out)
	}
	return bin
}

func exitStatus(t *testing.T, err error) int {
	t.Helper()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0
}

func TestDmigTestguestCommands(t *testing.T) {
	bin := buildDmig(t)
	dir := shmDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ram, stats := filepath.Join(dir, "ram"), filepath.Join(dir, "stats")
	p := smallDBParams(dir)
	p.DB.DiskID = "disk7"
	p.DB.Fill = 0.5
	cmd := Command(ctx, bin, Config{RAM: []string{ram}, Params: p, Run: RunOptions{Duration: 1500 * time.Millisecond, StatsFile: stats}})
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", cmd.Args, err, out)
	}
	s, err := ReadStats(stats)
	if err != nil {
		t.Fatal(err)
	}
	if s.State != "done" || s.Counter == 0 || s.DBFlushes == 0 {
		t.Fatalf("stats after the run: %+v", s)
	}
	g := readRAM(t, ram)
	if got := g.Params(); got != p {
		t.Fatalf("params in RAM %+v, want %+v", got, p)
	}

	out, err := exec.CommandContext(ctx, bin, "testguest", "verify", "--ram", ram).CombinedOutput()
	if code := exitStatus(t, err); code != 0 || !strings.Contains(string(out), "consistent") {
		t.Fatalf("verify exited %d:\n%s", code, out)
	}

	// Corrupt one written data page of a copy: verify exits 3 naming it.
	bad := filepath.Join(dir, "bad")
	b := readFile(t, ram)
	var n int64 = -1
	for i := range g.geo.dataPages {
		if g.ver(i).Load() > 0 {
			n = g.geo.dataStart + i
			break
		}
	}
	b[n*PageSize+4000] ^= 4
	writeFile(t, bad, b)
	out, err = exec.CommandContext(ctx, bin, "testguest", "verify", "--ram", bad).CombinedOutput()
	if code := exitStatus(t, err); code != ExitMismatch || !strings.Contains(string(out), fmt.Sprintf("data page %d:", n)) {
		t.Fatalf("verify of a corrupt copy exited %d, want %d naming page %d:\n%s", code, ExitMismatch, n, out)
	}

	out, err = exec.CommandContext(ctx, bin, "testguest", "hash", "--ram", ram).Output()
	if err != nil {
		t.Fatal(err)
	}
	srcHash := strings.TrimSpace(string(out))
	if want, _ := HashRAM(ram); srcHash != want {
		t.Fatalf("dmig testguest hash printed %q, want %s", srcHash, want)
	}

	// The destination's command continues the same guest.
	dstStats := filepath.Join(dir, "dst-stats")
	in := IncomingCommand(ctx, bin, []string{ram}, RunOptions{Duration: time.Second, StatsFile: dstStats})
	var stderr syncBuffer
	in.Stderr = &stderr
	if err := in.Start(); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	defer wcancel()
	if err := WaitStopped(wctx, in.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if err := in.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if code := exitStatus(t, in.Wait()); code != 0 {
		t.Fatalf("incoming guest exited %d:\n%s", code, stderr.String())
	}
	d, err := ReadStats(dstStats)
	if err != nil {
		t.Fatal(err)
	}
	if !d.Resumed || d.Counter <= s.Counter || d.VerifiedPages != p.Size/PageSize || d.ResumeRAMHash != srcHash {
		t.Fatalf("incoming stats %+v after source stats %+v (RAM digest %s)", d, s, srcHash)
	}

	// Sizes take units.
	small := filepath.Join(dir, "small")
	out, err = exec.CommandContext(ctx, bin, "testguest", "run", "--ram", small, "--size", "8MiB", "--duration", "100ms").CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if fi, err := os.Stat(small); err != nil || fi.Size() != 8<<20 {
		t.Fatalf("RAM file of --size 8MiB: %v, %v", fi, err)
	}
}
