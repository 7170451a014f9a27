package keeper

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// StartTime is pid's start time in clock ticks since boot (field 22 of
// /proc/PID/stat): with the pid, it names one process for good.
func StartTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("start time of pid %d: %w", pid, err)
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("start time of pid %d: malformed stat", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); the start time is field 22.
	if len(f) < 20 {
		return 0, fmt.Errorf("start time of pid %d: malformed stat", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// Process is a handle on one process that stays valid if its pid is
// reused: a pidfd.
type Process struct {
	fd  int
	pid int
}

// Open takes a handle on pid if it is still the process that started at
// start (0: any). A process that is gone wraps os.ErrProcessDone.
func Open(pid int, start uint64) (*Process, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil, fmt.Errorf("pid %d: %w", pid, os.ErrProcessDone)
	}
	if err != nil {
		return nil, fmt.Errorf("pidfd of pid %d: %w", pid, err)
	}
	p := &Process{fd: fd, pid: pid}
	if start != 0 {
		// Checked after the pidfd is open: a pid reused before then reads
		// another start time, one reused after cannot reach this pidfd.
		st, err := StartTime(pid)
		if err != nil || st != start {
			p.Close()
			return nil, fmt.Errorf("pid %d is no longer the guest that started at tick %d: %w", pid, start, os.ErrProcessDone)
		}
	}
	return p, nil
}

// Pid is the process's pid.
func (p *Process) Pid() int { return p.pid }

// Exited waits up to d for the process to exit and reports whether it did.
func (p *Process) Exited(d time.Duration) bool {
	fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}
	deadline := time.Now().Add(d)
	for {
		ms := int(time.Until(deadline).Milliseconds())
		if ms < 0 {
			ms = 0
		}
		n, err := unix.Poll(fds, ms)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return err != nil || n > 0
	}
}

// Kill sends SIGKILL and waits up to 5 s for the process to exit.
func (p *Process) Kill() error {
	if err := unix.PidfdSendSignal(p.fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill pid %d: %w", p.pid, err)
	}
	if !p.Exited(5 * time.Second) {
		return fmt.Errorf("pid %d still alive 5s after SIGKILL", p.pid)
	}
	return nil
}

// Continue sends SIGCONT.
func (p *Process) Continue() error {
	if err := unix.PidfdSendSignal(p.fd, unix.SIGCONT, nil, 0); err != nil {
		return fmt.Errorf("continue pid %d: %w", p.pid, err)
	}
	return nil
}

// Close releases the handle.
func (p *Process) Close() error { return unix.Close(p.fd) }

// Watch returns a channel closed when pid exits (or cannot be watched any
// more), through a pidfd: a reused pid never looks alive.
func Watch(pid int) (<-chan struct{}, error) {
	p, err := Open(pid, 0)
	if err != nil {
		return nil, err
	}
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		defer p.Close()
		for !p.Exited(time.Hour) { // readable (exited) or the pidfd failed: gone
		}
	}()
	return ch, nil
}
