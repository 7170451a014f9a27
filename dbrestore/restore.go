package dbrestore

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/dmig/dmig/internal/pages"
	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/internal/storageref"
	"github.com/dmig/dmig/layout"
	"github.com/dmig/dmig/wire"
)

// Restore pool sizing: collectors each run one layout.Reader.Read at a time
// over what queued while the previous one ran, so reads stay large and
// sorted; readWorkers preads per Read.
const (
	restoreCollectors = 2
	readWorkers       = 4
	maxRestoreBatch   = 1 << 12
	restoreQueue      = 1 << 14
	lockStripes       = 4096
	refetchChunk      = 64 // pages per PageRequest for failed references
	// maxPlaceRun caps the pages one write places: their stripes are
	// all held during it.
	maxPlaceRun = 64
	// verdictEvery spaces wire.Verdict reports while references are still
	// unchecked; the one that finds them all checked goes at once.
	verdictEvery = 10 * time.Millisecond
)

// restorer reads storage-referenced pages from the shared disks while the
// network transfer runs, checks each against the hash the source sent, and
// writes it into the RAM file like a data page.
//
// Invariants:
//   - A page is placed from storage only if its bytes hash to the reference's
//     hash.
//   - entries hold, per page, the iteration of the latest entry received
//     for it (data, zero or reference) and what became of its reference.
//     Setting it and placing a reference's page happen under the page's
//     stripe lock, and a reference is placed only if it is still the
//     latest entry: an older read that completes late never
//     overwrites newer data.
//   - bad holds the pages whose latest entry is a reference that failed.
//     While passes run (before Switchover arrives) each such page is handed
//     back to the source (wire.Resend), which sends it as data in a later
//     pass; that entry supersedes the failed one and clears it from bad. At
//     switchover, once every queued read finished, what is still bad is
//     owed like Switchover.Pending pages: made missing and fetched from the
//     source, whose guest is paused, so they get its final content.
//   - unchecked holds the pages whose latest entry is a reference not yet
//     checked; queued, every reference received before switchover (the
//     latest per page). A check of the latest entry removes its page from
//     unchecked and ends its entry placed or failed, under the
//     stripe lock, as a newer entry does. At switchover (carry) every
//     unchecked page is either carried — its entry set to
//     carried under the lock, so no write can fill it once it is made
//     missing, and its reference kept for faults — or, if the source lists
//     it as pending (written since), discarded: the read in
//     flight is then dropped whatever its result. So the guest resumes
//     without waiting for the restore to catch up, and a carried page gets
//     only a checked disk copy, placed with UFFDIO_COPY.
//
// Its methods follow its life: newRestorer and start; the phase (advance,
// at, await); entries as they arrive (supersede, enqueue, forget); the
// collectors' reads, placement and hand-back (collect … done); switchover
// (carry, owed, refetch); post-copy (carriedMissing … fault); and the end
// (release, report, close).
type restorer struct {
	pl     *placer
	send   sender
	log    hclog.Logger
	active bool            // the session announced storage references
	ctx    context.Context // the collectors' (set by start)

	store  *layout.Storage
	reader *layout.Reader
	ids    map[uint16]layout.DiskID // wire disk key → reader disk

	jobs  chan refJob
	locks [lockStripes]sync.Mutex
	// phase is where the restore stands (restorePhase); phaseCh is
	// closed, and replaced, each time it advances.
	phase     atomic.Int32
	phaseMu   sync.Mutex
	phaseCh   chan struct{}
	entries   [][]pageEntry // by block, page
	bad       []*pages.Set  // by block
	unchecked []*pages.Set  // by block
	qMu       sync.Mutex    // for queued, before switchover
	queued    map[pageKey]queuedRef
	// After carry: the carried pages (unchecked, then), and their
	// references (read-only).
	carriedSet  []*pages.Set
	carriedRefs map[pageKey]queuedRef

	mu       sync.Mutex
	cond     *sync.Cond
	inflight int // queued and not yet checked
	first    time.Time
	last     time.Time

	// References are never refused: what the full queue cannot take waits
	// in backlog (kick wakes a collector), so the bulk connections read on
	// whatever the restore's pace (the switchover barrier never waits for
	// it), and after switchover every pushed reference is known to the
	// fault path (post: references for missing pages) as soon as it
	// arrives.
	postMu   sync.Mutex
	post     map[pageKey]wire.Ref
	backlog  []refJob
	kick     chan struct{}
	pace     *pacer          // nil: post-copy restore at full speed
	faultLat []time.Duration // faults resolved from storage (under mu)

	n         restoreCounts
	verdictMu sync.Mutex // orders Verdicts: their counts only grow
	verdictAt time.Time
}

// restoreCounts are the restorer's page counters, read for Verdicts and the
// report while the collectors run.
type restoreCounts struct {
	handedBack atomic.Uint64 // pages handed back with Resend
	carried    atomic.Uint64 // pages carried past switchover
	postDone   atomic.Uint64 // counter for resolved(): owed pages placed from storage (also verified)

	verified, mismatch atomic.Uint64

	// The verdict on references received before switchover: received,
	// checked (read and compared, or superseded) and failed of those.
	received, checked, failed atomic.Uint64
}

// restorePhase is where the restore stands; it only advances.
type restorePhase int32

const (
	// restorePasses: pre-copy passes run; a failed reference is handed
	// back to the source (Resend), which sends the page in a later pass.
	restorePasses restorePhase = iota
	// restoreHeld: Switchover arrived. Failures are owed after switchover,
	// not handed back, and the collectors start no read until release:
	// the guest is paused, waiting for the bulk connections' last batches
	// and the switchover itself, which reads would only slow down (on a
	// busy host they take the cores); what they would read now is carried
	// instead, and a fault on it is served at once anyway.
	restoreHeld
	// restoreCarried: the carried pages are missing. A carried read that
	// completes sooner waits for this, since placing (or skipping) it
	// before would leave the page missing with its reference forgotten.
	restoreCarried
	// restoreReleased: the guest runs (or the migration ended); reads go
	// on, at the post-copy pace.
	restoreReleased
)

func (p restorePhase) String() string {
	switch p {
	case restorePasses:
		return "passes"
	case restoreHeld:
		return "held"
	case restoreCarried:
		return "carried"
	case restoreReleased:
		return "released"
	}
	return fmt.Sprintf("phase(%d)", int32(p))
}

// pageEntry is what the restorer knows of one page: the iteration of the
// latest entry received for it (data, zero or reference) and what became
// of that entry's reference.
type pageEntry struct {
	iter  uint32
	state entryState
}

type entryState uint8

const (
	entryLatest    entryState = iota // a reference of iter may still be placed
	entryPlaced                      // its reference was placed
	entryFailed                      // its reference failed (bad)
	entryCarried                     // carried past switchover: restored after resume
	entryDiscarded                   // pending at the source at switchover: dropped
)

// latest reports whether a reference of iteration iter is the page's
// latest entry, not yet placed or failed.
func (e pageEntry) latest(iter uint32) bool { return e.state == entryLatest && e.iter == iter }

type queuedRef struct {
	iter uint32
	ref  wire.Ref
}

type refJob struct {
	block uint32
	page  uint64
	iter  uint32
	ref   wire.Ref
}

// SharedDisker is a guest that knows its own disks on shared storage (a
// QEMU destination opens the source's images): layout disk name → path.
// Config.Disks adds to and overrides them.
type SharedDisker interface {
	SharedDisks() map[string]string
}

// sender is what the restorer says to the source: pages handed back
// before switchover, its verdict on the references, and requests for pages
// whose reference failed after switchover.
type sender interface {
	Resend(ctx context.Context, runs []wire.Run) error
	Verdict(ctx context.Context, v *wire.Verdict) error
	PageRequest(ctx context.Context, block uint32, page uint64, count uint32) error
}

// restoreOptions configure a restorer.
type restoreOptions struct {
	Log hclog.Logger
	// Active: the session announced storage references.
	Active bool
	// Disks: layout disk name → path (Config.Disks over the guest's own).
	Disks map[string]string
	// Rate: Config.PostcopyRestoreRate.
	Rate int64
}

// newRestorer opens the disks that can be opened (a disk that cannot costs
// speed: its references fail and their pages come from the source) for a
// session that announced storage references. It places pages through pl
// and talks to the source through send.
func newRestorer(o restoreOptions, pl *placer, send sender) *restorer {
	r := &restorer{pl: pl, send: send, log: o.Log.Named("restore"), active: o.Active}
	r.cond = sync.NewCond(&r.mu)
	r.post = map[pageKey]wire.Ref{}
	r.queued = map[pageKey]queuedRef{}
	r.phaseCh = make(chan struct{})
	r.kick = make(chan struct{}, 1)
	r.pace = newPacer(o.Rate)
	if !r.active {
		return r
	}
	r.jobs = make(chan refJob, restoreQueue)
	for _, b := range pl.blocks {
		r.entries = append(r.entries, make([]pageEntry, b.npages))
		r.bad = append(r.bad, pages.NewSet(b.npages))
		r.unchecked = append(r.unchecked, pages.NewSet(b.npages))
	}
	disks := o.Disks
	good := map[string]string{}
	for _, name := range slices.Sorted(maps.Keys(disks)) {
		path := disks[name]
		s, err := layout.OpenStorage(map[string]string{name: path})
		if err != nil {
			r.log.Warn("disk unusable: its references will be fetched from the source", "disk", name, "path", path, "error", err)
			continue
		}
		s.Close()
		good[name] = path
	}
	if len(good) == 0 {
		r.log.Warn("no shared disk: every storage reference will be fetched from the source")
		return r
	}
	s, err := layout.OpenStorage(good)
	if err != nil {
		r.log.Warn("open shared disks: every storage reference will be fetched from the source", "error", err)
		return r
	}
	r.store = s
	r.ids = map[uint16]layout.DiskID{}
	var table []layout.Disk
	for _, name := range s.Names() {
		k := storageref.DiskKey(name)
		if _, dup := r.ids[k]; dup {
			r.log.Warn("disk key shared with another disk: references to it will fail their check", "disk", name, "key", k)
			continue
		}
		id := layout.DiskID(len(table))
		table = append(table, layout.Disk{ID: id, Name: name})
		r.ids[k] = id
	}
	r.reader = s.NewReader(table, layout.ReaderOptions{Workers: readWorkers})
	return r
}

// start runs the collectors until ctx ends, each through spawn.
func (r *restorer) start(ctx context.Context, spawn func(func() error)) {
	if !r.active {
		return
	}
	r.ctx = ctx
	for range restoreCollectors {
		spawn(func() error { r.collect(ctx); return nil })
	}
	if r.log.IsDebug() {
		spawn(func() error { r.logProgress(ctx); return nil })
	}
}

// logProgress logs, each second while references come or are read, how far
// the restore is behind what it was sent: whether a slow restore waits for
// references (the link) or they wait for it (disk, cores).
func (r *restorer) logProgress(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var lastChecked, lastBytes uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		received, checked := r.n.received.Load(), r.n.checked.Load()
		var bytes uint64
		if r.reader != nil {
			bytes = r.reader.Stats().Bytes
		}
		if checked == lastChecked && bytes == lastBytes && checked == received {
			continue
		}
		r.postMu.Lock()
		backlog := len(r.backlog)
		r.postMu.Unlock()
		r.log.Debug("restore progress", "phase", restorePhase(r.phase.Load()), "received", received, "checked", checked,
			"behind", received-checked, "queued", len(r.jobs), "backlog", backlog, "read_MBps", (bytes-lastBytes)/1e6)
		lastChecked, lastBytes = checked, bytes
	}
}

// advance moves the restore to phase p (never back).
func (r *restorer) advance(p restorePhase) {
	r.phaseMu.Lock()
	defer r.phaseMu.Unlock()
	if restorePhase(r.phase.Load()) >= p {
		return
	}
	r.phase.Store(int32(p))
	close(r.phaseCh)
	r.phaseCh = make(chan struct{})
	r.log.Trace("restore phase", "phase", p)
}

// at reports whether the restore reached phase p.
func (r *restorer) at(p restorePhase) bool { return restorePhase(r.phase.Load()) >= p }

// await waits until the restore reaches phase p and reports whether it
// did (false: ctx ended first).
func (r *restorer) await(ctx context.Context, p restorePhase) bool {
	for {
		r.phaseMu.Lock()
		reached, ch := r.at(p), r.phaseCh
		r.phaseMu.Unlock()
		if reached {
			return true
		}
		var stop <-chan struct{}
		if ctx != nil {
			stop = ctx.Done()
		}
		select {
		case <-ch:
		case <-stop:
			return false
		}
	}
}

func (r *restorer) lock(block uint32, p uint64) *sync.Mutex { return &r.locks[r.stripe(block, p)] }

func (r *restorer) stripe(block uint32, p uint64) int {
	return int((uint64(block)*7919 + p) % lockStripes)
}

// supersede records that an entry of iteration iter arrived for page p of
// block b, before its data or zeros are written: a reference of an older
// iteration still in flight will not be placed.
func (r *restorer) supersede(block uint32, p uint64, iter uint32) {
	if !r.active {
		return
	}
	mu := r.lock(block, p)
	mu.Lock()
	r.entries[block][p] = pageEntry{iter: iter}
	r.bad[block].Remove(p)
	r.unchecked[block].Remove(p)
	mu.Unlock()
}

// claim records a reference of iteration iter for page p of block b as
// its page's latest entry, unless an entry of a later iteration arrived
// first: a page's data and zeros travel on its own bulk connection, in
// order, but a reference may come on another (the source sends a disk
// stretch's references together), so an older pass's reference can arrive
// after a newer pass's data. It is then dropped: placing it would
// overwrite the newer page.
//
// The entry, the page's queued reference and its unchecked mark change
// together under the page's stripe lock: done after the lock, a newer
// entry for the page (data, or another pass's reference on another
// connection) could come in between and be followed by this older
// reference's marks, and the page be carried at switchover, its newer
// content freed, with the older reference as the one its disk copy is
// checked against.
func (r *restorer) claim(block uint32, p uint64, iter uint32, ref wire.Ref) bool {
	mu := r.lock(block, p)
	mu.Lock()
	defer mu.Unlock()
	if r.entries[block][p].iter > iter {
		return false
	}
	r.entries[block][p] = pageEntry{iter: iter}
	r.bad[block].Remove(p)
	// Lock order: a stripe, then qMu (carry takes qMu alone).
	r.qMu.Lock()
	r.queued[pageKey{block, p}] = queuedRef{iter, ref}
	r.qMu.Unlock()
	r.unchecked[block].Add(p)
	return true
}

// enqueue queues a reference of iteration iter for page p of block b,
// without blocking. After switchover (iter IterationPostcopy, p missing) a
// fault may take it first.
func (r *restorer) enqueue(block uint32, p uint64, iter uint32, ref wire.Ref) {
	if iter != wire.IterationPostcopy {
		r.n.received.Add(1)
		if !r.claim(block, p, iter, ref) {
			// Done with: nothing to read, nothing to hand back.
			r.n.checked.Add(1)
			return
		}
	}
	r.mu.Lock()
	r.inflight++
	if r.first.IsZero() {
		r.first = time.Now()
	}
	r.mu.Unlock()
	j := refJob{block: block, page: p, iter: iter, ref: ref}
	r.postMu.Lock()
	if iter == wire.IterationPostcopy {
		r.post[pageKey{block, p}] = ref
	}
	select {
	case r.jobs <- j:
	default:
		r.backlog = append(r.backlog, j)
		r.wake()
	}
	r.postMu.Unlock()
}

// wake makes sure a collector looks at the backlog.
func (r *restorer) wake() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

func (r *restorer) forget(block uint32, p uint64) {
	r.postMu.Lock()
	delete(r.post, pageKey{block, p})
	r.postMu.Unlock()
}

// collect reads what queued while its previous read ran, as one batch.
// After switchover batches keep to the pace, if one is set.
func (r *restorer) collect(ctx context.Context) {
	batch := make([]refJob, 0, maxRestoreBatch)
	// buf holds the batch's verified pages in batch order, which is the
	// order they were queued in (guest order within a pass), so that
	// neighbours in the guest go into the RAM file with one write.
	var buf []byte
	for {
		batch = batch[:0]
		select {
		case j := <-r.jobs:
			batch = append(batch, j)
		case <-r.kick:
		case <-ctx.Done():
			return
		}
		post := r.at(restoreHeld)
		limit := maxRestoreBatch
		if post && r.pace != nil {
			limit = r.pace.chunk
		}
	more:
		for len(batch) < limit {
			select {
			case j := <-r.jobs:
				batch = append(batch, j)
			default:
				break more
			}
		}
		batch = r.takeBacklog(batch, limit)
		if len(batch) == 0 {
			continue
		}
		if post && r.pace != nil {
			if err := r.pace.wait(ctx, len(batch)); err != nil {
				r.done(len(batch))
				return
			}
		}
		// Held from Switchover until release.
		if r.at(restoreHeld) && !r.await(ctx, restoreReleased) {
			r.done(len(batch))
			return
		}
		if need := len(batch) * pageSize; len(buf) < need {
			buf = make([]byte, max(need, min(maxRestoreBatch, 8*len(batch))*pageSize))
		}
		r.read(ctx, batch, buf)
		r.done(len(batch))
	}
}

// takeBacklog appends backlogged jobs to batch, up to limit in all.
func (r *restorer) takeBacklog(batch []refJob, limit int) []refJob {
	r.postMu.Lock()
	defer r.postMu.Unlock()
	n := max(0, min(limit-len(batch), len(r.backlog)))
	batch = append(batch, r.backlog[:n]...)
	r.backlog = r.backlog[n:]
	if len(r.backlog) > 0 {
		r.wake()
	} else {
		r.backlog = nil
	}
	return batch
}

// read checks and places one batch. GuestPage of the layout refs it reads
// is the job's index in batch; a verified page is copied to that index of
// buf (len(batch) pages at least) and placed once the whole batch is read.
// The pages whose reference failed and is still their latest entry are
// handed back to the source at the end.
func (r *restorer) read(ctx context.Context, batch []refJob, buf []byte) {
	var backMu sync.Mutex
	var back []pageKey
	var failedPre uint64
	fail := func(j refJob, err error) {
		owed := r.fail(j, err)
		backMu.Lock()
		if owed {
			back = append(back, pageKey{j.block, j.page})
		}
		if j.iter != wire.IterationPostcopy {
			failedPre++
		}
		backMu.Unlock()
	}
	defer func() {
		r.handBack(ctx, back)
		var pre uint64
		for _, j := range batch {
			if j.iter != wire.IterationPostcopy {
				pre++
			}
		}
		if pre > 0 {
			r.n.checked.Add(pre)
			r.n.failed.Add(failedPre)
			r.sendVerdict(ctx)
		}
	}()
	refs := make([]layout.Ref, 0, len(batch))
	for i, j := range batch {
		if j.iter == wire.IterationPostcopy && !r.pl.blocks[j.block].missing.Has(j.page) {
			r.forget(j.block, j.page) // placed meanwhile (a fault, a reply)
			continue
		}
		id, ok := r.ids[j.ref.Disk]
		if r.reader == nil || !ok {
			fail(j, fmt.Errorf("disk %#x: %w", j.ref.Disk, layout.ErrNoDisk))
			continue
		}
		refs = append(refs, layout.Ref{GuestPage: uint64(i), Disk: id, Offset: j.ref.Offset})
	}
	if len(refs) == 0 {
		return
	}
	verified := make([]bool, len(batch)) // each index set by one reader worker
	_ = r.reader.Read(ctx, refs, func(ref layout.Ref, page []byte, err error) {
		i := ref.GuestPage
		j := batch[i]
		switch {
		case err != nil:
			fail(j, err)
		case storageref.Hash(page) != j.ref.Hash:
			fail(j, ErrHashMismatch)
		case !joins(batch, int(i)):
			// No run to join: placed from the read buffer now, saving
			// the page's copy through buf (scattered pools are mostly
			// such pages).
			r.place(j, page)
		default:
			copy(buf[i*pageSize:(i+1)*pageSize], page)
			verified[i] = true
		}
	})
	r.placeVerified(batch, verified, buf)
}

// joins reports whether batch[i] may be placed in one run with a batch
// neighbour (placeVerified's runs: pre-copy pages, consecutive in the
// batch and in one block).
func joins(batch []refJob, i int) bool {
	next := func(a, b refJob) bool {
		return a.iter != wire.IterationPostcopy && b.iter != wire.IterationPostcopy && a.block == b.block && b.page == a.page+1
	}
	return (i > 0 && next(batch[i-1], batch[i])) || (i+1 < len(batch) && next(batch[i], batch[i+1]))
}

// placeVerified places the verified pages of a read batch (buf holds page
// i of batch at index i), runs of guest neighbours together.
func (r *restorer) placeVerified(batch []refJob, verified []bool, buf []byte) {
	for i := 0; i < len(batch); {
		if !verified[i] {
			i++
			continue
		}
		j := batch[i]
		if j.iter == wire.IterationPostcopy {
			r.placeMissing(j, buf[i*pageSize:(i+1)*pageSize])
			i++
			continue
		}
		k := i + 1
		for k < len(batch) && k-i < maxPlaceRun && verified[k] && batch[k].iter != wire.IterationPostcopy &&
			batch[k].block == j.block && batch[k].page == j.page+uint64(k-i) {
			k++
		}
		r.placeRun(batch[i:k], buf[i*pageSize:k*pageSize])
		i = k
	}
}

// placeRun writes verified pages, consecutive in one block, into the RAM
// file: those whose reference is still the page's latest entry, a run of
// them with one write (placer.fill: UFFDIO_COPY into holes, not a copy
// through a mapping, which would fault each page in and zero it first).
// The run's stripes are held meanwhile, taken in ascending order as carry
// takes them all.
func (r *restorer) placeRun(run []refJob, data []byte) {
	b := r.pl.blocks[run[0].block]
	var stripes [maxPlaceRun]int
	for i, j := range run {
		stripes[i] = r.stripe(j.block, j.page)
	}
	held := stripes[:len(run)]
	slices.Sort(held)
	for _, s := range held {
		r.locks[s].Lock()
	}
	var was [maxPlaceRun]pageEntry
	var failed [maxPlaceRun]error
	entries := r.entries[run[0].block]
	for i, j := range run {
		was[i] = entries[j.page]
	}
	for i := 0; i < len(run); {
		if !was[i].latest(run[i].iter) {
			i++
			continue
		}
		k := i + 1
		for k < len(run) && was[k].latest(run[k].iter) {
			k++
		}
		done, err := r.pl.fill(b, run[i].page, data[i*pageSize:k*pageSize], nil)
		for x := i; x < i+int(done); x++ {
			p := run[x].page
			b.placed.Add(p)
			entries[p].state = entryPlaced
			r.unchecked[run[x].block].Remove(p)
		}
		for x := i + int(done); x < k; x++ {
			failed[x] = err
		}
		i = k
	}
	for _, s := range held {
		r.locks[s].Unlock()
	}
	for i, j := range run {
		switch {
		case failed[i] != nil:
			r.fail(j, failed[i])
		case was[i].state == entryCarried:
			if r.isCarried(j) {
				r.placeMissing(j, data[i*pageSize:(i+1)*pageSize])
			}
		case was[i].latest(j.iter): // now placed
			r.n.verified.Add(1)
		}
	}
}

// place writes one verified page into the RAM file if its reference is
// still the page's latest entry; after switchover it places it with
// UFFDIO_COPY if it is still missing (every route then carries the paused
// source's final content, so no order matters).
func (r *restorer) place(j refJob, page []byte) {
	if j.iter == wire.IterationPostcopy {
		r.placeMissing(j, page)
		return
	}
	r.placeRun([]refJob{j}, page)
}

// fail records a reference whose disk copy could not be used and reports
// whether the page is now owed (the reference is its latest entry, before
// switchover). After switchover the page is asked from the source at once.
func (r *restorer) fail(j refJob, err error) bool {
	if j.iter == wire.IterationPostcopy {
		r.failMissing(j)
		return false
	}
	mu := r.lock(j.block, j.page)
	mu.Lock()
	e := r.entries[j.block][j.page]
	owed := e.latest(j.iter)
	if owed {
		r.bad[j.block].Add(j.page)
		r.entries[j.block][j.page].state = entryFailed
		r.unchecked[j.block].Remove(j.page)
	}
	mu.Unlock()
	if e.state == entryCarried {
		if r.isCarried(j) {
			r.failMissing(j)
		}
		return false
	}
	if n := r.n.mismatch.Add(1); n <= 5 {
		r.log.Debug("storage reference failed: the page will come from the source", "block", j.block, "page", j.page, "disk", j.ref.Disk, "offset", j.ref.Offset, "error", err)
	}
	return owed
}

// handBack asks the source to send pages as data in a later pass (their
// references failed), unless Switchover arrived: the barrier then owes
// them. A Resend that cannot be sent leaves them owed too.
func (r *restorer) handBack(ctx context.Context, keys []pageKey) {
	if len(keys) == 0 || r.at(restoreHeld) {
		return
	}
	slices.SortFunc(keys, func(a, b pageKey) int {
		return cmp.Or(cmp.Compare(a.block, b.block), cmp.Compare(a.page, b.page))
	})
	var runs []wire.Run
	for _, k := range keys {
		if n := len(runs); n > 0 && runs[n-1].Block == k.block && runs[n-1].Page+runs[n-1].Count >= k.page {
			runs[n-1].Count = max(runs[n-1].Count, k.page-runs[n-1].Page+1)
			continue
		}
		runs = append(runs, wire.Run{Block: k.block, Page: k.page, Count: 1})
	}
	if err := r.send.Resend(ctx, runs); err != nil {
		if ctx.Err() == nil {
			r.log.Warn("hand failed storage references back to the source: they will be fetched after switchover", "pages", len(keys), "error", err)
		}
		return
	}
	r.n.handedBack.Add(wire.PageCount(runs))
}

// sendVerdict reports the references checked so far to the source, at most
// every verdictEvery unless they are all checked. After Switchover the
// source no longer listens for it.
func (r *restorer) sendVerdict(ctx context.Context) {
	if r.at(restoreHeld) {
		return
	}
	r.verdictMu.Lock()
	defer r.verdictMu.Unlock()
	// Counted checked then failed, loaded failed then checked: a Verdict
	// never counts a failure it does not count as checked.
	v := wire.Verdict{Failed: r.n.failed.Load(), Checked: r.n.checked.Load()}
	if v.Checked < r.n.received.Load() && time.Since(r.verdictAt) < verdictEvery {
		return
	}
	r.verdictAt = time.Now()
	if err := r.send.Verdict(ctx, &v); err != nil && ctx.Err() == nil {
		r.log.Debug("report checked storage references", "error", err)
	}
}

func (r *restorer) done(n int) {
	r.mu.Lock()
	r.inflight -= n
	r.last = time.Now()
	if r.inflight == 0 {
		r.cond.Broadcast()
	}
	r.mu.Unlock()
}

// switchover starts the held phase: Switchover arrived.
func (r *restorer) switchover() { r.advance(restoreHeld) }

// carry ends the restore's pre-switchover phase without waiting for it
// (see the restorer's invariants). pending are the pages the source owes:
// their queued references are stale. It returns the carried pages, for the
// caller to make missing and then call carriedMissing; until then nothing
// writes them.
func (r *restorer) carry(pending []wire.Run) []wire.Run {
	if !r.active {
		return nil
	}
	r.qMu.Lock()
	r.carriedRefs, r.queued = r.queued, nil
	r.qMu.Unlock()
	// Every stripe at once, rather than one per page: the guest is
	// paused, and tens of thousands of unchecked pages cost milliseconds
	// of lock round trips. Everyone else holds one stripe at a time, or
	// (placeRun) a few in ascending order as here, and
	// no enqueue runs any more (the batches are all in), so the unchecked
	// sets and entries stand still meanwhile.
	for i := range r.locks {
		r.locks[i].Lock()
	}
	for _, run := range pending {
		if int(run.Block) >= len(r.unchecked) {
			continue // markPending refuses it
		}
		u, entries := r.unchecked[run.Block], r.entries[run.Block]
		u.Runs(run.Page, run.Page+run.Count, func(first, count uint64) bool {
			for p := first; p < first+count; p++ {
				entries[p].state = entryDiscarded
				u.Remove(p)
			}
			return true
		})
	}
	for i, u := range r.unchecked {
		entries := r.entries[i]
		u.Runs(0, u.Len(), func(first, count uint64) bool {
			for p := first; p < first+count; p++ {
				entries[p].state = entryCarried
			}
			return true
		})
	}
	for i := range r.locks {
		r.locks[i].Unlock()
	}
	r.carriedSet = r.unchecked
	runs := setRuns(r.carriedSet)
	r.n.carried.Store(wire.PageCount(runs))
	return runs
}

// setRuns lists the pages of per-block sets as runs.
func setRuns(sets []*pages.Set) []wire.Run {
	var runs []wire.Run
	for i, s := range sets {
		runs = pages.AppendRuns(runs, uint32(i), s)
	}
	return runs
}

// owed returns the pages whose latest entry is a failed reference.
func (r *restorer) owed() []wire.Run {
	runs := setRuns(r.bad)
	if r.reader != nil {
		st := r.reader.Stats()
		r.log.Debug("storage reads at switchover", "reads", st.Reads, "bytes", st.Bytes, "pages", st.Pages, "errors", st.Errors)
	}
	if n := wire.PageCount(runs); n > 0 || r.n.handedBack.Load() > 0 {
		r.log.Info("pages owed by the source after failed storage references", "pages", n, "handed_back_before", r.n.handedBack.Load())
	}
	return runs
}

// refetch asks the source for the owed pages on the urgent connection, so
// they arrive without waiting for the guest to fault on them; readReplies
// places them.
func (r *restorer) refetch(ctx context.Context, runs []wire.Run) {
	for _, run := range runs {
		for p := run.Page; p < run.Page+run.Count; p += refetchChunk {
			n := min(refetchChunk, run.Page+run.Count-p)
			if err := r.send.PageRequest(ctx, run.Block, p, uint32(n)); err != nil {
				if ctx.Err() == nil {
					r.log.Warn("ask the source for owed pages", "error", err)
				}
				return
			}
		}
	}
}

// carriedMissing says the carried pages are missing now (restoreCarried).
func (r *restorer) carriedMissing() { r.advance(restoreCarried) }

// isCarried reports whether j is the reference carried for its page (an
// older one still in flight for the same page is stale), once the carried
// pages are missing; false if the restore stopped first. Call it only for
// a page whose entry is carried.
func (r *restorer) isCarried(j refJob) bool {
	if !r.await(r.ctx, restoreCarried) {
		return false
	}
	return r.carriedRefs[pageKey{j.block, j.page}].iter == j.iter
}

// placeMissing places a checked page after switchover (a post-copy
// reference, or one carried past switchover) if it is still missing.
func (r *restorer) placeMissing(j refJob, page []byte) {
	b := r.pl.blocks[j.block]
	r.forget(j.block, j.page)
	if !b.missing.Has(j.page) {
		return
	}
	if err := r.pl.place(b, j.page, page); err != nil {
		r.log.Warn("place restored page after switchover", "error", err)
		r.failMissing(j)
		return
	}
	if r.pl.resolved(b, j.page, &r.n.postDone) {
		r.n.verified.Add(1)
	}
}

// failMissing asks the source for a page whose reference failed after
// switchover, if it is still missing.
func (r *restorer) failMissing(j refJob) {
	r.forget(j.block, j.page)
	r.n.mismatch.Add(1)
	if r.pl.blocks[j.block].missing.Has(j.page) {
		if err := r.send.PageRequest(r.ctx, j.block, j.page, 1); err != nil && r.ctx.Err() == nil {
			r.log.Warn("ask the source for a page after a failed reference", "error", err)
		}
	}
}

// fault resolves a fault on page p of b from storage if a reference for it
// is queued: one read, checked, placed. It reports whether it did; if not
// (no reference, or it failed), the caller asks the source.
func (r *restorer) fault(b *dstBlock, p uint64, t0 time.Time) bool {
	if !r.active || r.reader == nil {
		return false
	}
	key := pageKey{b.idx, p}
	r.postMu.Lock()
	ref, ok := r.post[key]
	r.postMu.Unlock()
	if !ok && r.carriedSet != nil && r.carriedSet[b.idx].Has(p) {
		ref, ok = r.carriedRefs[key].ref, true
	}
	if !ok {
		return false
	}
	id, ok := r.ids[ref.Disk]
	if !ok {
		return false
	}
	page := make([]byte, pageSize)
	if err := r.reader.ReadPage(layout.Ref{GuestPage: p, Disk: id, Offset: ref.Offset}, page); err != nil || storageref.Hash(page) != ref.Hash {
		return false
	}
	if err := r.pl.place(b, p, page); err != nil {
		return false
	}
	if r.pl.resolved(b, p, &r.n.postDone) {
		r.n.verified.Add(1)
	}
	r.mu.Lock()
	r.faultLat = append(r.faultLat, time.Since(t0))
	r.mu.Unlock()
	return true
}

// release lets the collectors go on (the guest runs, or the migration
// ends).
func (r *restorer) release() { r.advance(restoreReleased) }

// report adds the storage figures to fig.
func (r *restorer) report(fig *report.Dest) {
	fig.Pages.StorageVerified = r.n.verified.Load()
	fig.Pages.StorageMismatch = r.n.mismatch.Load()
	if r.reader == nil {
		return
	}
	fig.Storage.BytesRead = r.reader.Stats().Bytes
	r.mu.Lock()
	span := r.last.Sub(r.first)
	fig.Storage.FaultLatencyUS = report.Summarize(r.faultLat)
	fig.Storage.PostcopyPages = r.n.postDone.Load()
	fig.Storage.CarriedPages = r.n.carried.Load()
	r.mu.Unlock()
	if span > 0 {
		fig.Storage.MBps = float64(fig.Storage.BytesRead) / 1e6 / span.Seconds()
	}
}

func (r *restorer) close() {
	if r.store != nil {
		r.store.Close()
	}
}
