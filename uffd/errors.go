package uffd

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Sentinel errors. Errors returned by the package wrap one of these and,
// where the kernel said why, the errno too, so both errors.Is(err,
// ErrExists) and errors.Is(err, unix.EEXIST) hold.
var (
	// ErrNotSupported: the kernel lacks a feature or ioctl dmig needs.
	ErrNotSupported = errors.New("not supported by this kernel")
	// ErrExists: the page is already present (UFFDIO_COPY/ZEROPAGE EEXIST).
	ErrExists = errors.New("page already present")
	// ErrBusy: the range or process is already held by another
	// userfaultfd or tracer — typically a second dmig on the same VM.
	ErrBusy = errors.New("already in use")
	// ErrPermission: the kernel refused for lack of privilege.
	ErrPermission = errors.New("permission denied")
	// ErrNoProcess: no process with that pid.
	ErrNoProcess = errors.New("no such process")
	// ErrProcessExited: the target exited while dmig worked on it.
	ErrProcessExited = errors.New("process exited")
	// ErrClosed: the userfaultfd was closed.
	ErrClosed = errors.New("userfaultfd closed")
	// ErrTargetGone: the memory the userfaultfd is bound to is gone (the
	// target exited or unmapped the range).
	ErrTargetGone = errors.New("target memory gone")
	// ErrNoMemory: a page could not be allocated where it was to be placed
	// (the RAM file's file system is full, or the host is short of memory).
	ErrNoMemory = errors.New("no memory for the page (the RAM file's file system full, or the host short of memory)")
)

// errnoError carries a sentinel and the errno it was translated from.
type errnoError struct {
	sentinel error
	errno    unix.Errno
	hint     string
}

func (e *errnoError) Error() string {
	s := fmt.Sprintf("%v (%v)", e.sentinel, e.errno)
	if e.hint != "" {
		s += ": " + e.hint
	}
	return s
}

func (e *errnoError) Unwrap() []error { return []error{e.sentinel, e.errno} }

func withErrno(sentinel error, errno unix.Errno, hint string) error {
	return &errnoError{sentinel: sentinel, errno: errno, hint: hint}
}
