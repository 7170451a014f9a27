package wire

import (
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultLinkTimeout is how long a connection may go unanswered before it
// fails, when WithLinkTimeout or Listener.LinkTimeout do not say.
const DefaultLinkTimeout = 15 * time.Second

// setLinkTimeout makes a TCP connection fail once its peer has left data
// or keepalive probes unacknowledged for about d: TCP_USER_TIMEOUT, and
// keepalive probes so that an idle connection notices too. Without it a
// link that goes down without a reset hangs a migration for the kernel's
// ~15 minutes of retransmissions.
func setLinkTimeout(nc net.Conn, d time.Duration) error {
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		return nil
	}
	if d <= 0 {
		d = DefaultLinkTimeout
	}
	probe := max(d/3, 100*time.Millisecond)
	if err := tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: probe, Interval: probe, Count: 3}); err != nil {
		return fmt.Errorf("set keepalive: %w", err)
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return fmt.Errorf("set TCP user timeout: %w", err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(d.Milliseconds()))
	}); err != nil {
		return fmt.Errorf("set TCP user timeout: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("set TCP user timeout: %w", serr)
	}
	return nil
}

// onTCP runs fn on the descriptor of the TCP connection under nc (beneath
// TLS, if any). It reports false, running nothing, for a connection that is
// not TCP; the error is that of reaching the descriptor (nc closed).
func onTCP(nc net.Conn, fn func(fd int)) (bool, error) {
	if t, ok := nc.(interface{ NetConn() net.Conn }); ok {
		nc = t.NetConn()
	}
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		return false, nil
	}
	rc, err := tc.SyscallConn()
	if err == nil {
		err = rc.Control(func(fd uintptr) { fn(int(fd)) })
	}
	return true, err
}

// unacked is how many bytes written to the TCP connection under nc
// (beneath TLS, if any) its peer has not acknowledged yet (SIOCOUTQ):
// what is still in this host's send queue, its qdisc and the network.
func unacked(nc net.Conn) (int, error) {
	var n int
	var ierr error
	if _, err := onTCP(nc, func(fd int) { n, ierr = unix.IoctlGetInt(fd, unix.SIOCOUTQ) }); err != nil {
		return 0, fmt.Errorf("read send queue: %w", err)
	}
	if ierr != nil {
		return 0, fmt.Errorf("read send queue: %w", ierr)
	}
	return n, nil
}

// setNotSentLowat caps the bytes written to the TCP connection under nc
// that the kernel holds unsent (TCP_NOTSENT_LOWAT): past n, writes wait.
func setNotSentLowat(nc net.Conn, n int) error {
	var serr error
	if _, err := onTCP(nc, func(fd int) {
		serr = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, n)
	}); err != nil {
		return fmt.Errorf("set TCP_NOTSENT_LOWAT: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("set TCP_NOTSENT_LOWAT: %w", serr)
	}
	return nil
}

// hungUp reports whether the TCP connection under nc (beneath TLS, if any)
// has been closed or reset by its peer, without reading from it: a peek
// (MSG_PEEK, MSG_DONTWAIT) that finds the end of the stream or a reset.
// Bytes waiting, or none yet, mean it is up; so does a connection that is
// not TCP (nothing to peek at).
func hungUp(nc net.Conn) bool {
	var gone bool
	var b [1]byte
	tcp, err := onTCP(nc, func(fd int) {
		n, _, perr := unix.Recvfrom(fd, b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		gone = perr == nil && n == 0 || perr != nil && perr != unix.EAGAIN && perr != unix.EINTR
	})
	if err != nil {
		return true // closed here
	}
	return tcp && gone
}
