package ramfile

import "errors"

// Sentinel errors. Where the kernel said why, the error wraps the errno too,
// so both errors.Is(err, ErrLocked) and errors.Is(err, unix.EWOULDBLOCK)
// hold.
var (
	// ErrLocked: another process holds the RAM file's lock (Lock) —
	// typically a second migration of the same guest.
	ErrLocked = errors.New("RAM file locked by another process")
	// ErrNoProcess: no process with that pid (Mappings).
	ErrNoProcess = errors.New("no such process")
)
