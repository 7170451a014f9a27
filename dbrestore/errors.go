package dbrestore

import "errors"

// ErrHashMismatch: a disk copy a storage reference names is not the page the
// source read (the reference's hash). The page then comes from the source.
var ErrHashMismatch = errors.New("hash mismatch")
