//go:build linux && !amd64

package uffd

import "golang.org/x/sys/unix"

// dmig is built for linux/amd64 only. Attach injects system calls into the
// target through ptrace with x86-64's registers and syscall instruction
// (attach_amd64.go), and the userfaultfd system call number is x86-64's
// (abi_linux_amd64.go). A port to another GOARCH writes those two files for
// it; until then the build stops here, with this name as the reason, rather
// than on a missing register field deep in attach.go.
var _ = dmig_builds_for_linux_amd64_only__uffd_injects_x86_64_syscalls

// Stand-ins for the amd64 files, so that the line above is the only error.
const sysUserfaultfd = unix.SYS_USERFAULTFD

func (t *tracee) syscall(*unix.PtraceRegs, uintptr, uint64, ...uint64) (int64, error) {
	panic("unreachable")
}

func (t *tracee) syscallGadget(*unix.PtraceRegs) (uintptr, func() error, error) {
	panic("unreachable")
}
