//go:build !linux

package wire

import (
	"net"
	"time"
)

// DefaultLinkTimeout: see sockopt_linux.go.
const DefaultLinkTimeout = 15 * time.Second

// setLinkTimeout is Linux-only; elsewhere only Go's default keepalive runs.
func setLinkTimeout(net.Conn, time.Duration) error { return nil }

// setNotSentLowat is Linux-only; elsewhere the send buffer is the kernel's.
func setNotSentLowat(net.Conn, int) error { return nil }
