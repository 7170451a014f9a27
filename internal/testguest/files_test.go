package testguest

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestRAMInSeveralFiles splits a database-mode guest over three RAM files,
// as a VM's RAM may be several blocks, and migrates it as dmig would: the
// incoming guest gets DMIG_RAM=a:b:c.
func TestRAMInSeveralFiles(t *testing.T) {
	dir := shmDir(t)
	var src, dst []string
	for _, n := range []string{"a", "b", "c"} {
		src = append(src, filepath.Join(dir, "src-"+n))
		dst = append(dst, filepath.Join(dir, "dst-"+n))
	}
	p := smallDBParams(dir)
	p.Size = 96 << 20
	stats := filepath.Join(dir, "stats")
	c := startChild(t, Config{RAM: src, Params: p, Run: RunOptions{StatsFile: stats}})
	waitStats(t, stats, 20*time.Second, func(s Stats) bool { return s.Counter > 20000 && s.DBFlushes > 100 })
	c.stop(t)
	for i := range src {
		copyFile(t, src[i], dst[i])
	}
	c.signal(t, syscall.SIGKILL)
	c.wait(t, 10*time.Second)
	at := mustVerify(t, dst...)

	// Every file holds some of the guest's state.
	for _, f := range dst {
		fd, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		_, err = unix.Seek(int(fd.Fd()), 0, unix.SEEK_DATA)
		fd.Close()
		if err != nil {
			t.Fatalf("no data in RAM file %s: %v", f, err)
		}
	}
	// The files in another order are not this guest.
	if r, err := Verify(dst[1], dst[0], dst[2]); err != nil || r.OK() {
		t.Fatalf("verify with files swapped: %v, %v", r.Mismatches, err)
	}
	if r, err := Verify(dst[0], dst[1]); err != nil || r.OK() || !strings.Contains(r.Mismatches[0].Got, "RAM has") {
		t.Fatalf("verify with a file missing: %v, %v", r.Mismatches, err)
	}

	want, err := HashRAM(dst...)
	if err != nil {
		t.Fatal(err)
	}
	dstStats := filepath.Join(dir, "dst-stats")
	in := startChild(t, Config{Run: RunOptions{StatsFile: dstStats}}, EnvIncoming+"=1", EnvRAM+"="+strings.Join(dst, ":"))
	waitSelfStop(t, in)
	for _, f := range dst {
		if !mapsFile(t, in.pid(), f) {
			t.Fatalf("the incoming guest does not map %s", f)
		}
	}
	in.signal(t, syscall.SIGCONT)
	s := waitStats(t, dstStats, 20*time.Second, func(s Stats) bool { return s.Counter > at.Counter+10000 })
	if s.ResumeRAMHash != want {
		t.Fatalf("RAM hash at resume %s, of the files before %s", s.ResumeRAMHash, want)
	}
	in.signal(t, syscall.SIGTERM)
	if code := in.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("incoming guest exited %d: %s", code, in.stderr)
	}
	mustVerify(t, dst...)
}
