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
	// Event is called, one call at a time, for every message that is not
	// a page fault (remove, unmap, remap, fork). The kernel holds the
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

// Serve reads faults from the uffd and resolves them with h until ctx is
// cancelled or a handler fails. cfg.Workers goroutines each poll the uffd,
// read one message at a time and resolve it themselves: no hand-off between
// goroutines on the fault path, and a handler that waits (on the network,
// say) holds up only its own goroutine. Faults on a page already being
// resolved are not dispatched twice: resolving it wakes every thread
// waiting on it. Cancelling ctx only signals: Serve then waits for running
// handlers (which must honour their ctx) and returns nil. A handler or read
// error is returned. stats may be nil.
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
	s := &server{u: u, h: h, cfg: cfg, stats: stats, stop: stop, ctx: inner, cancel: cancel,
		inflight: make(map[uintptr]struct{})}
	// Workers block in poll(2); the eventfd, never drained, is how a cancel
	// reaches all of them.
	go func() {
		<-inner.Done()
		var one [8]byte
		one[0] = 1
		_, _ = unix.Write(stop, one[:])
	}()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.loop()
		}()
	}
	wg.Wait()
	if ctx.Err() != nil && s.firstErr == nil {
		return nil
	}
	return s.firstErr
}

type server struct {
	u      *FD
	h      Handler
	cfg    ServeConfig
	stats  *ServeStats
	stop   int
	ctx    context.Context
	cancel context.CancelFunc

	errOnce  sync.Once
	firstErr error

	mu       sync.Mutex // guards inflight and serialises cfg.Event
	inflight map[uintptr]struct{}
}

func (s *server) fail(err error) {
	if s.ctx.Err() != nil {
		return // stopping: handlers unblocked by the cancel are not failures
	}
	s.errOnce.Do(func() { s.firstErr = err })
	s.cancel()
}

func (s *server) loop() {
	msg := make([]Msg, 1)
	fds := []unix.PollFd{{Fd: int32(s.u.fd), Events: unix.POLLIN}, {Fd: int32(s.stop), Events: unix.POLLIN}}
	for s.ctx.Err() == nil {
		n, err := s.u.ReadMsgs(msg)
		if err != nil {
			s.fail(err)
			return
		}
		if n == 1 {
			s.dispatch(msg[0])
			continue
		}
		if _, err := unix.Poll(fds, -1); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			s.fail(fmt.Errorf("poll userfaultfd of pid %d: %w", s.u.pid, err))
			return
		}
		if fds[1].Revents != 0 {
			return
		}
		if fds[0].Revents&(unix.POLLERR|unix.POLLNVAL) != 0 {
			s.fail(fmt.Errorf("poll userfaultfd of pid %d: revents %#x: %w", s.u.pid, fds[0].Revents, ErrClosed))
			return
		}
	}
}

func (s *server) dispatch(m Msg) {
	if m.Kind != EventPagefault {
		s.stats.Events.Add(1)
		s.mu.Lock()
		err := handleEvent(m, s.cfg.Event)
		s.mu.Unlock()
		if err != nil {
			s.fail(fmt.Errorf("handle %v event of pid %d: %w", m.Kind, s.u.pid, err))
		}
		return
	}
	page := m.Addr &^ (PageSize - 1)
	s.mu.Lock()
	_, dup := s.inflight[page]
	if !dup {
		s.inflight[page] = struct{}{}
	}
	s.mu.Unlock()
	if dup {
		s.stats.Duplicates.Add(1)
		return
	}
	s.stats.Faults.Add(1)
	if err := s.h.Fault(s.ctx, m); err != nil {
		s.fail(fmt.Errorf("resolve fault at %#x of pid %d: %w", m.Addr, s.u.pid, err))
	}
	s.mu.Lock()
	delete(s.inflight, page)
	s.mu.Unlock()
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
