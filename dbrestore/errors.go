package dbrestore

import (
	"errors"
	"fmt"
	"runtime/debug"

	"github.com/dmig/dmig/wire"
)

// ErrHashMismatch: a disk copy a storage reference names is not the page the
// source read (the reference's hash). The page then comes from the source.
var ErrHashMismatch = errors.New("hash mismatch")

// classedError carries the wire error code a failure is reported to the
// source with; errors without one are the guest's (wire.ErrorGuest).
type classedError struct {
	code wire.ErrorCode
	err  error
}

func (e *classedError) Error() string { return e.err.Error() }
func (e *classedError) Unwrap() error { return e.err }

// classed marks err as reported with code.
func classed(code wire.ErrorCode, err error) error {
	if err == nil {
		return nil
	}
	return &classedError{code: code, err: err}
}

// codeOf is the wire error code of err: the outermost class it was given,
// else wire.ErrorGuest.
func codeOf(err error) wire.ErrorCode {
	var c *classedError
	if errors.As(err, &c) {
		return c.code
	}
	return wire.ErrorGuest
}

// safely runs f and turns a panic into an error: a bug reached by one
// session (a peer's unexpected message, say) must fail that session
// cleanly, never every session of the process.
func safely(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = classed(wire.ErrorInternal, fmt.Errorf("internal error: %v\n%s", r, debug.Stack()))
		}
	}()
	return f()
}
