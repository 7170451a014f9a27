//go:build !linux

package wire

import (
	"io"
	"sync/atomic"
)

// readvFull is Linux-only; elsewhere pages go through the read buffer.
func readvFull(io.Reader, [][]byte, *atomic.Uint64) (bool, error) { return false, nil }
