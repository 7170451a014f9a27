package precopy

import "errors"

// ErrBusy: the guest is already being migrated (its RAM file is locked by
// another dmig).
var ErrBusy = errors.New("guest is already being migrated by another dmig")
