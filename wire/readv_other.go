//go:build !linux

package wire

import "io"

// readvFull is Linux-only; elsewhere pages go through the read buffer.
func readvFull(io.Reader, [][]byte) (bool, error) { return false, nil }
