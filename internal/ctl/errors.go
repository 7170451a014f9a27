package ctl

import "errors"

// ErrCancelled is the cause of a migration aborted by dmig cancel.
var ErrCancelled = errors.New("cancelled by dmig cancel")

// ErrPastGo: a cancel came after Go was sent; the destination may run the
// guest and the source can no longer take it back.
var ErrPastGo = errors.New("go was sent: the destination may already run the guest and the source can no longer take it back; let the migration finish (or fail with the source guest paused)")

// ErrNotCancellable: the entry cannot be cancelled here (a destination's
// session: cancel it on its source host).
var ErrNotCancellable = errors.New("not cancellable here")

// ErrNotFound: no migration of that name or session on this host.
var ErrNotFound = errors.New("no such migration on this host")

// ErrNoCap: the entry has no bandwidth cap to change here (a
// destination's session: the cap is the source's).
var ErrNoCap = errors.New("no bandwidth cap to change here")
