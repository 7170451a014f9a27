package uffd

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Handler resolves page faults for Serve.
type Handler interface {
	// Fault must make the page at m.Addr present — Copy, CopyRange or
	// ZeroPage — and wake its waiters. ErrExists from those means someone
	// else placed it: treat it as done (CopyRange does). An error stops
	// Serve and leaves the faulting thread blocked until the uffd is closed.
	Fault(ctx context.Context, m Msg) error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, m Msg) error

// Fault calls f.
func (f HandlerFunc) Fault(ctx context.Context, m Msg) error { return f(ctx, m) }

// ServeConfig tunes Serve.
type ServeConfig struct {
	// Workers is how many faults are resolved concurrently (default 1).
	Workers int
	// Event is called, from the reading goroutine, for every message that
	// is not a page fault (remove, unmap, remap, fork). The kernel holds the
	// thread that caused it until the message is read, so keep it short.
	// An error stops Serve. Nil ignores such events (closing fork fds).
	Event func(Msg) error
}

// ServeStats counts what Serve saw. Read it with Load while Serve runs.
type ServeStats struct {
	Faults     atomic.Uint64 // page faults dispatched to the handler
	Duplicates atomic.Uint64 // faults on a page already being resolved
	Events     atomic.Uint64 // non-fault messages
}

// Serve reads faults from the uffd and resolves them with h on up to
// cfg.Workers goroutines until ctx is cancelled or a handler fails. Faults on
// a page already being resolved are not dispatched twice: resolving it wakes
// every thread waiting on it. Cancelling ctx only signals: Serve then waits
// for running handlers (which must honour their ctx) and returns nil. A
// handler or read error is returned.
// stats may be nil.
func (u *FD) Serve(ctx context.Context, h Handler, cfg ServeConfig, stats *ServeStats) error {
	if stats == nil {
		stats = new(ServeStats)
	}
	workers := max(cfg.Workers, 1)
	stop, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("create stop eventfd: %w", err)
	}
	defer unix.Close(stop)

	inner, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		errOnce  sync.Once
		firstErr error
	)
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err })
		cancel()
	}
	// The poller blocks in poll(2); the eventfd is how a cancel reaches it.
	go func() {
		<-inner.Done()
		var one [8]byte
		one[0] = 1
		_, _ = unix.Write(stop, one[:])
	}()

	var (
		inflightMu sync.Mutex
		inflight   = make(map[uintptr]struct{})
		work       = make(chan Msg, workers)
		wg         sync.WaitGroup
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := range work {
				page := m.Addr &^ (PageSize - 1)
				if err := h.Fault(inner, m); err != nil {
					fail(fmt.Errorf("resolve fault at %#x of pid %d: %w", m.Addr, u.pid, err))
				}
				inflightMu.Lock()
				delete(inflight, page)
				inflightMu.Unlock()
			}
		}()
	}

	msgs := make([]Msg, maxReadMsgs)
	fds := []unix.PollFd{{Fd: int32(u.fd), Events: unix.POLLIN}, {Fd: int32(stop), Events: unix.POLLIN}}
	for {
		if inner.Err() != nil {
			break
		}
		_, err := unix.Poll(fds, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			fail(fmt.Errorf("poll userfaultfd of pid %d: %w", u.pid, err))
			break
		}
		if fds[1].Revents != 0 {
			break
		}
		if fds[0].Revents&(unix.POLLERR|unix.POLLNVAL) != 0 {
			fail(fmt.Errorf("poll userfaultfd of pid %d: revents %#x: %w", u.pid, fds[0].Revents, ErrClosed))
			break
		}
		for {
			n, err := u.ReadMsgs(msgs)
			if err != nil {
				fail(err)
				break
			}
			if n == 0 {
				break
			}
			for _, m := range msgs[:n] {
				if m.Kind != EventPagefault {
					stats.Events.Add(1)
					if err := handleEvent(m, cfg.Event); err != nil {
						fail(fmt.Errorf("handle %v event of pid %d: %w", m.Kind, u.pid, err))
					}
					continue
				}
				page := m.Addr &^ (PageSize - 1)
				inflightMu.Lock()
				_, dup := inflight[page]
				if !dup {
					inflight[page] = struct{}{}
				}
				inflightMu.Unlock()
				if dup {
					stats.Duplicates.Add(1)
					continue
				}
				stats.Faults.Add(1)
				select {
				case work <- m:
				case <-inner.Done():
				}
			}
			if inner.Err() != nil {
				break
			}
		}
	}
	cancel()
	close(work)
	wg.Wait()
	if ctx.Err() != nil && firstErr == nil {
		return nil
	}
	return firstErr
}

func handleEvent(m Msg, fn func(Msg) error) error {
	if fn != nil {
		return fn(m)
	}
	if m.Kind == EventFork && m.ForkFD > 0 {
		// Nobody asked for the child's uffd; holding it would keep the
		// child's faults blocked.
		return unix.Close(m.ForkFD)
	}
	return nil
}
