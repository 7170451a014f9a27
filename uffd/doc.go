// Package uffd is dmig's kernel interface for guest memory: userfaultfd
// (API handshake, register MISSING/WP, COPY, ZEROPAGE, WAKE, WRITEPROTECT),
// a fault reader, dirty tracking with async write-protect and PAGEMAP_SCAN,
// and attaching a userfaultfd to another process (ptrace syscall injection +
// pidfd_getfd). RAM files themselves (mapping, holes, locks, a process's
// mappings of them) are internal/ramfile's. It contains no migration logic
// and does not log: it returns errors and counters.
//
// Every kernel struct and ioctl number is in abi_linux.go. Errors wrap a
// sentinel of errors.go and, where the kernel gave one, the errno.
//
// # Ownership
//
// An FD owns its file descriptor and must be closed explicitly (there is no
// finalizer). A uffd made by Attach lives only in the caller: the target
// holds no copy, so if the caller dies the kernel frees the target.
//
// # What a target sees when the uffd goes away
//
// Closing the uffd (or the controller dying) while a thread of the target
// waits on a missing page of shared memory releases that thread within a
// fraction of a millisecond, and it reads a ZERO page: shmem allocates one
// for the hole. TestCloseWhileWaiting asserts exactly that. A VM would then
// run on wrong memory, so a destination must never close its uffd, nor exit,
// while any registered page is still missing.
//
// # Rules for callers
//
//   - Register MISSING and WP on one uffd: a second uffd on the same range
//     gets ErrBusy (that is also how a second migration of a VM is refused).
//   - Never touch a registered range from the process that serves it: a Go
//     thread blocked on a missing page cannot be preempted, and the garbage
//     collector's stop-the-world then deadlocks with the serving goroutines.
//     dmig serves faults of another process (the VMM).
//   - Dirty tracking: TrackDirty write-protects first; read pages after.
//     Then a page changed after it was read is always reported by a later
//     Collect.
//   - A target that may not create a userfaultfd handling kernel faults
//     (unprivileged, without CAP_SYS_PTRACE, vm.unprivileged_userfaultfd=0)
//     makes Attach fail with ErrPermission naming the sysctl. User-mode-only
//     uffds are no way out: faults raised inside syscalls (and by KVM) would
//     fail with EFAULT.
package uffd
