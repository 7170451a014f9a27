package precopy

import "errors"

// ErrBusy: the guest is already being migrated (its RAM file is locked by
// another dmig).
var ErrBusy = errors.New("guest is already being migrated by another dmig")

// ErrSourcePaused: the migration aborted but the source guest, paused for
// switchover, could not be resumed (within abortResumeTimeout): it stays
// paused with its memory intact, and the destination never ran.
var ErrSourcePaused = errors.New("source guest left paused")
