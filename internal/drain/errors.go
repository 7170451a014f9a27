package drain

import "errors"

// ErrConfig: the drain config is invalid; the message names the entry.
var ErrConfig = errors.New("invalid drain config")

// ErrLocked: another process holds the guest's lock (a drain or a manual
// migration is moving it).
var ErrLocked = errors.New("guest locked by another drain")

// ErrCannotMigrate: the guest cannot be migrated as it is (private RAM, a
// disk the destination cannot open): Options.Migrate returns it, wrapped
// with the reason, before it touches the guest, and the drain reports the
// guest as skipped.
var ErrCannotMigrate = errors.New("cannot be migrated")
