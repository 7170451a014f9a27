package proc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNotStopped: the guest is not stopped (dmig resume refuses it).
var ErrNotStopped = errors.New("guest is not stopped")

// ErrGone: the process a Handle holds has exited.
var ErrGone = errors.New("guest process is gone")

// gone marks an exited process's errno as ErrGone.
func gone(err error) error {
	if errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("%w: %w", ErrGone, err)
	}
	return err
}

// Handle is a process guest held by a pidfd, for whoever resumes it from
// outside a migration (the guardian, dmig resume): a signal through it
// reaches that process, never another that reused its pid. Close it.
type Handle struct {
	pid int
	fd  int
}

// Open holds the process pid.
func Open(pid int) (*Handle, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("guest pid %d: %w", pid, err)
	}
	return &Handle{pid: pid, fd: fd}, nil
}

// Pid is the guest's pid.
func (h *Handle) Pid() int { return h.pid }

// Close releases the pidfd.
func (h *Handle) Close() error { return unix.Close(h.fd) }

// alive fails once the held process has exited (its pid may be another's).
func (h *Handle) alive() error {
	if err := unix.PidfdSendSignal(h.fd, 0, nil, 0); err != nil {
		return fmt.Errorf("guest pid %d: %w", h.pid, gone(err))
	}
	return nil
}

// Stopped reports whether every thread of the guest is stopped, as Pause
// leaves it.
func (h *Handle) Stopped() (bool, error) {
	if err := h.alive(); err != nil {
		return false, err
	}
	return allStopped(h.pid)
}

// Running reports whether the guest runs (is not all stopped), for the
// guardian's check before a pause.
func (h *Handle) Running(context.Context) (bool, error) {
	st, err := h.Stopped()
	return !st, err
}

// Continue sends SIGCONT (every thread of the process resumes) and waits,
// at most until ctx ends, until no thread is stopped.
func (h *Handle) Continue(ctx context.Context) error {
	if err := unix.PidfdSendSignal(h.fd, unix.SIGCONT, nil, 0); err != nil {
		return fmt.Errorf("resume guest pid %d: %w", h.pid, gone(err))
	}
	for {
		n, err := stoppedThreads(h.pid)
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("resume guest pid %d: %d threads still stopped: %w", h.pid, n, ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
}

// stoppedThreads counts the threads of pid in a stop (T).
func stoppedThreads(pid int) (int, error) {
	tasks, err := readTasks(pid)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, t := range tasks {
		if st, err := taskState(pid, t); err == nil && st == "T" {
			n++
		}
	}
	return n, nil
}
