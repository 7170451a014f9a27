package uffd

// The x86-64 half of Attach: which registers carry a system call's number,
// arguments and result, and what a syscall instruction looks like (0f 05).
// arch_other.go says what a port to another GOARCH must provide.

import (
	"bytes"
	"fmt"

	"golang.org/x/sys/unix"
)

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
	start, end, err := vdsoCode(t.pid)
	if err != nil {
		return 0, false
	}
	code, err := readMem(t.pid, start, int(end-start))
	if err != nil {
		return 0, false
	}
	if i := bytes.Index(code, []byte{0x0f, 0x05}); i >= 0 {
		return start + uintptr(i), true
	}
	return 0, false
}
