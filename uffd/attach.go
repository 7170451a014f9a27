package uffd

import (
	"bytes"
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
// if the caller dies the kernel releases the target's blocked threads.
func Attach(pid int, features Feature) (*FD, error) {
	fd, err := injectUserfaultfd(pid)
	if err != nil {
		return nil, fmt.Errorf("attach userfaultfd to pid %d: %w", pid, err)
	}
	u := &FD{fd: fd, pid: pid}
	if err := u.handshake(features); err != nil {
		u.Close()
		return nil, fmt.Errorf("attach userfaultfd to pid %d: %w", pid, err)
	}
	return u, nil
}

// tracee is a thread seized with ptrace. Every ptrace request must come
// from the OS thread that seized it: callers lock their goroutine to it.
type tracee struct {
	pid     int
	pending []unix.Signal // signals intercepted while stopped, re-sent at detach
}

func injectUserfaultfd(pid int) (int, error) {
	if pid <= 0 {
		return -1, fmt.Errorf("pid %d: %w", pid, ErrNoProcess)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return -1, withErrno(ErrNoProcess, unix.ESRCH, "")
		}
		return -1, fmt.Errorf("open pidfd: %w", err)
	}
	defer unix.Close(pidfd)

	if err := unix.PtraceSeize(pid); err != nil {
		return -1, translateSeize(pid, err)
	}
	t := &tracee{pid: pid}
	attached := true
	defer func() {
		if attached {
			t.detach()
		}
	}()
	if err := unix.PtraceInterrupt(pid); err != nil {
		return -1, t.gone(fmt.Errorf("interrupt: %w", err))
	}
	if err := t.waitEventStop(); err != nil {
		return -1, err
	}

	var saved unix.PtraceRegs
	if err := unix.PtraceGetRegs(pid, &saved); err != nil {
		return -1, t.gone(fmt.Errorf("get registers: %w", err))
	}
	gadget, restoreText, err := t.syscallGadget(&saved)
	if err != nil {
		return -1, err
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

	remote, err := t.syscall(&saved, gadget, sysUserfaultfd, unix.O_CLOEXEC|unix.O_NONBLOCK)
	if err != nil {
		return -1, errors.Join(err, restore())
	}
	if remote < 0 {
		errno := unix.Errno(-remote)
		return -1, errors.Join(fmt.Errorf("userfaultfd() in target: %w", translateCreate(errno)), restore())
	}
	local, getErr := unix.PidfdGetfd(pidfd, int(remote), 0)
	// Close the target's copy whatever happened: a target holding the uffd
	// would keep its own faults blocked after dmig dies.
	ret, closeErr := t.syscall(&saved, gadget, unix.SYS_CLOSE, uint64(remote))
	if closeErr == nil && ret < 0 {
		closeErr = fmt.Errorf("close(%d) in target: %w", remote, unix.Errno(-ret))
	}
	if err := errors.Join(closeErr, restore()); err != nil {
		if getErr == nil {
			unix.Close(local)
		}
		return -1, err
	}
	if getErr != nil {
		return -1, fmt.Errorf("pidfd_getfd(%d): %w", remote, getErr)
	}
	attached = false
	if err := t.detach(); err != nil {
		unix.Close(local)
		return -1, err
	}
	return local, nil
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

// syscall makes the tracee execute one system call at gadget (a syscall
// instruction) with its registers borrowed from saved, and returns rax.
func (t *tracee) syscall(saved *unix.PtraceRegs, gadget uintptr, nr uint64, args ...uint64) (int64, error) {
	regs := *saved
	regs.Rax = nr
	// orig_rax = -1 keeps the kernel's syscall-restart fix-up (for a thread
	// interrupted inside a syscall) from rewriting our injected call.
	regs.Orig_rax = ^uint64(0)
	regs.Rip = uint64(gadget)
	argRegs := []*uint64{&regs.Rdi, &regs.Rsi, &regs.Rdx, &regs.R10, &regs.R8, &regs.R9}
	for i, a := range args {
		*argRegs[i] = a
	}
	if err := unix.PtraceSetRegs(t.pid, &regs); err != nil {
		return 0, t.gone(fmt.Errorf("set registers for syscall %d: %w", nr, err))
	}
	for {
		if err := unix.PtraceSingleStep(t.pid); err != nil {
			return 0, t.gone(fmt.Errorf("single-step syscall %d: %w", nr, err))
		}
		ws, err := t.wait()
		if err != nil {
			return 0, fmt.Errorf("single-step syscall %d: %w", nr, err)
		}
		if !ws.Stopped() {
			continue
		}
		var now unix.PtraceRegs
		if err := unix.PtraceGetRegs(t.pid, &now); err != nil {
			return 0, t.gone(fmt.Errorf("get registers after syscall %d: %w", nr, err))
		}
		// Any signal other than the step's SIGTRAP is held back and re-sent
		// at detach; a group stop (event stop) is passed through.
		if ptraceEvent(ws) == 0 && ws.StopSignal() != unix.SIGTRAP {
			t.pending = append(t.pending, ws.StopSignal())
		}
		switch now.Rip {
		case uint64(gadget) + 2:
			return int64(now.Rax), nil
		case uint64(gadget):
			// Stopped before the instruction ran: step again.
		default:
			return 0, fmt.Errorf("single-step syscall %d: stopped at %#x, expected %#x", nr, now.Rip, gadget+2)
		}
	}
}

// syscallGadget finds a syscall instruction (0f 05) the tracee can execute
// without any code being modified: first in the vDSO, then the one the
// thread is stopped after (if it is inside a syscall). Only if both fail does
// it write one at rip, returning a function that restores the original
// bytes. Writing code is the last resort because other threads may execute
// that code meanwhile.
func (t *tracee) syscallGadget(regs *unix.PtraceRegs) (uintptr, func() error, error) {
	if g, ok := t.vdsoGadget(); ok {
		return g, nil, nil
	}
	if int64(regs.Orig_rax) >= 0 && regs.Rip >= 2 {
		var b [2]byte
		if _, err := unix.PtracePeekText(t.pid, uintptr(regs.Rip-2), b[:]); err == nil && b == [2]byte{0x0f, 0x05} {
			return uintptr(regs.Rip - 2), nil, nil
		}
	}
	orig := make([]byte, 8)
	if _, err := unix.PtracePeekText(t.pid, uintptr(regs.Rip), orig); err != nil {
		return 0, nil, t.gone(fmt.Errorf("read code at %#x: %w", regs.Rip, err))
	}
	patched := append([]byte{0x0f, 0x05}, orig[2:]...)
	if _, err := unix.PtracePokeText(t.pid, uintptr(regs.Rip), patched); err != nil {
		return 0, nil, t.gone(fmt.Errorf("write syscall instruction at %#x: %w", regs.Rip, err))
	}
	restore := func() error {
		if _, err := unix.PtracePokeText(t.pid, uintptr(regs.Rip), orig); err != nil {
			return t.gone(fmt.Errorf("restore code at %#x: %w", regs.Rip, err))
		}
		return nil
	}
	return uintptr(regs.Rip), restore, nil
}

func (t *tracee) vdsoGadget() (uintptr, bool) {
	maps, err := Mappings(t.pid)
	if err != nil {
		return 0, false
	}
	for _, m := range maps {
		if m.Path != "[vdso]" || !strings.Contains(m.Perms, "x") {
			continue
		}
		code, err := readMem(t.pid, m.Start, int(m.Len()))
		if err != nil {
			return 0, false
		}
		if i := bytes.Index(code, []byte{0x0f, 0x05}); i >= 0 {
			return m.Start + uintptr(i), true
		}
	}
	return 0, false
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
