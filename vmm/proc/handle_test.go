package proc

import (
	"context"
	"errors"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestHandle: a held process is seen stopped and running, Continue waits
// until it runs, and once it has exited (its pid free for reuse) the
// handle says ErrGone instead of signalling whatever has the pid now.
func TestHandle(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	h, err := Open(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if run, err := h.Running(ctx); err != nil || !run {
		t.Fatalf("Running of a running process = %v, %v", run, err)
	}
	if err := unix.Kill(cmd.Process.Pid, unix.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	if err := waitStopped(ctx, cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if st, err := h.Stopped(); err != nil || !st {
		t.Fatalf("Stopped of a stopped process = %v, %v", st, err)
	}
	if err := h.Continue(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := stoppedThreads(cmd.Process.Pid); err != nil || n != 0 {
		t.Fatalf("after Continue: %d threads stopped, %v", n, err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	if err := h.Continue(ctx); !errors.Is(err, ErrGone) {
		t.Fatalf("Continue of an exited process = %v, want ErrGone", err)
	}
	if _, err := h.Stopped(); !errors.Is(err, ErrGone) {
		t.Fatalf("Stopped of an exited process = %v, want ErrGone", err)
	}
}
