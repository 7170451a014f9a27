package ctl

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// peer is who is at the other end of a control connection.
type peer struct {
	UID uint32
	PID int32
}

// peerOf reads the credentials the kernel recorded for c's peer at
// connect (SO_PEERCRED): they cannot be forged by the peer.
func peerOf(c *net.UnixConn) (peer, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return peer{}, fmt.Errorf("peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return peer{}, fmt.Errorf("peer credentials: %w", err)
	}
	if serr != nil {
		return peer{}, fmt.Errorf("peer credentials: %w", serr)
	}
	return peer{UID: cred.Uid, PID: cred.Pid}, nil
}
