package proc

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Exited returns a channel closed when process pid exits, without reaping
// it. Watch a guest this way instead of waiting on it: a wait(2) pending in
// another goroutine also returns the ptrace stops uffd.Attach depends on
// (the kernel reports a traced child's stops to every waiter of its parent),
// and would steal them. Reap the process only after the channel closed.
func Exited(pid int) (<-chan struct{}, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("watch pid %d: %w", pid, err)
	}
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		defer unix.Close(fd)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			_, err := unix.Poll(fds, -1)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return // readable (exited) or the pidfd failed: treat as gone
		}
	}()
	return ch, nil
}
