package dbrestore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/dmig/dmig/internal/cause"
	"github.com/dmig/dmig/internal/keeper"
	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/uffd"
	"github.com/dmig/dmig/wire"
)

// The destination's phases, in order. The failure rule changes at Ready:
// before it, any failure kills the guest and the source resumes its own
// copy; from Ready on, the source may have sent Go and resumed nothing, so
// a lost link is waited out (Config.RecoverTimeout) and a failure kills the
// guest only once the pages it lacks can no longer arrive.
const (
	phaseReceive = iota // pre-copy passes until Switchover
	phaseReady          // Ready sent, Go not yet received
	phaseResumed        // the guest runs; post-copy until every page is placed
)

func (d *dest) init() {
	d.cond = sync.NewCond(&d.mu)
	n := len(d.sess.Bulk)
	d.processed, d.expected = make([]uint64, n), make([]uint64, n)
	d.switched = make(chan struct{})
	d.placer = newPlacer()
	d.placer.watch, _ = d.g.(PlaceWatcher)
}

// run is one migration, phase by phase.
func (d *dest) run(ctx context.Context) (fig *report.Dest, err error) {
	d.started = time.Now()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	d.init()
	defer d.closeLink()
	defer func() { err = d.failed(err); d.cleanup(err != nil) }()

	if err := d.prepare(ctx); err != nil {
		return nil, err
	}
	d.watchGuest(ctx, cancel)
	d.restore = d.newRestorer()
	defer d.restore.close()
	if d.cfg.Watch != nil {
		end := d.cfg.Watch(d.snapshot)
		defer func() { end(err) }()
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel(errors.New("migration ended"))
	// Session-wide goroutines run through spawn: a failure, or a panic,
	// ends this session and no other.
	spawn := func(f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := safely(f); err != nil && ctx.Err() == nil {
				cancel(err)
			}
		}()
	}
	d.restore.start(ctx, spawn)
	ln := d.connect(ctx, d.sess)
	ln.run(func(ctx context.Context) error { return d.reportProgress(ctx, ln.sess.Control) })

	sw, err := d.receive(ctx, ln)
	if err != nil {
		return nil, err
	}
	tSwitch := time.Now()
	owed, err := d.switchover(ctx, ln, sw)
	if err != nil {
		return nil, err
	}
	faults := d.startFaults(ctx, ln, owed, spawn)
	defer faults.stop()
	if d.missing.Load() == 0 {
		d.doneOnce.Do(func() { close(d.done) })
	}
	tLoad := time.Now()
	if err := d.devState.load(ln.ctx, d.g, ln.sess.Control); err != nil {
		return nil, cause.Of(ln.ctx, err)
	}
	tReady := time.Now()
	if err := d.ready(ctx, ln); err != nil {
		return nil, err
	}
	tGo := time.Now()
	if err := d.resume(ctx); err != nil {
		return nil, err
	}
	d.log.Debug("resume steps", "switchover", tLoad.Sub(tSwitch), "load_device_state", tReady.Sub(tLoad),
		"ready_to_go", tGo.Sub(tReady), "resume", time.Since(tGo))
	resumeMS := report.MS(time.Since(tSwitch))
	d.log.Info("guest resumed", "pid", d.pid, "missing", d.missing.Load(), "resume_ms", resumeMS)
	if err := d.servePostcopy(ctx); err != nil {
		return nil, err
	}
	return d.complete(ctx, resumeMS, faults)
}

// faultServer is the uffd server of a session, stopped before the uffd is
// released.
type faultServer struct {
	cancel context.CancelFunc
	err    chan error
	once   sync.Once
	result error
}

// stop ends fault serving and returns its error.
func (f *faultServer) stop() error {
	f.once.Do(func() {
		f.cancel()
		f.result = <-f.err
	})
	return f.result
}

// startFaults serves the guest's faults from switchover on, when any page
// is missing or a VMM loading device state may read guest RAM.
func (d *dest) startFaults(ctx context.Context, ln *link, owed []wire.Run, spawn func(func() error)) *faultServer {
	sctx, cancel := context.WithCancel(ctx)
	f := &faultServer{cancel: cancel, err: make(chan error, 1)}
	if d.missing.Load() == 0 && !d.devState.expected {
		f.err <- nil
		return f
	}
	d.serving = true
	spawn(func() error {
		err := d.serveFaults(sctx)
		f.err <- err
		return err
	})
	ln.run(func(ctx context.Context) error { return d.readReplies(ctx, ln.sess) })
	spawn(func() error { d.restore.refetch(sctx, owed); return nil })
	return f
}

// watchGuest ends the session when its guest exits: whatever the phase,
// no page can help a dead guest, and no reconnection either.
func (d *dest) watchGuest(ctx context.Context, cancel context.CancelCauseFunc) {
	go func() {
		select {
		case <-d.exited:
			cancel(fmt.Errorf("destination guest pid %d exited", d.pid))
		case <-ctx.Done():
		}
	}()
}

// connect makes s the session's current link and starts reading its bulk
// connections.
func (d *dest) connect(ctx context.Context, s *wire.Session) *link {
	l := d.setLink(ctx, s)
	for i, c := range s.Bulk {
		l.run(func(ctx context.Context) error {
			defer d.cond.Broadcast()
			err := d.readBulk(ctx, i, c)
			if err != nil && ctx.Err() == nil {
				d.mu.Lock()
				d.bulkErr = err
				d.mu.Unlock()
			}
			return err
		})
	}
	return l
}

// receive handles the control connection until Switchover.
func (d *dest) receive(ctx context.Context, ln *link) (*wire.Switchover, error) {
	n := len(d.sess.Bulk)
	for {
		m, err := ln.sess.Control.ReadFrame(ln.ctx)
		if err != nil {
			return nil, cause.Of(ln.ctx, lost(fmt.Errorf("control connection: %w", err)))
		}
		switch m := m.(type) {
		case *wire.IterationEnd:
			d.pass.Store(int32(m.Iteration))
			if len(m.Batches) != n {
				return nil, classed(wire.ErrorProtocol, fmt.Errorf("iteration %d end counts %d bulk connections, session has %d", m.Iteration, len(m.Batches), n))
			}
			d.mu.Lock()
			for i, c := range m.Batches {
				d.expected[i] += c
			}
			d.mu.Unlock()
		case *wire.Switchover:
			cp := *m
			d.devState.expected = m.DeviceState
			d.mu.Lock()
			d.final = true
			d.mu.Unlock()
			d.restore.switchover()
			return &cp, nil
		case *wire.Abort:
			return nil, fmt.Errorf("source aborted: %s", m.Reason)
		case *wire.Error:
			return nil, fmt.Errorf("source failed: %v: %s", m.Code, m.Message)
		default:
			return nil, classed(wire.ErrorProtocol, fmt.Errorf("unexpected %v on the control connection before switchover", m.Type()))
		}
	}
}

// progressEvery spaces the destination's Progress reports before
// switchover.
const progressEvery = 5 * time.Millisecond

// reportProgress tells the source, until Switchover, how many pre-copy
// batches have been applied. TCP acknowledges a batch once it is in this
// host's socket buffer: a destination short of CPU (decompressing,
// restoring from storage) can hold megabytes there, which the switchover
// barrier would then wait for with the guest paused. The source waits for
// them before the pause instead.
func (d *dest) reportProgress(ctx context.Context, c *wire.Conn) error {
	t := time.NewTicker(progressEvery)
	defer t.Stop()
	var last uint64
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		d.mu.Lock()
		final := d.final
		var n uint64
		for _, p := range d.processed {
			n += p
		}
		d.mu.Unlock()
		if final {
			return nil
		}
		if n == last {
			continue
		}
		last = n
		if err := c.WriteFrame(ctx, &wire.Progress{Iteration: uint32(d.pass.Load()), Batches: n}); err != nil {
			return lost(fmt.Errorf("report progress: %w", err))
		}
	}
}

// switchover waits for the last pre-copy batches, carries the storage
// restore's backlog over, and makes every page the source still owes
// missing. It returns the pages to ask the source for at once.
func (d *dest) switchover(ctx context.Context, ln *link, sw *wire.Switchover) ([]wire.Run, error) {
	tSwitch := time.Now()
	if err := d.devState.check(d.g); err != nil {
		return nil, classed(wire.ErrorProtocol, err)
	}
	if err := d.barrier(ln.ctx); err != nil {
		return nil, cause.Of(ln.ctx, err)
	}
	tBarrier := time.Now()
	// The storage restore is not waited for: what it has not checked yet
	// is restored after resume, faults first.
	carried := d.restore.carry(sw.Pending)
	tCarry := time.Now()
	if err := d.markPending(sw.Pending); err != nil {
		return nil, err
	}
	// Owed pages the source also lists as pending come with its push; ask
	// only for the others, so the urgent connection is not clogged with
	// pages nobody waits for ahead of the guest's faults.
	owed := d.unlisted(d.restore.owed())
	if err := d.markPending(owed); err != nil {
		return nil, err
	}
	if err := d.markPending(carried); err != nil {
		return nil, err
	}
	d.restore.carriedMissing()
	close(d.switched)
	// Where downtime goes when it is long.
	d.log.Debug("switchover steps", "batches", tBarrier.Sub(tSwitch), "carry", tCarry.Sub(tBarrier), "make_missing", time.Since(tCarry),
		"missing", d.missing.Load(), "carried", wire.PageCount(carried))
	return owed, nil
}

// serveFaults resolves the guest's page faults until ctx ends.
func (d *dest) serveFaults(ctx context.Context) error {
	fault := func(ctx context.Context, m uffd.Msg) error {
		return safely(func() error { return d.fault(ctx, m) })
	}
	err := d.u.Serve(ctx, uffd.HandlerFunc(fault), uffd.ServeConfig{Workers: d.cfg.FaultWorkers}, nil)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// ready tells the source the guest can resume and waits for Go. From here
// on the source may have sent Go: a lost link is waited out, and a
// reconnection (which the source makes only after Go) counts as Go.
func (d *dest) ready(ctx context.Context, ln *link) error {
	if err := d.journalState(keeper.Ready); err != nil {
		return err
	}
	d.phase.Store(phaseReady)
	if err := ln.sess.Control.WriteFrame(ln.ctx, &wire.Ready{}); err != nil {
		return cause.Of(ln.ctx, lost(fmt.Errorf("send ready: %w", err)))
	}
	type frame struct {
		m   wire.Message
		err error
	}
	got := make(chan frame, 1)
	go func() {
		m, err := ln.sess.Control.ReadFrame(ln.ctx)
		got <- frame{m, err}
	}()
	var f frame
	select {
	case f = <-got:
	case s := <-d.recovered:
		// The source reconnected, which it does only after Go, before
		// this side saw the old link fail (a half-open connection):
		// waiting for the old link's timeout would be downtime.
		ln.cancel(lost(errors.New("replaced by a reconnection")))
		<-got
		return d.adopt(ctx, s)
	}
	m, err := f.m, f.err
	if err == nil {
		switch m := m.(type) {
		case *wire.Go:
			return nil
		case *wire.Abort:
			return fmt.Errorf("source aborted: %s", m.Reason)
		case *wire.Error:
			return fmt.Errorf("source failed: %v: %s", m.Code, m.Message)
		}
		return classed(wire.ErrorProtocol, fmt.Errorf("unexpected %v on the control connection while waiting for go", m.Type()))
	}
	err = cause.Of(ln.ctx, lost(fmt.Errorf("wait for go: %w", err)))
	if !recoverable(err) {
		return err
	}
	return d.reconnect(ctx, err)
}

// resume journals the guest as resumed, then lets it run.
func (d *dest) resume(ctx context.Context) error {
	// A guest that died since it was started (killed, crashed) must not
	// count as resumed: SIGCONT to a zombie succeeds.
	select {
	case <-d.exited:
		return fmt.Errorf("destination guest pid %d exited before it was resumed", d.pid)
	default:
	}
	if err := d.journalState(keeper.Resumed); err != nil {
		return err
	}
	d.phase.Store(phaseResumed)
	if err := d.g.Resume(ctx); err != nil {
		return fmt.Errorf("resume guest: %w", err)
	}
	d.restore.release()
	if err := d.conns().Control.WriteFrame(ctx, &wire.Resumed{}); err != nil {
		d.log.Warn("tell source the guest resumed", "error", err)
	}
	if a, ok := d.g.(AfterResumer); ok {
		if err := a.AfterResume(ctx); err != nil {
			d.log.Warn("after the resume", "error", err)
		}
	}
	return nil
}

// servePostcopy waits until every page is placed, through as many links
// to the source as it takes.
func (d *dest) servePostcopy(ctx context.Context) error {
	for {
		ln := d.link()
		ln.run(func(ctx context.Context) error { return d.watchControl(ctx, ln.sess) })
		select {
		case <-d.done:
			return nil
		case <-ctx.Done():
			return cause.Of(ctx, errors.New("session ended"))
		case s := <-d.recovered:
			// The source reconnected before this side saw the old link
			// fail (a half-open connection).
			ln.cancel(lost(errors.New("replaced by a reconnection")))
			if err := d.adopt(ctx, s); err != nil {
				return err
			}
		case <-ln.ctx.Done():
			err := cause.Of(ln.ctx, errors.New("link to the source lost"))
			if !recoverable(err) {
				return err
			}
			if err := d.reconnect(ctx, err); err != nil {
				return err
			}
		}
	}
}

// complete ends a migration whose every page is in place: the guest's
// memory is its own from now on.
func (d *dest) complete(ctx context.Context, resumeMS float64, faults *faultServer) (*report.Dest, error) {
	if err := faults.stop(); err != nil {
		return nil, err
	}
	// Placed before the release: a serve that dies in between leaves a
	// complete guest whose RAM its keeper or the next serve releases.
	d.reached(keeper.Placed)
	if err := d.release(); err != nil {
		return nil, err
	}
	d.reached(keeper.Completed)
	fig := d.figures(resumeMS)
	d.restore.report(fig)
	fig.Recoveries = d.recoveries
	b, _ := json.Marshal(fig)
	if err := d.conns().Control.WriteFrame(ctx, &wire.Complete{Figures: b}); err != nil {
		d.log.Warn("send completion", "error", err)
	}
	d.log.Info("migration complete", "prefetch", fig.Pages.Prefetch, "faults", fig.Pages.PostcopyFault, "recoveries", d.recoveries)
	return fig, nil
}

// failed applies the failure rule to err (nil: success): the guest is
// killed, and after resume the error says why.
func (d *dest) failed(err error) error {
	if err == nil {
		return nil
	}
	if d.phase.Load() == phaseResumed {
		err = fmt.Errorf("after resume, %d pages can no longer arrive; the guest was killed rather than run on pages dmig did not place: %w", d.missing.Load(), err)
	}
	switch d.phase.Load() {
	case phaseReady:
		// The source may have sent Go and keeps its guest paused: once
		// this guest is dead, and so certainly never ran, Abort tells the
		// source it may resume its own copy.
		kerr := d.g.Kill()
		if kerr != nil {
			err = errors.Join(err, fmt.Errorf("kill guest: %w", kerr))
		} else {
			d.tell(&wire.Abort{Reason: trimMessage("destination guest never resumed: " + err.Error())})
		}
	default:
		// Tell the source first: before Go it resumes its guest sooner.
		d.tell(&wire.Error{Code: codeOf(err), Message: trimMessage(err.Error())})
		if kerr := d.g.Kill(); kerr != nil {
			err = errors.Join(err, fmt.Errorf("kill guest: %w", kerr))
		}
	}
	d.log.Error("migration failed", "error", err, "resumed", d.phase.Load() == phaseResumed)
	return err
}

// tell writes m on the current control connection, if any, within a
// second.
func (d *dest) tell(m wire.Message) {
	if c := d.conns().Control; c != nil {
		wctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = c.WriteFrame(wctx, m)
		cancel()
	}
}

func trimMessage(s string) string {
	if len(s) > 1000 {
		return s[:1000]
	}
	return s
}
