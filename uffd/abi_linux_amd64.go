package uffd

// System call numbers dmig calls directly, x86-64's: unix.Syscall uses ours,
// and Attach injects the same number into a target of the same
// architecture.
const sysUserfaultfd = 323
