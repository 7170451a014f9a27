package dbrestore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/dmig/dmig/internal/keeper"
	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/uffd"
	"github.com/dmig/dmig/wire"
)

// adopted is a guest a dead serve left in post-copy: it runs, blocked on
// the pages it lacks; all this side can still do to it is kill it.
type adopted struct {
	pid      int
	start    uint64
	bySignal bool // Resume is SIGCONT (SignalResumer)
}

func (a *adopted) Create(context.Context, []wire.Block) ([]string, error) {
	return nil, errors.New("an adopted guest has its RAM")
}
func (a *adopted) Start(context.Context) (int, error) {
	return 0, errors.New("an adopted guest runs")
}

// Resume resumes a guest adopted at Ready, if it resumes by signal.
func (a *adopted) Resume(context.Context) error {
	if !a.bySignal {
		return errors.New("a guest adopted before it resumed can be resumed only if it resumes on SIGCONT (a process guest)")
	}
	p, err := keeper.Open(a.pid, a.start)
	if err != nil {
		return err
	}
	defer p.Close()
	return p.Continue()
}

func (a *adopted) Kill() error {
	p, err := keeper.Open(a.pid, a.start)
	if errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	if err != nil {
		return err
	}
	defer p.Close()
	return p.Kill()
}

// adopt finishes the post-copy of a session whose serve died (Reclaim's
// orphan): it takes the uffd back from the guest, finds what is missing
// from the RAM files' holes, waits for the source to reconnect, and serves
// the guest until every page is placed. If the source does not come back
// within Config.RecoverTimeout the guest is killed.
func adopt(ctx context.Context, o keeper.Orphan, cfg Config, recovered <-chan *wire.Session) (fig *report.Dest, err error) {
	cfg.defaults()
	j := o.Journal
	h := j.Hello
	// The source sends only data after a reconnection.
	h.Flags &^= wire.FlagStorageRefs
	d := &dest{cfg: cfg, sess: &wire.Session{Hello: h}, g: &adopted{pid: j.Pid, start: j.PidStart, bySignal: j.ResumeBySignal}, recovered: recovered,
		log: cfg.Logger.With("guest", j.Guest, "session", j.Session.String()[:8], "adopted", true)}
	d.init()
	d.dir, d.jr, d.lock, d.pid = o.Dir, j, o.Lock, j.Pid
	atReady := j.State == keeper.Ready
	d.phase.Store(phaseResumed)
	if atReady {
		d.phase.Store(phaseReady)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer d.closeLink()
	defer func() { err = d.failed(err); d.cleanup(err != nil) }()
	if d.exited, err = keeper.Watch(d.pid); err != nil {
		return nil, fmt.Errorf("watch guest pid %d: %w", d.pid, err)
	}
	d.watchGuest(ctx, cancel)
	if err := d.reopen(); err != nil {
		return nil, err
	}
	d.restore = d.newRestorer()
	defer d.restore.close()
	d.started = time.Now()
	if cfg.Watch != nil {
		end := cfg.Watch(d.snapshot)
		defer func() { end(err) }()
	}
	close(d.switched)
	d.restore.carriedMissing()
	if !atReady {
		d.restore.release()
		// The serve that died may have journaled Resumed and not yet
		// resumed the guest; SIGCONT to a running one does nothing.
		if j.ResumeBySignal {
			if err := d.g.Resume(ctx); err != nil {
				return nil, fmt.Errorf("resume the adopted guest pid %d: %w", d.pid, err)
			}
		}
	}
	if cfg.Keeper != nil {
		k, err := cfg.Keeper(keeper.Config{Dir: d.dir, Pid: d.pid, PidStart: j.PidStart, RecoverTimeout: cfg.RecoverTimeout})
		if err != nil {
			return nil, fmt.Errorf("start the session's keeper: %w", err)
		}
		d.keep = k
	}
	faults := &faultServer{err: make(chan error, 1)}
	sctx, stop := context.WithCancel(ctx)
	faults.cancel = stop
	d.serving = true
	go func() {
		err := safely(func() error { return d.serveFaults(sctx) })
		if err != nil {
			cancel(err)
		}
		faults.err <- err
	}()
	defer faults.stop()
	d.log.Info("adopted a guest in post-copy; waiting for its source", "pid", d.pid, "missing", d.missing.Load(), "recover_timeout", cfg.RecoverTimeout)
	if d.missing.Load() == 0 {
		d.doneOnce.Do(func() { close(d.done) })
	}
	if err := d.reconnect(ctx, errors.New("serve restarted during post-copy")); err != nil {
		return nil, err
	}
	// The source reconnects only after Go: a guest adopted at Ready is
	// resumed now, if this serve can (by signal). One it cannot (QEMU,
	// through its own QMP socket) fails here, still at Ready: it is
	// killed, never having run, and the source told to resume its own.
	if atReady && !j.ResumeBySignal {
		return nil, fmt.Errorf("guest pid %d was adopted before it resumed and resumes only through its own QMP socket, which this serve does not have", d.pid)
	}
	if atReady {
		if err := d.resume(ctx); err != nil {
			return nil, err
		}
	}
	if err := d.servePostcopy(ctx); err != nil {
		return nil, err
	}
	return d.complete(ctx, 0, faults)
}

// reopen opens the adopted guest's RAM files and mappings, takes its kept
// uffd back, and makes every page in a hole missing: a page is placed in
// the file before it is woken, so a hole is a page the guest has not got
// (or a zero page never sent, which the source then sends as zero).
func (d *dest) reopen() error {
	j := d.jr
	if len(j.Paths) != len(j.Hello.Blocks) {
		return fmt.Errorf("journal of session %s names %d RAM files for %d blocks", j.Session, len(j.Paths), len(j.Hello.Blocks))
	}
	if j.UffdFD < 0 {
		return fmt.Errorf("journal of session %s has no kept uffd", j.Session)
	}
	for i, blk := range j.Hello.Blocks {
		b, err := openDstBlock(uint32(i), blk, j.Paths[i])
		if err != nil {
			return err
		}
		d.blocks = append(d.blocks, b)
		if err := b.FindMappings(d.pid); err != nil {
			return err
		}
		// What the RAM file holds is what was placed; its holes are
		// what the guest still faults on.
		next := uint64(0)
		if err := b.DataPages(func(first, count uint64) {
			b.missing.AddRange(next, first-next)
			next = first + count
		}); err != nil {
			return err
		}
		b.missing.AddRange(next, b.npages-next)
		d.missing.Add(int64(b.missing.Count()))
	}
	u, err := uffd.Reacquire(d.pid, j.UffdFD, uffd.FeatureMissingShmem|uffd.FeatureThreadID)
	if err != nil {
		return fmt.Errorf("take the uffd back from guest pid %d: %w", d.pid, err)
	}
	d.u = u
	return nil
}
