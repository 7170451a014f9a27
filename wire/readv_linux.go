package wire

import (
	"io"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// maxIov is the kernel's IOV_MAX.
const maxIov = 1024

// readvFull fills every slice of iov (consuming iov) with readv(2) on src's
// socket, waiting through the runtime poller so deadlines still apply. It
// reports false, having read nothing, when src is not a socket. Bytes read
// are added to count.
func readvFull(src io.Reader, iov [][]byte, count *atomic.Uint64) (bool, error) {
	sc, ok := src.(syscall.Conn)
	if !ok {
		return false, nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false, nil
	}
	for len(iov) > 0 {
		var n int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			for {
				n, rerr = unix.Readv(int(fd), iov[:min(len(iov), maxIov)])
				if rerr != unix.EINTR {
					return rerr != unix.EAGAIN
				}
			}
		})
		switch {
		case err != nil:
			return true, err
		case rerr != nil:
			return true, rerr
		case n == 0:
			return true, io.ErrUnexpectedEOF
		}
		count.Add(uint64(n))
		for n > 0 {
			if n < len(iov[0]) {
				iov[0] = iov[0][n:]
				break
			}
			n -= len(iov[0])
			iov = iov[1:]
		}
	}
	return true, nil
}
