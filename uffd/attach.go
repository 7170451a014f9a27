package uffd

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Attach creates a userfaultfd bound to the memory of process pid and hands
// it to this process, then performs the API handshake asking for features.
//
// A uffd is bound to the mm of the process that creates it, so Attach makes
// the target create it: it ptrace-seizes the target's main thread, stops
// only that thread (PTRACE_INTERRUPT; other threads keep running), makes it
// execute userfaultfd(O_CLOEXEC|O_NONBLOCK) with its registers borrowed,
// copies the new fd with pidfd_getfd, makes the target close its copy,
// restores registers and detaches. The target's state is left as it was: a
// thread blocked in a system call restarts it (no EINTR), a process stopped
// by SIGSTOP stays stopped, signals that arrived meanwhile are re-sent.
//
// The caller owns the returned FD; the target holds no reference to it, so
// if the caller dies the kernel releases the target's blocked threads onto
// zero pages. Use AttachKept where that must not happen.
func Attach(pid int, features Feature) (*FD, error) {
	return attach(pid, features, false)
}

// AttachKept is Attach, but the target keeps its own copy of the uffd open
// (number FD.TargetFD) until CloseInTarget closes it. A target holding its
// uffd keeps faulting threads blocked, not released onto zero pages, if
// the caller dies; a new process takes over with Reacquire. The caller must
// close the target's copy once no page is missing any more, or the target
// keeps an idle uffd for life (registered on nothing, that costs nothing).
//
// In the same stop the target's parent-death signal is cleared
// (prctl(PR_SET_PDEATHSIG, 0)): a guest started to die with its starter
// until it is attached survives it from then on, blocked rather than
// killed, so that its memory can still be completed.
func AttachKept(pid int, features Feature) (*FD, error) {
	return attach(pid, features, true)
}

func attach(pid int, features Feature, keep bool) (*FD, error) {
	local, remote := -1, -1
	err := inject(pid, func(call syscallFunc) error {
		r, err := call(sysUserfaultfd, unix.O_CLOEXEC|unix.O_NONBLOCK)
		if err != nil {
			return err
		}
		if r < 0 {
			return fmt.Errorf("userfaultfd() in target: %w", translateCreate(unix.Errno(-r)))
		}
		remote = int(r)
		l, getErr := getfd(pid, remote)
		if keep && getErr == nil {
			local = l
			ret, err := call(unix.SYS_PRCTL, unix.PR_SET_PDEATHSIG, 0)
			if err == nil && ret < 0 {
				err = fmt.Errorf("prctl(PR_SET_PDEATHSIG, 0) in target: %w", unix.Errno(-ret))
			}
			if err != nil {
				unix.Close(l)
				local = -1
				_, _ = call(unix.SYS_CLOSE, uint64(remote))
			}
			return err
		}
		// Close the target's copy whatever happened: a target holding the
		// uffd nobody knows of would keep its faults blocked for ever.
		ret, closeErr := call(unix.SYS_CLOSE, uint64(remote))
		if closeErr == nil && ret < 0 {
			closeErr = fmt.Errorf("close(%d) in target: %w", remote, unix.Errno(-ret))
		}
		if closeErr != nil {
			if getErr == nil {
				unix.Close(l)
			}
			return closeErr
		}
		if getErr != nil {
			return getErr
		}
		local, remote = l, -1
		return nil
	})
	if err != nil {
		// The uffd may be ours already when the injection fails after
		// taking it (the target exiting as its registers are restored).
		if local >= 0 {
			unix.Close(local)
		}
		return nil, fmt.Errorf("attach userfaultfd to pid %d: %w", pid, err)
	}
	u := &FD{fd: local, pid: pid, target: remote}
	if err := u.handshake(features); err != nil {
		u.Close()
		if remote >= 0 {
			err = errors.Join(err, CloseInTarget(pid, remote))
		}
		return nil, fmt.Errorf("attach userfaultfd to pid %d: %w", pid, err)
	}
	return u, nil
}

// Reacquire takes a copy of the uffd that process pid holds as fd number
// target (AttachKept), whose API handshake with features was done by the
// process that attached it. No ptrace is involved: the target does not
// notice. Ranges registered before stay registered; fault messages already
// read by a previous holder are gone, but their threads wake when their
// page is placed (UFFDIO_COPY wakes the range).
func Reacquire(pid, target int, features Feature) (*FD, error) {
	local, err := getfd(pid, target)
	if err != nil {
		return nil, fmt.Errorf("reacquire userfaultfd %d of pid %d: %w", target, pid, err)
	}
	if err := isUserfaultfd(local); err != nil {
		unix.Close(local)
		return nil, fmt.Errorf("reacquire userfaultfd %d of pid %d: %w", target, pid, err)
	}
	return &FD{fd: local, pid: pid, target: target, features: features}, nil
}

// CloseInTarget makes process pid close its fd number fd (the copy
// AttachKept left there). A target that is gone has nothing to close.
func CloseInTarget(pid, fd int) error {
	err := inject(pid, func(call syscallFunc) error {
		ret, err := call(unix.SYS_CLOSE, uint64(fd))
		if err == nil && ret < 0 {
			err = fmt.Errorf("close(%d) in target: %w", fd, unix.Errno(-ret))
		}
		return err
	})
	if errors.Is(err, ErrNoProcess) || errors.Is(err, ErrProcessExited) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("close uffd %d in pid %d: %w", fd, pid, err)
	}
	return nil
}

// ClearParentDeathSignal makes process pid run prctl(PR_SET_PDEATHSIG, 0):
// a guest started to die with its parent (before it resumed) outlives it
// from then on.
func ClearParentDeathSignal(pid int) error {
	err := inject(pid, func(call syscallFunc) error {
		ret, err := call(unix.SYS_PRCTL, unix.PR_SET_PDEATHSIG, 0)
		if err == nil && ret < 0 {
			err = fmt.Errorf("prctl(PR_SET_PDEATHSIG, 0) in target: %w", unix.Errno(-ret))
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("clear parent-death signal of pid %d: %w", pid, err)
	}
	return nil
}

// getfd copies fd number target of pid into this process.
func getfd(pid, target int) (int, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return -1, withErrno(ErrNoProcess, unix.ESRCH, "")
		}
		return -1, fmt.Errorf("open pidfd: %w", err)
	}
	defer unix.Close(pidfd)
	local, err := unix.PidfdGetfd(pidfd, target, 0)
	if err != nil {
		return -1, fmt.Errorf("pidfd_getfd(%d): %w", target, err)
	}
	return local, nil
}

// isUserfaultfd checks that fd is a userfaultfd (its /proc link reads
// anon_inode:[userfaultfd]): a recycled fd number must not be taken for one.
func isUserfaultfd(fd int) error {
	link, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return fmt.Errorf("read fd link: %w", err)
	}
	if link != "anon_inode:[userfaultfd]" {
		return fmt.Errorf("fd is %s, not a userfaultfd", link)
	}
	return nil
}

// syscallFunc runs one system call in the tracee and returns its rax.
type syscallFunc func(nr uint64, args ...uint64) (int64, error)

// tracee is a thread seized with ptrace. Every ptrace request must come
// from the OS thread that seized it: callers lock their goroutine to it.
type tracee struct {
	pid     int
	pending []unix.Signal // signals intercepted while stopped, re-sent at detach
}

// inject seizes the main thread of pid, lets body run system calls in it,
// then restores its registers and code and detaches, whatever body did.
func inject(pid int, body func(call syscallFunc) error) error {
	if pid <= 0 {
		return fmt.Errorf("pid %d: %w", pid, ErrNoProcess)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	if err := unix.PtraceSeize(pid); err != nil {
		return translateSeize(pid, err)
	}
	t := &tracee{pid: pid}
	attached := true
	defer func() {
		if attached {
			t.detach()
		}
	}()
	if err := unix.PtraceInterrupt(pid); err != nil {
		return t.gone(fmt.Errorf("interrupt: %w", err))
	}
	if err := t.waitEventStop(); err != nil {
		return err
	}

	var saved unix.PtraceRegs
	if err := unix.PtraceGetRegs(pid, &saved); err != nil {
		return t.gone(fmt.Errorf("get registers: %w", err))
	}
	gadget, restoreText, err := t.syscallGadget(&saved)
	if err != nil {
		return err
	}
	restore := func() error {
		var errs []error
		if restoreText != nil {
			errs = append(errs, restoreText())
		}
		if err := unix.PtraceSetRegs(pid, &saved); err != nil {
			errs = append(errs, t.gone(fmt.Errorf("restore registers: %w", err)))
		}
		return errors.Join(errs...)
	}
	bodyErr := body(func(nr uint64, args ...uint64) (int64, error) {
		return t.syscall(&saved, gadget, nr, args...)
	})
	if err := errors.Join(bodyErr, restore()); err != nil {
		return err
	}
	attached = false
	return t.detach()
}

func translateSeize(pid int, err error) error {
	switch {
	case errors.Is(err, unix.ESRCH):
		return withErrno(ErrNoProcess, unix.ESRCH, "")
	case errors.Is(err, unix.EPERM):
		if exiting(pid) {
			return fmt.Errorf("seize: %w: %w", ErrProcessExited, err)
		}
		if tracer := tracerPid(pid); tracer > 0 {
			return withErrno(ErrBusy, unix.EPERM, fmt.Sprintf("pid %d is already traced by pid %d (another dmig, or a debugger): stop it first", pid, tracer))
		}
		return withErrno(ErrPermission, unix.EPERM, "ptrace refused: run dmig as root or with CAP_SYS_PTRACE (and check kernel.yama.ptrace_scope)")
	}
	return fmt.Errorf("seize: %w", err)
}

// exiting reports whether pid is a zombie or dying (ptrace refuses those
// with EPERM, which must not read as a privilege problem).
func exiting(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) == 0 || f[0] == "Z" || f[0] == "X"
}

// tracerPid reads TracerPid from /proc/PID/status; 0 if untraced or unknown.
func tracerPid(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "TracerPid:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

// ptraceEvent is the PTRACE_EVENT_* of a ptrace stop (0 for a signal-
// delivery stop). WaitStatus.TrapCause hides it unless the signal is
// SIGTRAP, but a seized tracee's group stop reports it with SIGSTOP.
func ptraceEvent(ws unix.WaitStatus) int { return int(uint32(ws)>>16) & 0xff }

// gone turns an ESRCH from a ptrace request into ErrProcessExited: the
// tracee died under us.
func (t *tracee) gone(err error) error {
	if errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("%w: %w", ErrProcessExited, err)
	}
	return err
}

// stopTimeout bounds the wait for a ptrace stop. A stop normally arrives in
// microseconds; one that never does was reported to another waiter.
const stopTimeout = 5 * time.Second

// wait returns the tracee's next ptrace stop. It polls (WNOHANG) rather than
// blocks: if another goroutine of this process waits on the tracee (our own
// child, say, with os/exec's Wait), the kernel may hand it the stop instead,
// and a blocking wait here would hang forever.
func (t *tracee) wait() (unix.WaitStatus, error) {
	var ws unix.WaitStatus
	deadline := time.Now().Add(stopTimeout)
	pause := 5 * time.Microsecond
	for spin := 0; ; spin++ {
		pid, err := unix.Wait4(t.pid, &ws, unix.WALL|unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return ws, t.gone(fmt.Errorf("wait: %w", err))
		}
		if pid == t.pid {
			if ws.Exited() || ws.Signaled() {
				return ws, ErrProcessExited
			}
			return ws, nil
		}
		if time.Now().After(deadline) {
			return ws, fmt.Errorf("pid %d did not report a ptrace stop within %v: is another thread of this process waiting on it (wait4/waitid, os/exec's Wait)? Such a waiter takes the stops", t.pid, stopTimeout)
		}
		// A stop usually arrives within tens of microseconds, less than a
		// Go sleep lasts: ask again at once for a while before sleeping.
		if spin < 500 {
			continue
		}
		time.Sleep(pause)
		pause = min(2*pause, time.Millisecond)
	}
}

// waitEventStop waits for the PTRACE_EVENT_STOP that PTRACE_INTERRUPT (or a
// group stop) produces. Signals delivered before it are held back and
// re-sent at detach, so the target still gets them.
func (t *tracee) waitEventStop() error {
	for {
		ws, err := t.wait()
		if err != nil {
			return err
		}
		if !ws.Stopped() {
			continue
		}
		if ptraceEvent(ws) == unix.PTRACE_EVENT_STOP {
			return nil
		}
		t.pending = append(t.pending, ws.StopSignal())
		if err := unix.PtraceCont(t.pid, 0); err != nil {
			return t.gone(fmt.Errorf("continue past signal %v: %w", ws.StopSignal(), err))
		}
	}
}

// readMem reads n bytes at addr of pid through /proc/PID/mem: one pread
// instead of a ptrace request per word.
func readMem(pid int, addr uintptr, n int) ([]byte, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, int64(addr)); err != nil {
		return nil, err
	}
	return buf, nil
}

// detach releases the tracee and re-sends signals held back while it was
// stopped. A tracee that was in a group stop (SIGSTOP) returns to it.
func (t *tracee) detach() error {
	if err := unix.PtraceDetach(t.pid); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("detach: %w", err)
	}
	var errs []error
	for _, sig := range t.pending {
		if err := unix.Tgkill(t.pid, t.pid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("re-send signal %v: %w", sig, err))
		}
	}
	return errors.Join(errs...)
}
