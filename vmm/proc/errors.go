package proc

import "errors"

// ErrNoSpace: the destination's RAM directory cannot hold the guest's RAM.
var ErrNoSpace = errors.New("not enough space for the guest's RAM")

// ErrNotShmem: the destination's RAM directory is not on shared memory.
var ErrNotShmem = errors.New("RAM directory not on shared memory")
