package precopy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/dmig/dmig/internal/cause"
	"github.com/dmig/dmig/internal/clock"
	"github.com/dmig/dmig/internal/pages"
	"github.com/dmig/dmig/internal/ramfile"
	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/uffd"
	"github.com/dmig/dmig/wire"
)

// Run migrates guest g to the destination cfg.To and returns the report.
// Until the destination resumes, any failure aborts: the source guest is
// resumed with its memory untouched and the report's outcome is Aborted.
func Run(ctx context.Context, cfg Config, g Guest) (*report.Report, error) {
	cfg.defaults()
	s := &source{cfg: cfg, g: g, log: cfg.Logger.With("guest", g.Name()), start: time.Now()}
	s.rep = report.Report{Mode: string(cfg.Mode), Guest: g.Name(), Compressed: cfg.Compress}
	if cfg.Compress {
		s.rep.Codec = cfg.Codec.String()
	}
	err := s.run(ctx)
	if err != nil {
		s.reportRefs() // what the passes that ran did
	}
	end := time.Now()
	s.rep.TotalMS = report.MS(end.Sub(s.start))
	if !s.completedAt.IsZero() {
		// The migration's time ends with the destination's Complete, as
		// QEMU's total-time does; what the source then spends letting go
		// of the guest is reported beside it.
		s.rep.TotalMS = report.MS(s.completedAt.Sub(s.start))
		s.rep.TeardownMS = report.MS(end.Sub(s.completedAt))
	}
	s.rep.BytesSent = s.bytesSent()
	s.rep.Bandwidth = cfg.Bandwidth.Stats().Report()
	if err != nil {
		s.rep.Error = err.Error()
		if s.rep.Outcome == "" {
			s.rep.Outcome = report.Aborted
		}
		return &s.rep, err
	}
	s.rep.Outcome = report.Completed
	return &s.rep, nil
}

type source struct {
	cfg   Config
	g     Guest
	log   hclog.Logger
	start time.Time
	// completedAt is when the destination's Complete arrived (zero until
	// then): the end of the migration's total time.
	completedAt time.Time
	rep         report.Report

	blocks  []*srcBlock
	refs    *refSource // nil: no storage references
	u       *uffd.FD
	tracker *uffd.DirtyTracker
	sess    *wire.Session

	dataPages, zeroPages atomic.Uint64
	// firstPass counts the first pass's pages by route (hybrid mode).
	firstPass routes
	// resent counts pages the destination handed back (wire.Resend) that
	// went again as data or zero in a later pre-copy pass.
	resent atomic.Uint64
	// live is what Config.Live's snapshot reads.
	live liveState
	// sentAgain counts sends of a page beyond its first (srcBlock.sent).
	sentAgain atomic.Uint64
	// batchesOut counts the pre-copy batches written; batchesApplied is
	// the destination's latest count of those it applied (Progress).
	batchesOut, batchesApplied atomic.Uint64
	// pausing is set just before the guest is paused: a Resend arriving
	// later no longer makes pages pending (the destination owes them after
	// switchover instead).
	pausing atomic.Bool

	// Set by the control reader.
	verdictMu   sync.Mutex
	verdict     wire.Verdict  // the destination's latest
	verdictCh   chan struct{} // a Verdict arrived (capacity 1)
	ready       chan struct{}
	readyOnce   sync.Once
	resumed     chan struct{}
	resumedOnce sync.Once
	completed   chan *wire.Complete
	// After a reconnection the session sends exactly what the destination
	// lists as missing, as data (no storage references), and bytesSent
	// adds the earlier links' bytes.
	dataOnly   bool
	sentBefore uint64
	// paused: the guest was (perhaps) paused for switchover; goSent: Go
	// was sent (or its sending tried), after which it stays paused on
	// failure. Main goroutine only.
	paused, goSent bool
	// prepared: the guest's device-state setup ran (DeviceStatePreparer),
	// to be undone if the migration aborts.
	prepared bool
}

// srcBlock is one RAM block of the guest, open and mapped read-only
// (ramfile.Block), with what the source tracks of its pages.
type srcBlock struct {
	*ramfile.Block
	idx     uint32
	npages  uint64
	pending *pages.Set // not yet sent since last written
	hot     *pages.Set // written in the last interval (post-copy pushes these first)
	data    *pages.Set // pages that are not holes, for the first pass
	// noref: pages whose storage reference failed at the destination; the
	// layout is wrong for their content, so they go as data until the
	// guest writes them again.
	noref *pages.Set
	// resend: pages handed back by the destination and not sent again yet.
	resend *pages.Set
	// sent: pages sent at least once, on any connection, as anything.
	sent *pages.Set
}

// noteSent counts a send of page p of b, and whether it is a repeat; it
// reports whether it was the page's first.
func (s *source) noteSent(b *srcBlock, p uint64) bool {
	if !b.sent.Add(p) {
		s.sentAgain.Add(1)
		return false
	}
	return true
}

func (s *source) bytesSent() uint64 {
	if s.sess == nil {
		return 0
	}
	n := s.sentBefore
	for _, c := range append([]*wire.Conn{s.sess.Control, s.sess.Urgent}, s.sess.Bulk...) {
		if c != nil {
			n += c.BytesWritten()
		}
	}
	return n
}

// run is one migration, phase by phase: set up, pre-copy passes,
// switchover, then Go and the wait for the destination's Complete.
func (s *source) run(ctx context.Context) (err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer s.cleanup()
	if err := s.open(); err != nil {
		return err
	}
	tOpen := time.Now()
	s.refs = newRefSource(s.cfg, s.blocks, s.g)
	// The first pass's layout is walked while the source sets up.
	s.refs.startFetch(ctx, 1, s.guestPages())
	if err := s.track(); err != nil {
		return err
	}
	tTrack := time.Now()
	s.live.setPhase(report.PhaseConnecting)
	if err := s.dial(ctx); err != nil {
		return err
	}
	s.log.Debug("setup steps", "open", tOpen.Sub(s.start), "track", tTrack.Sub(tOpen), "dial", time.Since(tTrack))
	s.publish()
	base := ctx
	ctx, cancelCause := context.WithCancelCause(ctx)
	defer func() { cancelCause(nil) }()
	go s.readControl(ctx, cancelCause)
	defer func() { err = s.abort(err) }()

	iter, dec, err := s.iterate(ctx)
	if err != nil {
		return err
	}
	sw, err := s.switchover(ctx, iter, dec)
	if sw != nil {
		defer sw.post.close()
	}
	if err != nil {
		return err
	}
	return s.goAndComplete(ctx, base, cancelCause, sw, iter)
}

// abort applies the failure rule to err (nil: success): before the
// destination may run the guest, the session is aborted and the source
// guest resumed; from Go on it stays paused.
func (s *source) abort(err error) error {
	if err == nil || s.goSent {
		return err
	}
	if s.sess != nil {
		actx, acancel := context.WithTimeout(context.Background(), time.Second)
		_ = s.sess.Control.WriteFrame(actx, &wire.Abort{Reason: trim(err.Error())})
		acancel()
	}
	if s.paused {
		rctx, rcancel := context.WithTimeout(context.Background(), abortResumeTimeout)
		rerr := s.g.Resume(rctx)
		rcancel()
		if rerr != nil {
			err = errors.Join(err, fmt.Errorf("resume source guest after abort: %w: %w", ErrSourcePaused, rerr))
			s.log.Error("migration aborted; the source guest could not be resumed and stays paused", "error", err)
			return err
		}
	}
	s.unprepare()
	s.log.Error("migration aborted; source guest runs on", "error", err)
	return err
}

// unprepare undoes the guest's device-state setup on abort; a failure is
// logged, the guest runs on.
func (s *source) unprepare() {
	p, ok := s.g.(DeviceStatePreparer)
	if !s.prepared || !ok {
		return
	}
	uctx, cancel := context.WithTimeout(context.Background(), abortResumeTimeout)
	defer cancel()
	if err := p.UnprepareDeviceState(uctx); err != nil {
		s.log.Warn("the source guest keeps the settings of the aborted migration", "error", err)
	}
}

// iterate runs pre-copy passes until the policy decides to switch over,
// and returns the last pass and the decision.
func (s *source) iterate(ctx context.Context) (int, decision, error) {
	pol := &policy{mode: s.cfg.Mode, budget: s.cfg.Downtime, maxIterations: s.cfg.MaxIterations, switchCost: 5 * time.Millisecond}
	iter := 0
	dec := iterate
	var held time.Duration // the pause held for the restore (holdForRestore)
	if s.cfg.Mode == ModePostcopy {
		dec = postcopy
	}
	for dec == iterate {
		iter++
		s.prepareRefs(ctx, uint32(iter))
		s.countNamed(uint32(iter))
		t0 := time.Now()
		sent0 := s.bytesSent()
		stopAhead := s.fetchAhead(ctx, uint32(iter))
		n, err := s.pass(ctx, uint32(iter))
		stopAhead()
		if err != nil {
			return iter, dec, cause.Of(ctx, fmt.Errorf("pre-copy pass %d: %w", iter, err))
		}
		elapsed := time.Since(t0)
		bytes := s.bytesSent() - sent0
		// Before collecting: what the destination hands back meanwhile
		// is pending for the next pass.
		owed := s.awaitVerdict(ctx, max(elapsed, minVerdictWait))
		remaining, err := s.collect()
		if err != nil {
			return iter, dec, err
		}
		s.rep.IterationLog = append(s.rep.IterationLog, report.Iteration{Pages: n, Bytes: bytes, MS: report.MS(elapsed), DirtyPages: remaining})
		dec = pol.next(iter, bytes, elapsed, remaining, owed)
		if dec != iterate && iter < s.cfg.MaxIterations && s.holdForRestore(ctx, &held) {
			dec = iterate
		}
		s.log.Debug("pass done", "iteration", iter, "pages", n, "bytes", bytes, "elapsed", elapsed, "dirty", remaining, "owed", owed, "decision", dec)
		s.progress(report.PhasePrecopy, iter, remaining, float64(bytes)/elapsed.Seconds())
	}
	s.rep.Iterations = iter
	s.refs.dropAhead() // fetched for a pass that will not run
	return iter, dec, nil
}

// switched is what the switchover leaves running: the post-copy work on
// the first link, and when the guest was paused.
type switched struct {
	post   *postcopyLink
	goSent chan struct{} // closed once Go is out: the push starts
	tPause time.Time
}

// switchover pauses the guest, sends what pre-copy still owes (the last
// pass in pre-copy mode, the device state) and Switchover, starts serving
// post-copy, and waits for the destination's Ready.
func (s *source) switchover(ctx context.Context, iter int, dec decision) (*switched, error) {
	if dec == postcopy {
		s.prepareFinalRefs(ctx)
	}
	if err := s.settle(ctx); err != nil {
		return nil, err
	}
	if p, ok := s.g.(DeviceStatePreparer); ok {
		s.prepared = true
		if err := p.PrepareDeviceState(ctx); err != nil {
			return nil, cause.Of(ctx, fmt.Errorf("prepare device state: %w", err))
		}
	}
	if err := s.cfg.Guard.Pausing(ctx); err != nil {
		return nil, fmt.Errorf("arm the guard before pausing: %w", err)
	}
	s.pausing.Store(true)
	s.live.setPhase(report.PhaseSwitchover)
	tPause := time.Now()
	// Paused from the attempt on: a Pause that fails half-way (its wait
	// for the threads to stop cancelled) may have stopped the guest.
	s.paused = true
	if err := s.g.Pause(ctx); err != nil {
		return nil, cause.Of(ctx, fmt.Errorf("pause guest: %w", err))
	}
	tPaused := time.Now()
	if _, err := s.collect(); err != nil {
		return nil, err
	}
	tCollected := time.Now()
	final := uint32(iter)
	// Pre-copy sends the remainder while the guest is paused. Hybrid leaves
	// it, small by now, to post-copy: the downtime is then only the
	// switchover itself, whatever the remainder.
	if dec == finish && s.cfg.Mode == ModePrecopy {
		final++
		if _, err := s.pass(ctx, final); err != nil {
			return nil, cause.Of(ctx, fmt.Errorf("final pass: %w", err))
		}
	}
	tFinal := time.Now()
	var pending []wire.Run
	for _, b := range s.blocks {
		pending = pages.AppendRuns(pending, b.idx, b.pending)
	}
	s.rep.PostcopyPages = wire.PageCount(pending)
	// Switchover goes ahead of the device state: the destination marks the
	// pending pages missing while the VMM writes its state, then loads the
	// state as it arrives, the load overlapping its transfer.
	ds, hasDS := s.g.(DeviceStater)
	if err := s.sess.Control.WriteFrame(ctx, &wire.Switchover{Iteration: final, Pending: pending, DeviceState: hasDS}); err != nil {
		return nil, cause.Of(ctx, fmt.Errorf("send switchover: %w", err))
	}
	sw := &switched{goSent: make(chan struct{}), tPause: tPause}
	// Post-copy pages are served from here on: the destination's VMM may
	// fault on a pending page while it loads the device state.
	sw.post = s.startPostcopy(ctx, len(pending) > 0, sw.goSent, iter)
	if hasDS {
		n, err := s.sendDeviceState(ctx, ds)
		if err != nil {
			return sw, cause.Of(ctx, err)
		}
		s.log.Info("device state sent", "bytes", n, "elapsed", time.Since(tFinal))
	}
	tDevice := time.Now()
	// Until we send Go the destination certainly has not resumed: a failure
	// here is a clean abort.
	select {
	case <-s.ready:
		// Where the source's share of the downtime goes.
		s.log.Debug("switchover steps", "pause", tPaused.Sub(tPause), "collect", tCollected.Sub(tPaused),
			"final_pass", tFinal.Sub(tCollected), "device_state", tDevice.Sub(tFinal), "until_ready", time.Since(tDevice))
		return sw, nil
	case <-ctx.Done():
		return sw, cause.Of(ctx, errors.New("destination lost before it was ready to resume"))
	}
}

// Before the pause, the bulk connections are let drain until at most
// settledBytes are unacknowledged, and the destination's restore until
// at most settledRefs references are unchecked, for up to settleMax.
const (
	settledBytes = 128 << 10 // about 1 ms at 1 Gbit/s
	// settledRefs: the destination makes each reference still unchecked
	// at switchover missing, guest paused (0.2-1 µs a page), and restores
	// it after resume; at 8 GiB that was 45-80 k references and 18-67 ms
	// of the downtime.
	settledRefs = 4096
	settleMax   = 2 * time.Second
	// settleRefsMax bounds the wait for the restore alone: a restore far
	// behind (a slow disk) would keep the guest writing pages that the
	// pause must then make missing, at 3 µs each.
	settleRefsMax = 500 * time.Millisecond
)

// A pause while the destination's restore is far behind carries its
// unchecked references past the switchover: the destination makes their
// pages missing during the downtime (34 ms for 146 k at 8 GiB, and the
// reads in flight slow the source's scan at pause) and restores them
// after the resume, when the guest's faults wait for them. As long as the
// restore is catching up, the pause is held instead: the source waits up
// to restoreHoldStep for it, then runs another pass for what the guest wrote
// meanwhile, so the final pass stays short; for restoreHoldMax in all at most.
// The migration ends when the restore does either way, and until the
// pause a failure still leaves the guest running on the source.
const (
	restoreHoldStep = 500 * time.Millisecond
	restoreHoldMax  = 15 * time.Second
)

// holdForRestore reports whether the pass just done should be followed by
// another, the pause held for the restore: it is more than settledRefs
// references behind, and checked some while the source waited for it (a
// restore that stopped moving is not waited for). held adds up the waits.
func (s *source) holdForRestore(ctx context.Context, held *time.Duration) bool {
	before := s.uncheckedRefs()
	if before <= settledRefs || *held >= restoreHoldMax {
		return false
	}
	t0 := time.Now()
	timer := time.NewTimer(min(restoreHoldStep, restoreHoldMax-*held))
	defer timer.Stop()
wait:
	for s.uncheckedRefs() > settledRefs {
		select {
		case <-s.verdictCh:
		case <-timer.C:
			break wait
		case <-ctx.Done():
			return false
		}
	}
	*held += time.Since(t0)
	after := s.uncheckedRefs()
	s.log.Debug("pause held for the restore", "unchecked_before", before, "unchecked_after", after, "held", *held)
	return after < before
}

// settle waits, the guest still running, until the passes' batches have
// reached the destination and been applied there: bytes still in flight
// when the guest pauses (a shaped link's queue holds tens of milliseconds
// of them), and batches acknowledged but waiting in the destination's
// socket buffers (a destination short of CPU), are waited for by the
// destination's switchover barrier, guest paused. They take as long
// either way; waiting here moves that time out of the downtime. So with
// the references the destination's restore has not checked: each costs
// the paused guest a step at switchover, and is read after resume anyway.
// A connection whose queue cannot be read ends the wait.
func (s *source) settle(ctx context.Context) error {
	t0 := time.Now()
	for {
		n := 0
		for _, c := range s.sess.Bulk {
			u, err := c.Unacked()
			if err != nil {
				s.log.Debug("not waiting for the link to drain", "error", err)
				return nil
			}
			n += u
		}
		out := s.batchesOut.Load()
		behind := out - min(out, s.batchesApplied.Load())
		unchecked := s.uncheckedRefs()
		waited := time.Since(t0)
		if n <= settledBytes && behind <= uint64(len(s.sess.Bulk)) && (unchecked <= settledRefs || waited >= settleRefsMax) || waited >= settleMax {
			s.log.Debug("link and restore drained before the pause", "unacked", n, "batches_behind", behind,
				"unchecked_refs", unchecked, "waited", time.Since(t0))
			return nil
		}
		if err := clock.Sleep(ctx, time.Millisecond); err != nil {
			return cause.Of(ctx, fmt.Errorf("wait for the link to drain: %w", err))
		}
	}
}

// uncheckedRefs is how many of the storage references sent the
// destination's restore has not checked yet, by its latest Verdict (0
// outside hybrid mode).
func (s *source) uncheckedRefs() uint64 {
	if s.refs == nil || s.cfg.Mode != ModeHybrid {
		return 0
	}
	sent := s.refs.sent.Load()
	s.verdictMu.Lock()
	checked := s.verdict.Checked
	s.verdictMu.Unlock()
	return sent - min(sent, checked)
}

// startPostcopy serves the first link's post-copy: page requests, the push
// once Go is out, progress.
func (s *source) startPostcopy(ctx context.Context, owed bool, goSent <-chan struct{}, iter int) *postcopyLink {
	var wg sync.WaitGroup
	pctx, stop := context.WithCancel(ctx)
	// With storage references the destination may also ask for pages whose
	// disk copy failed its check, whatever Pending says.
	if owed || s.refs != nil {
		wg.Add(3)
		gate := &faultGate{urgent: s.sess.Urgent}
		go func() { defer wg.Done(); s.servePages(pctx, gate) }()
		// Push only once Go is out: on a shaped link the pushed pages would
		// queue ahead of Ready and Go and stretch the downtime (a 1 Gbit/s
		// tbf queue held Go for ~50 ms behind 20 MB of pushes).
		go func() {
			defer wg.Done()
			select {
			case <-goSent:
				s.push(pctx, gate)
			case <-pctx.Done():
			}
		}()
		go func() { defer wg.Done(); s.watchPostcopy(pctx, iter) }()
	}
	return &postcopyLink{ctx: ctx, stop: stop, wg: &wg}
}

// goAndComplete sends Go and waits for Complete, reconnecting as the
// links fail. From Go on, a lost destination may or may not run the
// guest: the source guest then stays paused (docs/failures.md).
func (s *source) goAndComplete(ctx, base context.Context, fail context.CancelCauseFunc, sw *switched, iter int) error {
	if err := s.cfg.Guard.Going(ctx); err != nil {
		return fmt.Errorf("tell the guard before go: %w", err)
	}
	s.goSent = true
	s.live.goSent.Store(true)
	if s.cfg.Mode != ModePrecopy {
		s.live.setPhase(report.PhasePostcopy)
	}
	if err := s.sess.Control.WriteFrame(ctx, &wire.Go{}); err != nil {
		fail(fmt.Errorf("send go: %w", err))
	} else {
		close(sw.goSent)
	}
	done, err := s.awaitComplete(base, sw.post, sw.tPause, iter)
	var notResumed *notResumedError
	if errors.As(err, &notResumed) {
		// The abort path resumes the guest: the destination's never ran.
		s.goSent = false
		s.live.goSent.Store(false)
		return err
	}
	if err != nil {
		s.rep.Outcome = report.FailedAfterResume
		return fmt.Errorf("%w; the guest stays paused on the source with its memory intact: resume it only if the destination guest is not running", err)
	}
	s.mergeDest(done)
	s.completedAt = time.Now()
	s.live.setPhase(report.PhaseDone)
	s.progress(report.PhaseDone, iter, 0, 0)
	if err := s.g.Finish(ctx); err != nil {
		s.log.Warn("finish source guest", "error", err)
	}
	return nil
}

func trim(s string) string {
	if len(s) > 1000 {
		return s[:1000]
	}
	return s
}

func (s *source) open() error {
	for i, b := range s.g.RAM() {
		// One migration of a guest at a time: the RAM file's lock is its
		// identity.
		rf, err := ramfile.OpenBlock(b.Name, b.Path, b.Size, false, true)
		if err != nil {
			if errors.Is(err, ramfile.ErrLocked) {
				return fmt.Errorf("%w: %w", err, ErrBusy)
			}
			return err
		}
		n := rf.Pages()
		s.blocks = append(s.blocks, &srcBlock{Block: rf, idx: uint32(i), npages: n,
			pending: pages.NewSet(n), hot: pages.NewSet(n), noref: pages.NewSet(n), resend: pages.NewSet(n), sent: pages.NewSet(n)})
	}
	if len(s.blocks) == 0 {
		return errors.New("guest has no RAM blocks")
	}
	return nil
}

// track attaches to the guest and write-protects its RAM before any page is
// read, so every later write is seen.
func (s *source) track() error {
	u, err := uffd.Attach(s.g.Pid(), uffd.DirtyFeatures)
	if err != nil {
		return fmt.Errorf("track dirty pages: %w", err)
	}
	s.u = u
	var ranges []uffd.Range
	for _, b := range s.blocks {
		if err := b.FindMappings(s.g.Pid()); err != nil {
			return err
		}
		for _, m := range b.Maps {
			if !m.Shared() {
				return fmt.Errorf("guest pid %d maps RAM block %s privately (%s): its writes would not reach the file; map it MAP_SHARED", s.g.Pid(), b.Name, m.Perms)
			}
			r := uffd.Range{Start: m.Start, Len: m.Len()}
			if _, err := u.Register(r, uffd.ModeWP); err != nil {
				return fmt.Errorf("track RAM block %s: %w", b.Name, err)
			}
			ranges = append(ranges, r)
		}
	}
	if s.tracker, err = u.TrackDirty(ranges...); err != nil {
		return err
	}
	// Everything is to be sent; holes need not be read.
	for _, b := range s.blocks {
		b.pending.Fill()
		b.data = pages.NewSet(b.npages)
		if err := b.DataPages(b.data.AddRange); err != nil {
			return err
		}
	}
	return nil
}

// collect harvests written pages into the pending sets; the hot sets become
// exactly those.
func (s *source) collect() (uint64, error) {
	runs, err := s.tracker.Collect(nil)
	if err != nil {
		if moved := s.remapped(); moved != "" {
			return 0, fmt.Errorf("collect dirty pages: %s: its writes there cannot be tracked: %w", moved, err)
		}
		return 0, fmt.Errorf("collect dirty pages: %w", err)
	}
	for _, b := range s.blocks {
		b.hot.Clear()
	}
	for _, r := range runs {
		b, first, n := s.locate(r)
		if b == nil {
			return 0, fmt.Errorf("dirty range %v is in no RAM block mapping", r)
		}
		for p := first; p < first+n; p++ {
			b.pending.Add(p)
			b.hot.Add(p)
			// New content may have a correct home in a newer layout (a
			// buffer-pool frame that loaded another page).
			b.noref.Remove(p)
			if b.data != nil {
				b.data.Add(p)
			}
		}
	}
	return s.pendingPages(), nil
}

// remapped says how the guest's mappings of its RAM changed since tracking
// began ("" if they did not): a guest that unmaps or moves its RAM takes it
// out of dirty tracking, and the migration must stop.
func (s *source) remapped() string {
	for _, b := range s.blocks {
		why, err := b.Remapped(s.g.Pid())
		if err != nil {
			return fmt.Sprintf("guest pid %d is gone or unreadable (%v)", s.g.Pid(), err)
		}
		if why != "" {
			return why
		}
	}
	return ""
}

// locate maps a guest address range to a block and its file pages.
func (s *source) locate(r uffd.Range) (*srcBlock, uint64, uint64) {
	for _, b := range s.blocks {
		for _, m := range b.Maps {
			if r.Start >= m.Start && r.End() <= m.End {
				first := (uint64(r.Start-m.Start) + m.Offset) / pageSize
				return b, first, uint64(r.Len) / pageSize
			}
		}
	}
	return nil, 0, 0
}

func (s *source) dial(ctx context.Context) error {
	h := wire.Hello{
		Mode:      string(s.cfg.Mode),
		Guest:     s.g.Name(),
		BulkConns: uint16(s.cfg.BulkConns),
		Command:   s.g.DestCommand(),
	}
	if s.cfg.Mode != ModePrecopy {
		h.Flags |= wire.FlagPostcopy
	}
	if s.refs != nil {
		h.Flags |= wire.FlagStorageRefs
	}
	if s.cfg.Compress {
		h.SetCodec(s.cfg.Codec)
	}
	for _, b := range s.blocks {
		h.Blocks = append(h.Blocks, wire.Block{Name: b.Name, Size: uint64(len(b.Mem))})
	}
	h.Session = wire.NewSessionID()
	if m, ok := s.g.(DiskMarker); ok {
		// A disk that cannot be marked (a file system without user
		// xattrs) is refused by a destination on another host; one on this
		// host compares device and inode instead.
		if err := m.MarkDisks(ctx, h.Session); err != nil {
			s.log.Warn("mark the guest's disks for the destination's identity check", "error", err)
		}
	}
	sess, err := wire.Dial(ctx, s.cfg.To, h, wire.WithTLS(s.cfg.TLS), wire.WithLinkTimeout(s.cfg.LinkTimeout), wire.WithTimeout(s.cfg.ConnectTimeout))
	if err != nil {
		return fmt.Errorf("connect to destination %s: %w", s.cfg.To, err)
	}
	s.sess = sess
	pace(sess, s.cfg.Bandwidth)
	s.ready = make(chan struct{})
	s.verdictCh = make(chan struct{}, 1)
	s.resumed = make(chan struct{})
	s.completed = make(chan *wire.Complete, 1)
	return nil
}

// notResumedError: the destination aborted with its guest never resumed
// (and now dead), so the source guest may run on even after Go.
type notResumedError struct{ reason string }

func (e *notResumedError) Error() string { return "destination aborted: " + e.reason }

// remoteError is a failure the destination reported.
type remoteError struct {
	code wire.ErrorCode
	msg  string
}

func (e *remoteError) Error() string { return "destination: " + e.msg }

func (s *source) readControl(ctx context.Context, fail context.CancelCauseFunc) {
	s.readControlOf(ctx, s.sess, fail)
}

// readControlOf reads the control connection of sess (the first session,
// or a reconnection's) until it fails or Complete arrives.
func (s *source) readControlOf(ctx context.Context, sess *wire.Session, fail context.CancelCauseFunc) {
	for {
		m, err := sess.Control.ReadFrame(ctx)
		if err != nil {
			if ctx.Err() == nil {
				if errors.Is(err, io.EOF) {
					err = fmt.Errorf("destination closed the control connection: %w", err)
				}
				fail(fmt.Errorf("control connection: %w", err))
			}
			return
		}
		switch m := m.(type) {
		case *wire.Ready:
			s.readyOnce.Do(func() { close(s.ready) })
		case *wire.Resumed:
			s.resumedOnce.Do(func() { close(s.resumed) })
		case *wire.Complete:
			c := *m
			s.completed <- &c
			return
		case *wire.Error:
			fail(&remoteError{code: m.Code, msg: fmt.Sprintf("%v: %s", m.Code, m.Message)})
			return
		case *wire.Abort:
			// The destination aborts only while its guest has not run:
			// even after Go the source may then resume its own.
			fail(&notResumedError{reason: m.Reason})
			return
		case *wire.Progress:
			if m.Batches > s.batchesApplied.Load() {
				s.batchesApplied.Store(m.Batches)
			}
		case *wire.Resend:
			s.markResend(m.Pages)
		case *wire.Verdict:
			s.verdictMu.Lock()
			if m.Checked >= s.verdict.Checked {
				s.verdict = *m
			}
			s.verdictMu.Unlock()
			select {
			case s.verdictCh <- struct{}{}:
			default:
			}
		default:
			fail(fmt.Errorf("control connection: unexpected %v from destination", m.Type()))
			return
		}
	}
}

// The destination's verdict on the storage references is awaited after a
// pass until it covers verdictSample of them (or all, if fewer) and, if
// more than 1/badLayout of those failed, until it covers every one; at most
// as long as the pass took, and at least minVerdictWait. A busy buffer
// pool's churn fails a few percent (4 % in the 8 GiB benchmark): those are
// cheaper fetched after resume than waited for, since waiting holds the
// switchover until the whole restore is done; a tenth failing is a wrong
// layout.
const (
	verdictSample  = 256
	badLayout      = 10
	minVerdictWait = 20 * time.Millisecond
)

// awaitVerdict waits, at most limit, for the destination's verdict on the
// storage references sent so far, and returns how many of those it has not
// checked yet are expected to fail, at the rate the checked ones failed.
//
// A good layout costs no wait beyond a sample: references still unchecked
// at switchover are restored after resume. A wrong one is worth waiting
// for: its failures are handed back (wire.Resend) and go as data in the
// next pass, instead of being fetched from the paused source by post-copy
// fault, and the policy counts the failures still expected as pages to
// send, so it does not switch over while the restore lags behind them.
func (s *source) awaitVerdict(ctx context.Context, limit time.Duration) uint64 {
	if s.refs == nil || s.cfg.Mode != ModeHybrid {
		return 0
	}
	timer := time.NewTimer(limit)
	defer timer.Stop()
	for {
		sent := s.refs.sent.Load()
		s.verdictMu.Lock()
		v := s.verdict
		s.verdictMu.Unlock()
		if v.Checked >= sent {
			return 0
		}
		sampled := v.Checked >= min(sent, verdictSample)
		if sampled && v.Failed*badLayout < v.Checked {
			return 0
		}
		select {
		case <-s.verdictCh:
			continue
		case <-timer.C:
		case <-ctx.Done():
		}
		if !sampled {
			return 0
		}
		return (sent - v.Checked) * v.Failed / v.Checked
	}
}

// markResend makes the pages the destination handed back pending again,
// for the next pass, and never referenced again. The connection checked the
// runs against the blocks.
func (s *source) markResend(runs []wire.Run) {
	var n uint64
	late := s.pausing.Load()
	for _, r := range runs {
		b := s.blocks[r.Block]
		for p := r.Page; p < r.Page+r.Count; p++ {
			b.noref.Add(p)
			if late {
				continue
			}
			b.resend.Add(p)
			b.pending.Add(p)
			n++
		}
	}
	s.log.Debug("destination handed back failed storage references", "pages", wire.PageCount(runs), "pending_again", n)
}

// pass sends every pending page once over the bulk connections, then the
// iteration marker. It returns the pages sent.
func (s *source) pass(ctx context.Context, iter uint32) (uint64, error) {
	n := len(s.sess.Bulk)
	counts := make([]uint64, n)
	sent := make([]uint64, n)
	errs := make([]error, n)
	var cur *diskCursor
	if !s.dataOnly {
		if order := s.passOrder(iter); order != nil {
			cur = &diskCursor{order: order}
		}
	}
	// Each phase on every connection at once; the second starts once the
	// first has ended on all of them: a connection's disk-order walk may
	// leave a page pending for another (sendInDiskOrder), which that
	// one's page-order walk then sends.
	phase := func(send func(i int, c *wire.Conn) (uint64, uint64, error)) error {
		var wg sync.WaitGroup
		for i, c := range s.sess.Bulk {
			wg.Add(1)
			go func() {
				defer wg.Done()
				b, p, err := send(i, c)
				counts[i], sent[i], errs[i] = counts[i]+b, sent[i]+p, err
			}()
		}
		wg.Wait()
		return errors.Join(errs...)
	}
	if cur != nil {
		if err := phase(func(i int, c *wire.Conn) (uint64, uint64, error) { return s.sendBoth(ctx, c, i, n, iter, cur) }); err != nil {
			return 0, err
		}
	}
	if err := phase(func(i int, c *wire.Conn) (uint64, uint64, error) { return s.sendStripes(ctx, c, i, n, iter, nil, nil) }); err != nil {
		return 0, err
	}
	var total uint64
	for _, v := range sent {
		total += v
	}
	if err := s.sess.Control.WriteFrame(ctx, &wire.IterationEnd{Iteration: iter, Batches: counts}); err != nil {
		return 0, fmt.Errorf("send end of iteration %d: %w", iter, err)
	}
	return total, nil
}

// sendBoth sends, on bulk connection i of n, the pages of the disk order
// it takes from cur (sendInDiskOrder) and, at the same time, the pending pages the pass's
// layout does not name. The first costs the source CPU (a hash a page)
// and the link little (a reference is 26 bytes), the second the reverse:
// one after the other, the link idled for the seconds the references of a
// large pool took to make. The pages either leaves (named pages it found
// not pending, pages left to their own connection, pages handed back
// meanwhile) go in the pass's sendStripes.
func (s *source) sendBoth(ctx context.Context, c *wire.Conn, i, n int, iter uint32, cur *diskCursor) (batches, sent uint64, err error) {
	var dataBatches, dataSent uint64
	var dataErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		dataBatches, dataSent, dataErr = s.sendStripes(ctx, c, i, n, iter, nil, func(b *srcBlock, p uint64) bool {
			_, named := s.refs.lookup(b, p)
			return !named
		})
	}()
	batches, sent, err = s.sendInDiskOrder(ctx, c, i, n, iter, cur)
	<-done
	return batches + dataBatches, sent + dataSent, errors.Join(err, dataErr)
}

// sendStripes sends the pending pages that travel on bulk connection i (a
// page always takes the same one, wire.BulkConn, so a resend can never
// overtake an older copy of the page on another stream), restricted to the
// set only returns if only is not nil and to the pages keep accepts if keep
// is not nil. It returns batches and pages sent.
func (s *source) sendStripes(ctx context.Context, c *wire.Conn, i, n int, iter uint32, only func(b *srcBlock) *pages.Set, keep func(b *srcBlock, p uint64) bool) (batches, sent uint64, err error) {
	var batch wire.PageBatch
	flush := func() error { return s.flushBatch(ctx, c, &batch, &batches) }
	for _, b := range s.blocks {
		batch.Reset(b.idx, iter)
		src := b.pending
		if only != nil {
			src = only(b)
		}
		var werr error
		src.Runs(0, b.npages, func(start, count uint64) bool {
			for p := start; p < start+count; p++ {
				if wire.BulkConn(b.idx, p, n) != i || !b.pending.Has(p) || (keep != nil && !keep(b, p)) {
					continue
				}
				if !b.pending.Remove(p) {
					continue // taken by the post-copy page server
				}
				s.addPage(&batch, b, p)
				sent++
				if batch.Full() {
					if werr = flush(); werr != nil {
						return false
					}
					batch.Reset(b.idx, iter)
				}
			}
			return ctx.Err() == nil
		})
		if werr != nil {
			return batches, sent, werr
		}
		if err := ctx.Err(); err != nil {
			return batches, sent, err
		}
		if err := flush(); err != nil {
			return batches, sent, err
		}
	}
	return batches, sent, nil
}

// flushBatch writes batch on c if it holds any entry, counting it in
// batches (and, before switchover, in the batches the destination is to
// report applied).
func (s *source) flushBatch(ctx context.Context, c *wire.Conn, batch *wire.PageBatch, batches *uint64) error {
	if len(batch.Entries) == 0 {
		return nil
	}
	if err := c.WriteFrame(ctx, batch); err != nil {
		return err
	}
	*batches++
	if batch.Iteration != wire.IterationPostcopy {
		s.batchesOut.Add(1)
	}
	return nil
}

func (s *source) addPage(batch *wire.PageBatch, b *srcBlock, p uint64) {
	if b.resend.Remove(p) && batch.Iteration != wire.IterationPostcopy {
		s.resent.Add(1)
	}
	// The first pass's routes count each page once, as it first went: a
	// page handed back during the pass (its reference failed) may go
	// again, as data, before the pass ends.
	first := &s.firstPass
	if !s.noteSent(b, p) || batch.Iteration != 1 {
		first = nil
	}
	if b.data != nil && !b.data.Has(p) {
		batch.AddZero(p)
		s.zeroPages.Add(1)
		first.count(routeZero)
		return
	}
	page := b.Page(p)
	if isZero(page) {
		batch.AddZero(p)
		s.zeroPages.Add(1)
		first.count(routeZero)
		return
	}
	if !s.dataOnly && !b.noref.Has(p) && s.refs.add(batch, b, p, page) {
		first.count(routeReference)
		return
	}
	if first != nil {
		first.count(s.refs.why(b, p))
	}
	batch.AddData(p, page)
	s.dataPages.Add(1)
}

// push sends what post-copy still owes until everything is sent or ctx
// ends: first the storage references (26 bytes a page: a GiB of pool pages
// is sent in tens of milliseconds, after which the destination resolves
// faults on any of them from its disk instead of over the network), then
// the pages written last (the guest is likeliest to touch them again), then
// the rest.
func (s *source) push(ctx context.Context, gate *faultGate) {
	const iter = wire.IterationPostcopy
	n := len(s.sess.Bulk)
	var wg sync.WaitGroup
	for i, c := range s.sess.Bulk {
		c.SetPacer(&gatedPacer{g: gate, inner: s.cfg.Bandwidth.Bulk()})
		if err := c.SetNotSentLowat(pushLowat); err != nil {
			s.log.Warn("post-copy push: fault replies may queue behind it", "conn", i, "error", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !s.dataOnly && s.refs.pushable() {
				if _, _, err := s.sendStripes(ctx, c, i, n, iter, nil, s.refs.names); err != nil {
					if ctx.Err() == nil {
						s.log.Warn("post-copy push", "conn", i, "error", err)
					}
					return
				}
			}
			if _, _, err := s.sendStripes(ctx, c, i, n, iter, func(b *srcBlock) *pages.Set { return b.hot }, nil); err != nil {
				if ctx.Err() == nil {
					s.log.Warn("post-copy push", "conn", i, "error", err)
				}
				return
			}
			if _, _, err := s.sendStripes(ctx, c, i, n, iter, nil, nil); err != nil && ctx.Err() == nil {
				s.log.Warn("post-copy push", "conn", i, "error", err)
			}
		}()
	}
	wg.Wait()
}

// servePages answers post-copy page requests from the paused guest's RAM.
// A read or write error ends it quietly (Debug): the destination closes
// the urgent connection when it completes, often before Complete reaches
// the control connection, and a link really lost is the control path's to
// report and recover.
func (s *source) servePages(ctx context.Context, gate *faultGate) {
	c := s.sess.Urgent
	for {
		m, err := c.ReadFrame(ctx)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Debug("post-copy page server stopped", "error", err)
			}
			return
		}
		req, ok := m.(*wire.PageRequest)
		if !ok {
			s.log.Warn("post-copy page server: unexpected message", "type", m.Type())
			return
		}
		if int(req.Block) >= len(s.blocks) {
			s.log.Warn("post-copy page server: request for unknown block", "block", req.Block)
			return
		}
		b := s.blocks[req.Block]
		gate.served()
		for p := req.Page; p < req.Page+uint64(req.Count) && p < b.npages; p++ {
			b.pending.Remove(p)
			s.noteSent(b, p)
			reply := &wire.PageReply{Block: req.Block, Page: p, Kind: wire.KindData, Data: b.Page(p)}
			if isZero(reply.Data) {
				reply.Kind, reply.Data = wire.KindZero, nil
			}
			if err := c.WriteFrame(ctx, reply); err != nil {
				if ctx.Err() == nil {
					s.log.Debug("post-copy page server stopped", "error", err)
				}
				return
			}
			gate.served()
		}
	}
}

// reportRefs fills the report's storage-reference figures (hybrid).
func (s *source) reportRefs() {
	if s.cfg.Mode != ModeHybrid {
		return
	}
	var r report.Refs
	if s.refs != nil {
		r = s.refs.first
	}
	r.Layout = s.cfg.LayoutAddr
	r.FirstPass = s.firstPass.report()
	s.rep.Refs = &r
}

func (s *source) mergeDest(c *wire.Complete) {
	s.rep.Pages.Data = s.dataPages.Load()
	s.rep.Pages.Zero = s.zeroPages.Load()
	s.rep.Pages.StorageResent = s.resent.Load()
	s.rep.Pages.SentAgain = s.sentAgain.Load()
	for _, b := range s.blocks {
		s.rep.GuestPages += b.npages
	}
	if s.refs != nil {
		s.rep.LayoutMS = report.MS(s.refs.spent)
	}
	s.reportRefs()
	if c == nil || len(c.Figures) == 0 {
		return
	}
	var d report.Dest
	if err := json.Unmarshal(c.Figures, &d); err != nil {
		s.log.Warn("destination figures unreadable", "error", err)
		return
	}
	s.rep.Pages.PostcopyFault = d.Pages.PostcopyFault
	s.rep.Pages.Prefetch = d.Pages.Prefetch
	s.rep.Pages.StorageVerified = d.Pages.StorageVerified
	s.rep.Pages.StorageMismatch = d.Pages.StorageMismatch
	s.rep.FaultLatencyUS = d.FaultLatencyUS
	s.rep.Storage = d.Storage
}

func (s *source) cleanup() {
	s.refs.dropAhead()
	if s.sess != nil {
		s.sess.Close()
	}
	if s.tracker != nil {
		s.tracker.Close()
	}
	if s.u != nil {
		for _, b := range s.blocks {
			for _, m := range b.Maps {
				_ = s.u.Unregister(uffd.Range{Start: m.Start, Len: m.Len()})
			}
		}
		s.u.Close()
	}
	for _, b := range s.blocks {
		b.Close()
	}
}
