package qemu

import (
	"errors"
	"fmt"
)

// CommandError is an error QEMU returned for a QMP command, with QMP's error
// class (GenericError, CommandNotFound, DeviceNotFound, ...) kept so callers
// can tell them apart with errors.As.
type CommandError struct {
	Command string
	Class   string
	Desc    string
}

func (e *CommandError) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

var (
	// ErrNotShared: the VM's RAM is not a shared file or memfd backend, so
	// dmig cannot map it. Start QEMU with
	// -object memory-backend-file,id=ram0,size=SIZE,mem-path=/dev/shm/NAME,share=on
	// -machine memory-backend=ram0.
	ErrNotShared = errors.New("guest RAM is not a shared memory backend")
	// ErrDiskMismatch: a destination would open a disk that is not the
	// source's disk (another file, not merely another name).
	ErrDiskMismatch = errors.New("destination disk is not the source's disk")
	// ErrMigrationFailed: QEMU reported the migration failed or was
	// cancelled.
	ErrMigrationFailed = errors.New("qemu migration failed")
	// ErrExited: the QEMU process ended.
	ErrExited = errors.New("qemu exited")
	// ErrMonitorClosed: the QMP connection closed.
	ErrMonitorClosed = errors.New("qmp connection closed")
	// ErrNotPaused: the VM is not in a state a migration leaves it in.
	ErrNotPaused = errors.New("vm not paused by a migration")
)

// ErrDiskNotShared: a VM's disk is not on storage a destination on another
// host opens as the same file (see CheckSharedDisks).
var ErrDiskNotShared = errors.New("disk not on shared storage")
