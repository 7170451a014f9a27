package dbrestore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/dmig/dmig/internal/keeper"
	"github.com/dmig/dmig/internal/pages"
	"github.com/dmig/dmig/internal/ramfile"
	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/uffd"
	"github.com/dmig/dmig/wire"
)

const pageSize = ramfile.PageSize

// Guest is what the destination needs of the VMM that will run the guest.
type Guest interface {
	// Create makes the RAM files of the given blocks, sparse, at the
	// source's sizes, and returns their paths in block order.
	Create(ctx context.Context, blocks []wire.Block) ([]string, error)
	// Start starts the guest in incoming mode and returns its pid once it
	// has mapped its RAM and waits to be resumed, having touched none of it.
	Start(ctx context.Context) (int, error)
	// Resume lets the guest run.
	Resume(ctx context.Context) error
	// Kill ends the guest at once and removes what Create made.
	Kill() error
}

// PlaceWatcher is a guest that hears of every page placed after
// switchover (data nil: a zero page), once it is in place: for checks such
// as dmig compare's RAM oracle, which compares it with the paused source's.
// Placed is called from the placing goroutine and must be quick.
type PlaceWatcher interface {
	Placed(block uint32, page uint64, data []byte)
}

// AfterResumer is a guest with work to do once it runs, out of the
// downtime (QEMU: put back the migration capability its device-state load
// needed). A failure is logged: the guest runs regardless.
type AfterResumer interface {
	AfterResume(ctx context.Context) error
}

// SignalResumer is a guest whose Resume is SIGCONT to its pid: one a
// restarted serve can still resume if the old one died at Ready.
type SignalResumer interface {
	ResumesBySignal() bool
}

// Config configures the destination.
type Config struct {
	// NewGuest makes the guest for an accepted migration.
	NewGuest func(h *wire.Hello) (Guest, error)
	// FaultWorkers is how many post-copy faults are resolved at once
	// (default 4): each waits one round trip to the source.
	FaultWorkers int
	// Disks are the shared disks this host reads storage references from:
	// layout disk name → path of a file or block device (--disk NAME=PATH).
	// A disk that cannot be opened, or one a reference names but this map
	// lacks, costs speed: those pages come from the source.
	Disks map[string]string
	// PostcopyRestoreRate caps, in bytes per second, the background
	// restore of storage references once the guest runs here (0: no cap),
	// leaving the shared disk's bandwidth and the host's CPU to the
	// guest's own I/O. A fault on a page whose reference is queued is read
	// at once whatever the cap.
	PostcopyRestoreRate int64
	// Dir, if set, is where each session's directory is
	// (Dir/<session ID>, SessionDir): the session keeps its journal and
	// lock there, so that a serve started after this one died can adopt a
	// guest left in post-copy (package keeper).
	Dir string
	// RecoverTimeout is how long a session past Ready waits for the
	// source to reconnect after its link failed (0: it does not wait; the
	// session fails).
	RecoverTimeout time.Duration
	// Keeper, if set, starts the keeper of a session's directory before
	// its RAM files are made (keeper.Spawn, Pid 0); the session tells the
	// keeper through what it returns the guest it started
	// (keeper.TellGuest) and the states past Resumed it reaches
	// (keeper.Tell), and closing it tells the keeper that this process no
	// longer runs the session.
	Keeper func(keeper.Config) (io.WriteCloser, error)
	// Watch, if set, is called as a session starts receiving, with a
	// function returning its figures at that instant (dmig status; safe
	// from any goroutine, also after the session ended); the function it
	// returns is called when the session ends, with its error.
	Watch  func(snapshot func() report.Live) (end func(error))
	Logger hclog.Logger
}

// SessionDir is the directory of session id under root.
func SessionDir(root string, id wire.SessionID) string { return filepath.Join(root, id.String()) }

func (c *Config) defaults() {
	if c.FaultWorkers <= 0 {
		c.FaultWorkers = 4
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
}

// Receive runs one accepted migration into guest g. It returns the
// destination's figures once every page is in place and the guest runs.
// Before the guest is resumed any failure kills it and removes its RAM; after,
// a lost source leaves pages that can never arrive, so the guest is killed
// rather than let run on zero pages, and the error says so.
func Receive(ctx context.Context, sess *wire.Session, g Guest, cfg Config) (*report.Dest, error) {
	return receive(ctx, sess, g, cfg, nil)
}

// receive is Receive with the channel on which Serve hands over the
// source's reconnections of this session (nil: none come).
func receive(ctx context.Context, sess *wire.Session, g Guest, cfg Config, recovered <-chan *wire.Session) (*report.Dest, error) {
	cfg.defaults()
	d := &dest{cfg: cfg, sess: sess, g: g, recovered: recovered, log: cfg.Logger.With("guest", sess.Hello.Guest, "session", sess.ID().String()[:8])}
	return d.run(ctx)
}

type dest struct {
	cfg  Config
	sess *wire.Session
	g    Guest
	log  hclog.Logger

	*placer
	restore *restorer
	pid     int

	mu        sync.Mutex
	cond      *sync.Cond
	processed []uint64 // batches handled per bulk connection
	expected  []uint64 // batches announced by IterationEnd per connection
	final     bool     // Switchover arrived: expected is complete
	bulkErr   error

	switched chan struct{} // closed once post-copy placement is set up

	prefetch, faulted, zero, data atomic.Uint64
	latMu                         sync.Mutex
	lat                           []time.Duration

	devState deviceState // set by the control goroutine at Switchover

	phase     atomic.Int32 // phaseReceive, phaseReady, phaseResumed
	pass      atomic.Int32 // the last pass the source ended (IterationEnd)
	started   time.Time
	linkMu    sync.Mutex
	ln        *link                // the current connections to the source
	recovered <-chan *wire.Session // the source's reconnections (Serve)
	serving   bool                 // faults are served: each link reads replies
	// recoveries counts adopted reconnections; main goroutine only.
	recoveries int

	// The session directory's journal, lock and keeper (Config.Dir).
	dir  string
	jr   *keeper.Journal
	lock *os.File
	keep io.WriteCloser
	// exited closes when the guest process exits.
	exited <-chan struct{}
}

// prepare creates the RAM files, starts the guest, and registers its RAM
// with a uffd attached to it. Registration is harmless before resume: the
// guest is stopped, and dmig writes through its own, unregistered mapping.
func (d *dest) prepare(ctx context.Context) error {
	h := &d.sess.Hello
	// The session's directory, lock and keeper come first: the keeper
	// removes the RAM files if this process dies before the journal
	// names them.
	if err := d.openSession(); err != nil {
		return err
	}
	paths, err := d.g.Create(ctx, h.Blocks)
	if err != nil {
		return classed(wire.ErrorResource, fmt.Errorf("create RAM files: %w", err))
	}
	for i, blk := range h.Blocks {
		b, err := openDstBlock(uint32(i), blk, paths[i])
		if err != nil {
			return err
		}
		d.blocks = append(d.blocks, b)
	}
	// The guest starts with a parent-death signal (a guest that never
	// resumed must not outlive a dead serve); its keeper takes over that
	// duty before AttachKept clears the signal.
	if d.pid, err = d.g.Start(ctx); err != nil {
		return fmt.Errorf("start guest: %w", err)
	}
	if d.exited, err = keeper.Watch(d.pid); err != nil {
		return fmt.Errorf("watch guest pid %d: %w", d.pid, err)
	}
	if err := d.openJournal(paths); err != nil {
		return err
	}
	if p, ok := d.g.(DeviceStatePreparer); ok {
		if err := p.PrepareDeviceState(ctx); err != nil {
			return fmt.Errorf("prepare the guest for its device state: %w", err)
		}
	}
	// Kept: the guest holds a copy of the uffd, so that if this process
	// dies its faulting threads block until a new serve takes over
	// (Reacquire) instead of reading zero pages.
	if d.u, err = uffd.AttachKept(d.pid, uffd.FeatureMissingShmem|uffd.FeatureThreadID); err != nil {
		return fmt.Errorf("take over the guest's page faults: %w", err)
	}
	if d.jr != nil {
		d.jr.UffdFD = d.u.TargetFD()
		if err := d.journalState(keeper.Starting); err != nil {
			return err
		}
	}
	for _, b := range d.blocks {
		if err := b.FindMappings(d.pid); err != nil {
			return err
		}
		for _, m := range b.Maps {
			if _, err := d.u.Register(uffd.Range{Start: m.Start, Len: m.Len()}, uffd.ModeMissing); err != nil {
				return fmt.Errorf("register RAM block %s: %w", b.Name, err)
			}
		}
		// What the guest's start wrote into its RAM (a hypervisor may
		// write firmware at reset) counts as placed, so that placed covers
		// every page the file holds: a zero page sent for it clears it,
		// and markPending frees it if the source still owes it.
		if err := b.DataPages(b.placed.AddRange); err != nil {
			return classed(wire.ErrorResource, err)
		}
	}
	return nil
}

// openDstBlock opens and maps the RAM file at path of the session's block
// blk, with empty page sets.
func openDstBlock(idx uint32, blk wire.Block, path string) (*dstBlock, error) {
	rf, err := ramfile.OpenBlock(blk.Name, path, blk.Size, true, false)
	if err != nil {
		return nil, err
	}
	n := rf.Pages()
	return &dstBlock{Block: rf, idx: idx, npages: n, placed: pages.NewSet(n), missing: pages.NewSet(n)}, nil
}

// barrier waits until every batch announced by IterationEnd was handled.
func (d *dest) barrier(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for {
		if d.bulkErr != nil {
			return d.bulkErr
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		ok := true
		for i := range d.expected {
			if d.processed[i] < d.expected[i] {
				ok = false
			}
		}
		if ok {
			return nil
		}
		d.cond.Wait()
	}
}

// late reports whether a pre-copy batch on bulk connection i is one more
// than the iterations announced before Switchover.
func (d *dest) late(i int) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.final && d.processed[i] >= d.expected[i]
}

// readBulk handles the batches of one bulk connection: plain writes into the
// RAM file before switchover, UFFDIO_COPY for post-copy pushes.
func (d *dest) readBulk(ctx context.Context, i int, c *wire.Conn) error {
	scratch := make([]byte, wire.MaxBatchDataPages*pageSize)
	var refs []wire.Entry // a batch's references, reused
	for {
		m, err := c.ReadFrame(ctx)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return lost(fmt.Errorf("bulk connection %d: %w", i, err))
		}
		batch, ok := m.(*wire.PageBatch)
		if !ok {
			return classed(wire.ErrorProtocol, fmt.Errorf("bulk connection %d: unexpected %v", i, m.Type()))
		}
		if int(batch.Block) >= len(d.blocks) {
			return classed(wire.ErrorProtocol, fmt.Errorf("bulk connection %d: batch for unknown block %d", i, batch.Block))
		}
		push := batch.Iteration == wire.IterationPostcopy
		if !push && d.late(i) {
			// Switchover fixed how many pre-copy batches each connection
			// carries; one more would reach a restore already carried.
			return classed(wire.ErrorProtocol, fmt.Errorf("bulk connection %d: pre-copy batch of iteration %d after the switchover's last", i, batch.Iteration))
		}
		if push {
			select {
			case <-d.switched:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if refs, err = d.applyBatch(i, c, d.blocks[batch.Block], batch, scratch, refs[:0]); err != nil {
			return err
		}
		d.mu.Lock()
		if !push {
			d.processed[i]++
		}
		d.mu.Unlock()
		d.cond.Broadcast()
	}
}

// applyBatch handles the entries of one batch of block b from bulk
// connection i (reading their data from c into scratch): pre-copy entries
// supersede older ones and are written to the RAM file, pushes are placed if
// still missing, references go to the restorer, in the order of their disk
// offsets (collected in refs, which it returns for reuse).
//
// A batch lists its pages in page order, and a hybrid pass's batch of
// references names one stretch of the disk in that order. The restore
// reads what queued in batches of its own, cut wherever the queue stood:
// queued in page order, each part of a cut batch spanned the whole
// stretch, and each was read past the page cache in full (11 GB read for
// a 6 GB pool at 8 GiB). Queued in disk order, a cut leaves two halves of
// the stretch.
func (d *dest) applyBatch(i int, c *wire.Conn, b *dstBlock, batch *wire.PageBatch, scratch []byte, refs []wire.Entry) ([]wire.Entry, error) {
	push := batch.Iteration == wire.IterationPostcopy
	for j := 0; j < len(batch.Entries); {
		e := batch.Entries[j]
		if e.Page >= b.npages {
			return refs, classed(wire.ErrorProtocol, fmt.Errorf("bulk connection %d: page %d beyond block %s", i, e.Page, b.Name))
		}
		switch e.Kind {
		case wire.KindData:
			run := batch.DataRun(j)
			if e.Page+uint64(run) > b.npages {
				return refs, classed(wire.ErrorProtocol, fmt.Errorf("bulk connection %d: pages [%d, +%d) beyond block %s", i, e.Page, run, b.Name))
			}
			buf := scratch[:run*pageSize]
			if err := c.ReadData(buf); err != nil {
				return refs, lost(fmt.Errorf("bulk connection %d: %w", i, err))
			}
			if err := d.dataRun(b, e.Page, batch.Iteration, buf); err != nil {
				return refs, err
			}
			j += run
		case wire.KindZero:
			if err := d.zeroPage(b, e.Page, batch.Iteration); err != nil {
				return refs, err
			}
			j++
		case wire.KindRef:
			if !d.restore.active {
				return refs, classed(wire.ErrorProtocol, fmt.Errorf("bulk connection %d: storage reference for page %d not announced by the session", i, e.Page))
			}
			refs = append(refs, e)
			j++
		default:
			return refs, classed(wire.ErrorProtocol, fmt.Errorf("bulk connection %d: %v pages are not supported by this destination", i, e.Kind))
		}
	}
	slices.SortFunc(refs, func(a, b wire.Entry) int {
		return cmp.Or(cmp.Compare(a.Ref.Disk, b.Ref.Disk), cmp.Compare(a.Ref.Offset, b.Ref.Offset))
	})
	for _, e := range refs {
		if !push || b.missing.Has(e.Page) {
			d.restore.enqueue(b.idx, e.Page, batch.Iteration, e.Ref)
		}
	}
	return refs, nil
}

// dataRun handles pages [first, first+len(buf)/pageSize) of b sent as data
// in iteration iter.
func (d *dest) dataRun(b *dstBlock, first uint64, iter uint32, buf []byte) error {
	run := uint64(len(buf)) / pageSize
	if iter == wire.IterationPostcopy {
		for k := range run {
			p := first + k
			if !b.missing.Has(p) {
				continue
			}
			if err := d.place(b, p, buf[k*pageSize:(k+1)*pageSize]); err != nil {
				return err
			}
			d.fromSource(b, p)
		}
		return nil
	}
	for k := range run {
		d.restore.supersede(b.idx, first+k, iter)
	}
	// Through a buffer, not a copy into the mapping: a whole-page write
	// to a hole of the shmem file allocates the page without faulting it
	// in and zeroing it first, which dominated the receive path.
	if _, err := d.fill(b, first, buf, &b.writeMu); err != nil {
		return classed(wire.ErrorResource, err) // the session fails
	}
	b.placed.AddRange(first, run)
	d.data.Add(run)
	return nil
}

// zeroPage handles page p of b sent as a zero page in iteration iter.
func (d *dest) zeroPage(b *dstBlock, p uint64, iter uint32) error {
	if iter == wire.IterationPostcopy {
		if !b.missing.Has(p) {
			return nil
		}
		if err := d.place(b, p, nil); err != nil {
			return err
		}
		d.fromSource(b, p)
		return nil
	}
	d.restore.supersede(b.idx, p, iter)
	if b.placed.Has(p) {
		clear(b.Page(p))
	}
	d.zero.Add(1)
	return nil
}

// fault resolves a post-copy fault: the page is requested from the source on
// the urgent connection, and placed by readReplies when it arrives.
func (d *dest) fault(ctx context.Context, m uffd.Msg) error {
	t0 := time.Now()
	b, p, ok := d.locate(m.Addr)
	if !ok {
		return fmt.Errorf("fault at %#x outside the guest's RAM", m.Addr)
	}
	// A page whose storage reference is queued is read at once rather
	// than behind the queue or from the source.
	if d.restore.fault(b, p, t0) {
		return nil
	}
	key := pageKey{b.idx, p}
	d.waitMu.Lock()
	if !b.missing.Has(p) {
		d.waitMu.Unlock()
		// Placed between the fault and now (the zero page fails with
		// EEXIST and place wakes the waiters), or a page never sent: a
		// zero page left a hole, which a VMM loading device state (QEMU)
		// may read.
		return d.place(b, p, nil)
	}
	w, asked := d.waiters[key]
	if !asked {
		w = &waiter{ch: make(chan struct{}), since: t0}
		d.waiters[key] = w
	}
	d.waitMu.Unlock()
	if !asked {
		// With no link (an adopted session before its source is back) the
		// request is made by adopt.
		if ln := d.link(); ln != nil {
			if err := ln.sess.Urgent.WriteFrame(ln.ctx, &wire.PageRequest{Block: b.idx, Page: p, Count: 1}); err != nil {
				// The link is lost: the page is asked for again on the next
				// one (adopt), and until then the guest's thread waits.
				ln.cancel(lost(fmt.Errorf("request page %d of block %s: %w", p, b.Name, err)))
			}
		}
	}
	// The latency is taken where the page is placed (fromSource), once
	// per page, so that the samples are exactly the fault pages.
	select {
	case <-w.ch:
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

// fromSource records page p of b, which came from the source after
// switchover (a reply or a push), as in place: a fault page, with its
// latency from the first fault on it, if a fault waited for it, else a
// prefetched one.
func (d *dest) fromSource(b *dstBlock, p uint64) {
	first, waited, asked := d.resolvedAsked(b, p, &d.faulted, &d.prefetch)
	if first && asked {
		d.latMu.Lock()
		d.lat = append(d.lat, waited)
		d.latMu.Unlock()
	}
}

// readReplies places the pages the source sends on the urgent connection
// and wakes the faults waiting for them.
func (d *dest) readReplies(ctx context.Context, s *wire.Session) error {
	for {
		m, err := s.Urgent.ReadFrame(ctx)
		if err != nil {
			return lost(fmt.Errorf("urgent connection: %w", err))
		}
		r, ok := m.(*wire.PageReply)
		if !ok {
			return classed(wire.ErrorProtocol, fmt.Errorf("urgent connection: unexpected %v", m.Type()))
		}
		if int(r.Block) >= len(d.blocks) || r.Page >= d.blocks[r.Block].npages {
			return classed(wire.ErrorProtocol, fmt.Errorf("urgent connection: reply for page %d of unknown block %d", r.Page, r.Block))
		}
		b := d.blocks[r.Block]
		var data []byte
		switch r.Kind {
		case wire.KindData:
			data = r.Data
		case wire.KindZero:
		default:
			return classed(wire.ErrorProtocol, fmt.Errorf("urgent connection: %v reply not supported", r.Kind))
		}
		if b.missing.Has(r.Page) {
			if err := d.place(b, r.Page, data); err != nil {
				return err
			}
		}
		d.fromSource(b, r.Page)
	}
}

// release hands the guest its memory for good: no page is missing any more.
// The guest's kept copy of the uffd stays open in it, registered on
// nothing: closing it would mean stopping the running guest again to
// inject close(2).
func (d *dest) release() error {
	for _, b := range d.blocks {
		for _, m := range b.Maps {
			if err := d.u.Unregister(uffd.Range{Start: m.Start, Len: m.Len()}); err != nil {
				return fmt.Errorf("unregister RAM block %s: %w", b.Name, err)
			}
		}
	}
	err := d.u.Close()
	d.u = nil
	return err
}

func (d *dest) figures(resumeMS float64) *report.Dest {
	d.latMu.Lock()
	defer d.latMu.Unlock()
	return &report.Dest{
		Pages: report.Pages{
			Data:          d.data.Load(),
			Zero:          d.zero.Load(),
			PostcopyFault: d.faulted.Load(),
			Prefetch:      d.prefetch.Load(),
		},
		FaultLatencyUS: report.Summarize(d.lat),
		ResumeMS:       resumeMS,
	}
}

func (d *dest) cleanup(failed bool) {
	d.closeJournal(failed)
	if d.u != nil {
		// Only reached with the guest killed, or before it ran.
		d.u.Close()
	}
	for _, b := range d.blocks {
		b.Close()
	}
}
