package drain

import "errors"

// ErrConfig: the drain config is invalid; the message names the entry.
var ErrConfig = errors.New("invalid drain config")

// ErrLocked: another process holds the guest's lock (a drain or a manual
// migration is moving it).
var ErrLocked = errors.New("guest locked by another drain")
