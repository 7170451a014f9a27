package dbrestore

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"sync"
	"time"

	"github.com/dmig/dmig/internal/cause"
	"github.com/dmig/dmig/internal/keeper"
	"github.com/dmig/dmig/wire"
)

// errPeerEnded marks a failure the source declared (Abort, Error): no
// reconnection can mend it.
var errPeerEnded = errors.New("the source ended the session")

// link is one set of connections to the source. A session has one at a
// time; from Ready on, a lost link is replaced by the source's
// reconnection (FlagRecover) without losing the session's state.
type link struct {
	sess   *wire.Session
	ctx    context.Context
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup
}

// run runs f on the link: its failure (or panic) ends the link, not the
// session.
func (l *link) run(f func(ctx context.Context) error) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		if err := safely(func() error { return f(l.ctx) }); err != nil {
			l.cancel(err)
		}
	}()
}

// close ends the link and waits for its goroutines.
func (l *link) close() {
	l.cancel(errors.New("link closed"))
	l.sess.Close()
	l.wg.Wait()
}

func (d *dest) setLink(ctx context.Context, s *wire.Session) *link {
	lctx, cancel := context.WithCancelCause(ctx)
	l := &link{sess: s, ctx: lctx, cancel: cancel}
	d.linkMu.Lock()
	d.ln = l
	d.linkMu.Unlock()
	return l
}

// link is the current link.
func (d *dest) link() *link {
	d.linkMu.Lock()
	defer d.linkMu.Unlock()
	return d.ln
}

// conns are the current link's connections (the first session's before
// any link).
func (d *dest) conns() *wire.Session {
	if l := d.link(); l != nil {
		return l.sess
	}
	return d.sess
}

// closeLink closes the current link, if any.
func (d *dest) closeLink() {
	if l := d.link(); l != nil {
		l.close()
	}
}

// linkError is a failed connection to the source: what a reconnection
// mends.
type linkError struct{ err error }

func (e *linkError) Error() string { return e.err.Error() }
func (e *linkError) Unwrap() error { return e.err }

// lost marks err as the link's failure.
func lost(err error) error {
	if err == nil {
		return nil
	}
	return &linkError{err}
}

// recoverable reports whether a failure may be mended by the source
// reconnecting: only a failed connection; a misbehaving or ending peer, a
// dead guest and an internal failure are not.
func recoverable(err error) bool {
	var l *linkError
	return errors.As(err, &l) && !errors.Is(err, errPeerEnded) && codeOf(err) == wire.ErrorGuest
}

// watchControl reads the control connection after Go, where the source
// sends nothing but a declared end: its loss is the link's.
func (d *dest) watchControl(ctx context.Context, s *wire.Session) error {
	m, err := s.Control.ReadFrame(ctx)
	if err != nil {
		return lost(fmt.Errorf("control connection: %w", err))
	}
	switch m := m.(type) {
	case *wire.Abort:
		return fmt.Errorf("%w after go: %s", errPeerEnded, m.Reason)
	case *wire.Error:
		return fmt.Errorf("%w after go: %v: %s", errPeerEnded, m.Code, m.Message)
	}
	return classed(wire.ErrorProtocol, fmt.Errorf("unexpected %v on the control connection after go", m.Type()))
}

// reconnect waits up to Config.RecoverTimeout for the source to reconnect
// after the current link failed with why, and adopts its new session.
func (d *dest) reconnect(ctx context.Context, why error) error {
	if d.recovered == nil || d.cfg.RecoverTimeout <= 0 {
		return why
	}
	d.log.Warn("link to the source lost; waiting for it to reconnect", "error", why, "recover_timeout", d.cfg.RecoverTimeout, "missing", d.missing.Load())
	d.closeLink()
	t := time.NewTimer(d.cfg.RecoverTimeout)
	defer t.Stop()
	select {
	case s := <-d.recovered:
		return d.adopt(ctx, s)
	case <-t.C:
		return fmt.Errorf("the source did not reconnect within %v: %w", d.cfg.RecoverTimeout, why)
	case <-ctx.Done():
		return cause.Of(ctx, why)
	}
}

// adopt makes a reconnected session the current link: it tells the
// source every page still missing (what was in flight on the old link
// included) and asks again at once for those the guest waits on.
func (d *dest) adopt(ctx context.Context, s *wire.Session) error {
	if err := checkRecovery(&d.sess.Hello, &s.Hello); err != nil {
		s.Close()
		return classed(wire.ErrorProtocol, err)
	}
	d.closeLink()
	d.recoveries++
	ln := d.connect(ctx, s)
	if d.serving {
		ln.run(func(ctx context.Context) error { return d.readReplies(ctx, s) })
	}
	runs := d.missingRuns()
	d.log.Info("source reconnected: resuming post-copy", "missing", wire.PageCount(runs), "recoveries", d.recoveries)
	if err := s.Control.WriteFrame(ln.ctx, &wire.Missing{Pages: runs}); err != nil {
		ln.cancel(lost(fmt.Errorf("send missing pages: %w", err)))
		return nil
	}
	d.waitMu.Lock()
	keys := make([]pageKey, 0, len(d.waiters))
	for k := range d.waiters {
		keys = append(keys, k)
	}
	d.waitMu.Unlock()
	for _, k := range keys {
		if err := s.Urgent.WriteFrame(ln.ctx, &wire.PageRequest{Block: k.block, Page: k.page, Count: 1}); err != nil {
			ln.cancel(lost(fmt.Errorf("ask again for page %d of block %d: %w", k.page, k.block, err)))
			return nil
		}
	}
	return nil
}

// checkRecovery refuses a reconnection whose geometry differs from the
// session's.
func checkRecovery(orig, h *wire.Hello) error {
	if h.Guest != orig.Guest || len(h.Blocks) != len(orig.Blocks) || h.BulkConns != orig.BulkConns {
		return fmt.Errorf("reconnection of session %s does not match it (guest %q, %d blocks, %d bulk connections; want %q, %d, %d)",
			h.Session, h.Guest, len(h.Blocks), h.BulkConns, orig.Guest, len(orig.Blocks), orig.BulkConns)
	}
	for i := range h.Blocks {
		if h.Blocks[i] != orig.Blocks[i] {
			return fmt.Errorf("reconnection of session %s: block %d is %v, was %v", h.Session, i, h.Blocks[i], orig.Blocks[i])
		}
	}
	return nil
}

// reached records a state past Resumed in the session's journal and tells
// the keeper: the keeper acts on the later of the two, so that a journal
// that cannot be written (its file system full) does not make the keeper
// kill a complete guest for one in post-copy.
func (d *dest) reached(st keeper.State) {
	if err := d.journalState(st); err != nil {
		d.log.Warn("journal the session's state", "state", st, "error", err)
	}
	if d.keep != nil {
		if err := keeper.Tell(d.keep, st); err != nil {
			d.log.Warn("tell the session's keeper", "state", st, "error", err)
		}
	}
}

// journalState records the session's state in its journal, if it keeps
// one.
func (d *dest) journalState(st keeper.State) error {
	if d.jr == nil {
		return nil
	}
	d.jr.State = st
	if err := d.jr.Write(d.dir); err != nil {
		return classed(wire.ErrorResource, err)
	}
	return nil
}

// openSession makes the session's directory, takes its lock and starts
// its keeper, before anything else of the session exists.
func (d *dest) openSession() error {
	if d.cfg.Dir == "" {
		return nil
	}
	d.dir = SessionDir(d.cfg.Dir, d.sess.ID())
	if err := os.MkdirAll(d.dir, 0o700); err != nil {
		return classed(wire.ErrorResource, fmt.Errorf("create session directory: %w", err))
	}
	lock, err := keeper.Lock(d.dir)
	if err != nil {
		return classed(wire.ErrorResource, fmt.Errorf("lock session %s: %w", d.sess.ID(), err))
	}
	d.lock = lock
	if d.cfg.Keeper != nil {
		k, err := d.cfg.Keeper(keeper.Config{Dir: d.dir, RecoverTimeout: d.cfg.RecoverTimeout})
		if err != nil {
			return fmt.Errorf("start the session's keeper: %w", err)
		}
		d.keep = k
	}
	return nil
}

// openJournal starts the session's journal, once the guest is started,
// and names the guest to the keeper.
func (d *dest) openJournal(paths []string) error {
	if d.cfg.Dir == "" {
		return nil
	}
	start, err := keeper.StartTime(d.pid)
	if err != nil {
		return err
	}
	d.jr = &keeper.Journal{Session: d.sess.ID(), Guest: d.sess.Hello.Guest, State: keeper.Starting,
		Pid: d.pid, PidStart: start, UffdFD: -1, Paths: paths, Hello: d.sess.Hello}
	if sr, ok := d.g.(SignalResumer); ok {
		d.jr.ResumeBySignal = sr.ResumesBySignal()
	}
	if err := d.jr.Write(d.dir); err != nil {
		return classed(wire.ErrorResource, err)
	}
	if d.keep != nil {
		if err := keeper.TellGuest(d.keep, d.pid, start); err != nil {
			return err
		}
	}
	return nil
}

// closeJournal ends the session's hold on its directory: after a failure
// the directory goes (the guest was killed); after completion it stays
// with the guest, whose keeper removes it when the guest exits.
func (d *dest) closeJournal(failed bool) {
	// The directory may exist before the journal does (the guest made it
	// and died before it was ready).
	if failed && d.cfg.Dir != "" {
		dir := SessionDir(d.cfg.Dir, d.sess.ID())
		if err := os.RemoveAll(dir); err != nil {
			d.log.Warn("remove session directory", "dir", dir, "error", err)
		}
	}
	if d.lock != nil {
		d.lock.Close()
	}
	if d.keep != nil {
		d.keep.Close()
	}
}

// Resend, Verdict and PageRequest are the restorer's sender: on the
// current link.
func (d *dest) Resend(ctx context.Context, runs []wire.Run) error {
	return writeOn(ctx, d.conns().Control, &wire.Resend{Pages: runs})
}

func (d *dest) Verdict(ctx context.Context, v *wire.Verdict) error {
	return writeOn(ctx, d.conns().Control, v)
}

func (d *dest) PageRequest(ctx context.Context, block uint32, page uint64, count uint32) error {
	return writeOn(ctx, d.conns().Urgent, &wire.PageRequest{Block: block, Page: page, Count: count})
}

// writeOn writes m on c, which is nil while an adopted session has no
// link yet (what is asked meanwhile is asked again by adopt's Missing).
func writeOn(ctx context.Context, c *wire.Conn, m wire.Message) error {
	if c == nil {
		return errors.New("no link to the source")
	}
	return c.WriteFrame(ctx, m)
}

// newRestorer makes the session's restorer, on the guest's shared disks
// and Config.Disks over them (the operator's word wins).
func (d *dest) newRestorer() *restorer {
	disks := map[string]string{}
	if sd, ok := d.g.(SharedDisker); ok {
		maps.Copy(disks, sd.SharedDisks())
	}
	maps.Copy(disks, d.cfg.Disks)
	return newRestorer(restoreOptions{Log: d.log, Active: d.sess.Hello.Flags&wire.FlagStorageRefs != 0, Disks: disks, Rate: d.cfg.PostcopyRestoreRate}, d.placer, d)
}
