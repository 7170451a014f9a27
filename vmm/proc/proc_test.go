package proc

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dmig/dmig/wire"
)

// Exited fires when a process exits, without reaping it (the zombie stays
// until the caller waits), and not before.
func TestExited(t *testing.T) {
	cmd := exec.Command("sleep", "0.3")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ch, err := Exited(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
		t.Fatal("Exited fired while the process runs")
	case <-time.After(100 * time.Millisecond):
	}
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("Exited did not fire after the process exited")
	}
	if st, err := taskState(cmd.Process.Pid, strconv.Itoa(cmd.Process.Pid)); err == nil && st != "Z" {
		t.Errorf("process state %q after Exited, want a zombie (not reaped)", st)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("reap after Exited: %v", err)
	}
	if _, err := Exited(1 << 22); err == nil {
		t.Error("Exited of a pid that cannot exist succeeded")
	}
}

// Pause returns only once every thread is stopped; Resume continues it.
func TestSourcePauseResume(t *testing.T) {
	ram := filepath.Join(shmDir(t), "ram0")
	if err := os.WriteFile(ram, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	s, err := NewSource(cmd.Process.Pid, []string{ram}, []string{"guest"})
	if err != nil {
		t.Fatal(err)
	}
	if b := s.RAM(); len(b) != 1 || b[0].Name != "ram0" || b[0].Size != 1<<20 {
		t.Errorf("blocks %+v", b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if all, err := allStopped(cmd.Process.Pid); err != nil || !all {
		t.Fatalf("after Pause: all stopped %v, %v", all, err)
	}
	if err := s.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if all, _ := allStopped(cmd.Process.Pid); !all {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("still stopped after Resume")
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := NewSource(cmd.Process.Pid, []string{ram, ram}, nil); err == nil || !strings.Contains(err.Error(), "names must differ") {
		t.Errorf("two RAM files of one name: %v", err)
	}
}

// Create refuses what would fail mid-migration: a directory not on shared
// memory, or one without room; it never overwrites an existing file.
func TestTargetCreateRefuses(t *testing.T) {
	blocks := []wire.Block{{Name: "ram0", Size: 1 << 20}}
	if tmp := t.TempDir(); !isShmem(tmp) {
		disk, err := NewTarget(tmp, []string{"guest"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := disk.Create(context.Background(), blocks); !errors.Is(err, ErrNotShmem) {
			t.Errorf("RAM on a disk filesystem: %v, want ErrNotShmem", err)
		}
	}
	dir := shmDir(t)
	tg, err := NewTarget(dir, []string{"guest"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tg.Create(context.Background(), []wire.Block{{Name: "big", Size: 1 << 50}}); !errors.Is(err, ErrNoSpace) {
		t.Errorf("1 PiB of RAM: %v, want ErrNoSpace", err)
	}
	paths, err := tg.Create(context.Background(), blocks)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(paths[0]); err != nil || st.Size() != 1<<20 {
		t.Fatalf("created %v: %v", st, err)
	}
	again, _ := NewTarget(dir, []string{"guest"})
	if _, err := again.Create(context.Background(), blocks); err == nil {
		t.Error("Create over an existing RAM file succeeded")
	}
	if _, err := tg.Create(context.Background(), []wire.Block{{Name: "../x", Size: 4096}}); err == nil {
		t.Error("a block name with a slash was accepted")
	}
}

func shmDir(t *testing.T) string {
	d, err := os.MkdirTemp("/dev/shm", "dmig-proc-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func isShmem(dir string) bool {
	var fs unix.Statfs_t
	return unix.Statfs(dir, &fs) == nil && (fs.Type == unix.TMPFS_MAGIC || fs.Type == unix.HUGETLBFS_MAGIC)
}
