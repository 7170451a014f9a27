package proc

import (
	"fmt"

	"github.com/dmig/dmig/internal/keeper"
)

// Exited returns a channel closed when process pid exits, without reaping
// it. Watch a guest this way instead of waiting on it: a wait(2) pending in
// another goroutine also returns the ptrace stops uffd.Attach depends on
// (the kernel reports a traced child's stops to every waiter of its parent),
// and would steal them. Reap the process only after the channel closed.
func Exited(pid int) (<-chan struct{}, error) {
	ch, err := keeper.Watch(pid)
	if err != nil {
		return nil, fmt.Errorf("watch pid %d: %w", pid, err)
	}
	return ch, nil
}
