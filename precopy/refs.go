package precopy

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/internal/storageref"
	"github.com/dmig/dmig/layout"
	"github.com/dmig/dmig/wire"
)

// refSource turns the pages a storage layout names into storage references
// (hybrid mode). A layout is a hint: each reference carries the hash of the
// page as read from guest RAM, so whatever the layout says, the destination
// places exactly the bytes a data page would have carried, or gets the page
// from the source.
//
// A layout is used only in the pass it was fetched for. Pages written after
// the fetch are collected after the pass and, in a later pass, go out as data
// or under a newer layout; only one written in the short while between a
// fetch ahead (ahead.go) and the collect may be referenced under a layout
// older than its write, and its hash fails. The final pass (guest paused,
// no fetch possible) sends data, so downtime never waits for storage. When hybrid leaves pages to
// post-copy, a layout is fetched just before the pause for the post-copy
// push: pages the scan at pause finds written go as data, the others it
// names as references, which the destination restores or reads on fault.
type refSource struct {
	addr    string
	timeout time.Duration
	refresh bool
	log     hclog.Logger

	lay     *layout.Layout
	byBlock []*layout.Layout // lay in block page numbers (GuestPage = page of the block)
	pass    uint32           // the pass lay may be used in
	keys    []uint16         // wire disk id by layout disk id
	use     []bool           // layout disk id usable (its key is unique in the layout)
	nblocks int
	// translate maps a layout page (guest-physical page number) to a block
	// index and page; strict: a layout naming a page it cannot map is
	// refused as a whole (the blocks' concatenation), else such pages are
	// skipped (a guest-physical map has holes).
	translate func(gpage uint64) (int, uint64, bool)
	strict    bool

	fetchTook time.Duration // the last successful fetch
	spent     time.Duration // waited for fetches, failed ones too
	// ahead is a fetch started before its pass (startFetch), nil if none.
	ahead *layoutFetch
	sent  atomic.Uint64 // references sent
	// first describes the first pass's layout (report.Refs but the routes).
	first report.Refs
}

// AddressTranslator is implemented by a Guest whose layouts name
// guest-physical pages that are not simply its RAM blocks back to back (a
// QEMU machine: RAM split around the PCI hole). Translate maps a
// guest-physical address to a RAM block (by Block.Name) and the byte offset
// in it; false where no RAM block backs the address.
type AddressTranslator interface {
	Translate(gpa uint64) (block string, off uint64, ok bool)
}

func newRefSource(cfg Config, blocks []*srcBlock, g Guest) *refSource {
	if cfg.Mode != ModeHybrid || cfg.LayoutAddr == "" {
		return nil
	}
	r := &refSource{addr: cfg.LayoutAddr, timeout: cfg.LayoutTimeout, refresh: !cfg.LayoutOnce, log: cfg.Logger.Named("layout"), nblocks: len(blocks)}
	if t, ok := g.(AddressTranslator); ok {
		idx := map[string]int{}
		for i, b := range blocks {
			idx[b.Name] = i
		}
		r.translate = func(gpage uint64) (int, uint64, bool) {
			name, off, ok := t.Translate(gpage * pageSize)
			i, known := idx[name]
			if !ok || !known || off%pageSize != 0 || off/pageSize >= blocks[i].npages {
				return 0, 0, false
			}
			return i, off / pageSize, true
		}
		return r
	}
	// A process guest: RAM page n is page n of the blocks' concatenation.
	r.strict = true
	base := make([]uint64, len(blocks))
	var next uint64
	for i, b := range blocks {
		base[i] = next
		next += b.npages
	}
	r.translate = func(gpage uint64) (int, uint64, bool) {
		for i := len(blocks) - 1; i >= 0; i-- {
			if gpage >= base[i] {
				if gpage-base[i] < blocks[i].npages {
					return i, gpage - base[i], true
				}
				return 0, 0, false
			}
		}
		return 0, 0, false
	}
	return r
}

// lookup returns the layout's reference for page p of block b.
func (r *refSource) lookup(b *srcBlock, p uint64) (layout.Ref, bool) {
	if r.byBlock == nil || int(b.idx) >= len(r.byBlock) {
		return layout.Ref{}, false
	}
	return r.byBlock[b.idx].Lookup(p)
}

// index re-expresses l in block page numbers.
func (r *refSource) index(l *layout.Layout) ([]*layout.Layout, error) {
	refs := make([][]layout.Ref, r.nblocks)
	var err error
	l.Each(func(ref layout.Ref) bool {
		b, p, ok := r.translate(ref.GuestPage)
		if !ok {
			if r.strict {
				err = fmt.Errorf("guest page %#x: %w", ref.GuestPage, layout.ErrOutOfRange)
				return false
			}
			return true
		}
		ref.GuestPage = p
		refs[b] = append(refs[b], ref)
		return true
	})
	if err != nil {
		return nil, err
	}
	out := make([]*layout.Layout, r.nblocks)
	for i := range refs {
		if out[i], err = layout.Build(refs[i]); err != nil {
			return nil, fmt.Errorf("block %d: %w", i, err)
		}
	}
	return out, nil
}

// prepareRefs fetches the layout for pass iter: always for the first, for a
// later one (with refresh) only if it is likely to pay: the pending pages
// the previous layout named, at the last pass's rate, would take longer to
// send than the last fetch took. A layout fetch walks the whole buffer pool
// in the guest (0.1–0.8 s for 200 k frames here), more than a late pass of a
// few thousand pages costs. A layout fetched during the pass before
// (fetchAhead) is used without that check: its walk ran beside the pass.
func (s *source) prepareRefs(ctx context.Context, iter uint32) {
	r := s.refs
	if r == nil || (iter > 1 && !r.refresh) {
		return
	}
	if r.ahead != nil && r.ahead.iter == iter {
		// Fetched during the pass before: its walk ran beside it. A walk
		// still running is waited for only as long as its layout would
		// save (a fresh walk in a busy guest can take far longer than the
		// first, which the agent may answer from its cache).
		limit := time.Duration(0)
		if saving, known := s.fetchSaving(); known {
			limit = max(saving, aheadMinWait)
		}
		r.takeAhead(ctx, iter, s.guestPages(), limit)
		return
	}
	if iter > 1 && !s.fetchPays(iter) {
		return
	}
	r.prepare(ctx, iter, s.guestPages())
}

// fetchPays reports whether a fresh layout for pass iter (a later pass, or
// the post-copy push) is likely to save more than it costs: the pending
// pages the previous layout named, at the last pass's rate, would take
// longer to send as data than the last fetch took. It logs why not.
func (s *source) fetchPays(iter uint32) bool {
	saving, known := s.fetchSaving()
	if !known || saving >= s.refs.fetchTook {
		return true
	}
	s.refs.log.Debug("layout not refreshed: the pass would save less than a fetch costs", "iteration", iter, "saving", saving, "fetch", s.refs.fetchTook)
	return false
}

// fetchSaving estimates what a fresh layout would save the next pass: the
// time its pending pages that the previous layout named take to send as
// data at the last pass's rate. False if there is nothing to estimate
// from (no layout, no pass yet).
func (s *source) fetchSaving() (time.Duration, bool) {
	r := s.refs
	if r.lay == nil || len(s.rep.IterationLog) == 0 {
		return 0, false
	}
	last := s.rep.IterationLog[len(s.rep.IterationLog)-1]
	if last.Bytes == 0 || last.MS <= 0 {
		return 0, false
	}
	var named uint64
	for _, b := range s.blocks {
		b.pending.Runs(0, b.npages, func(start, count uint64) bool {
			for p := start; p < start+count; p++ {
				if _, ok := r.lookup(b, p); ok {
					named++
				}
			}
			return true
		})
	}
	return time.Duration(float64(named*pageSize) / float64(last.Bytes) * last.MS * float64(time.Millisecond)), true
}

// takeAhead installs the layout fetched ahead for pass iter, waiting for
// it at most limit (0: until it arrives or fails). A fetch that is not
// done by then is dropped and the pass goes without references; its time
// so far becomes the last fetch's, so that later passes weigh a fetch at
// what it now costs.
func (r *refSource) takeAhead(ctx context.Context, iter uint32, guestPages uint64, limit time.Duration) {
	f := r.ahead
	if limit <= 0 {
		r.prepare(ctx, iter, guestPages)
		return
	}
	t0 := time.Now()
	timer := time.NewTimer(limit)
	defer timer.Stop()
	select {
	case <-f.done:
		r.prepare(ctx, iter, guestPages)
	case <-timer.C:
		r.dropAhead()
		r.spent += time.Since(t0)
		r.fetchTook = max(r.fetchTook, time.Since(f.started))
		r.log.Debug("layout fetched ahead not ready: the pass goes without references", "iteration", iter,
			"waited", time.Since(t0), "fetching_for", r.fetchTook)
	case <-ctx.Done():
		r.dropAhead()
	}
}

// prepare installs the layout for pass iter: the one fetched ahead for it
// (fetchAhead, startFetch) if there is one, waiting for it to arrive, else
// one fetched now. A failed fetch leaves the pass without references.
func (r *refSource) prepare(ctx context.Context, iter uint32, guestPages uint64) {
	if r == nil || (iter > 1 && !r.refresh) {
		return
	}
	t0 := time.Now()
	var res fetched
	if f := r.ahead; f != nil && f.iter == iter {
		r.ahead = nil
		<-f.done // bounded by the fetch's timeout, ended with ctx
		res = f.res
	} else {
		r.dropAhead()
		res = r.load(ctx, iter, guestPages)
	}
	waited := time.Since(t0)
	r.spent += waited
	r.install(iter, res, waited)
}

// fetched is a layout fetched, checked and indexed for one pass.
type fetched struct {
	l       *layout.Layout
	byBlock []*layout.Layout
	err     error
	took    time.Duration // fetch, check and index
}

// load fetches the layout for pass iter, checks it against a guest of
// guestPages pages and indexes it by block. Safe to run beside the
// passes: it reads only what is fixed once the source is open (and writes
// r.first for the first pass, which nothing reads before its prepare).
func (r *refSource) load(ctx context.Context, iter uint32, guestPages uint64) fetched {
	t0 := time.Now()
	l, err := r.fetch(ctx, iter)
	if err == nil && r.strict {
		err = l.Validate(guestPages)
	}
	var byBlock []*layout.Layout
	if err == nil {
		byBlock, err = r.index(l)
	}
	return fetched{l: l, byBlock: byBlock, err: err, took: time.Since(t0)}
}

// install makes res the layout of pass iter; waited is how long the
// migration waited for it.
func (r *refSource) install(iter uint32, res fetched, waited time.Duration) {
	if res.err != nil {
		r.log.Warn("no storage references this pass", "iteration", iter, "error", res.err)
		if iter == 1 {
			r.first.Warning = fmt.Sprintf("no layout for the first pass: %v", res.err)
		}
		return
	}
	l := res.l
	if iter == 1 {
		r.first.LayoutPages = l.Pages()
	}
	r.lay, r.byBlock, r.pass, r.fetchTook = l, res.byBlock, iter, res.took

	r.keys, r.use = make([]uint16, len(l.Disks)), make([]bool, len(l.Disks))
	seen := map[uint16]bool{}
	for _, d := range l.Disks {
		k := storageref.DiskKey(d.Name)
		r.keys[d.ID], r.use[d.ID] = k, !seen[k]
		if seen[k] {
			r.log.Warn("disk key shared with another disk of the layout: its pages go as data", "disk", d.Name, "key", k)
		}
		seen[k] = true
	}
	r.log.Debug("layout fetched", "iteration", iter, "pages", l.Pages(), "runs", len(l.Runs), "took", res.took, "waited", waited)
}

// fetch gets the layout for pass iter. The first pass takes what the agent
// has, if it is recent (an agent that refreshes in the background answers
// at once; see layout.Server.MaxAge): a stale page only costs a failed
// check and a resend. But a cached layout taken before the buffer pool
// loaded, or naming far less than the pool's clean pages, would send most
// of the pool as data: then a fresh one is asked for, and if that fails or
// is still short, the first pass goes with what there is, with a warning
// giving the figures. Later passes always ask for a fresh one.
func (r *refSource) fetch(ctx context.Context, iter uint32) (*layout.Layout, error) {
	get := func(refresh bool) (*layout.Layout, *layout.Info, error) {
		fctx, cancel := context.WithTimeout(ctx, r.timeout)
		defer cancel()
		return layout.FetchInfo(fctx, r.addr, refresh)
	}
	l, info, err := get(iter > 1)
	if err != nil || iter != 1 {
		return l, err
	}
	if info != nil && info.Cached {
		if why := layout.Judge(*info, l.Pages()); why != "" {
			r.log.Info("cached layout too old or too small for the pool: asking the agent for a fresh one", "why", why)
			fl, finfo, ferr := get(true)
			if ferr != nil {
				r.first.Warning = fmt.Sprintf("%s; a fresh layout failed: %v", why, ferr)
				r.log.Warn("first pass with the agent's cached layout", "why", why, "refresh_error", ferr)
			} else {
				r.first.Refreshed = why
				l, info = fl, finfo
			}
		}
	}
	if info == nil {
		return l, nil
	}
	r.first.LayoutAgeMS, r.first.Cached = report.MS(info.Age), info.Cached
	r.first.PoolCleanPages, r.first.PoolDirtyPages = info.CleanPages(), info.DirtyPages
	if !info.Cached {
		// A fresh layout is the best the agent has, whenever the pool
		// loaded: only its coverage is worth a word.
		fresh := *info
		fresh.LoadAge = 0
		if why := layout.Judge(fresh, l.Pages()); why != "" {
			r.first.Warning = "fresh layout: " + why
			r.log.Warn("the agent's fresh layout names far fewer pages than the buffer pool's clean ones: most of the pool goes as data",
				"layout_pages", l.Pages(), "pool_clean_pages", info.CleanPages(), "why", why)
		}
	}
	return l, nil
}

// why says why page p of b did not go by reference in the first pass.
func (r *refSource) why(b *srcBlock, p uint64) route {
	if r == nil || r.lay == nil || r.pass != 1 {
		return routeNoLayout
	}
	ref, ok := r.lookup(b, p)
	switch {
	case !ok:
		return routeNotInLayout
	case !r.use[ref.Disk]:
		return routeRefused
	}
	return routeNotInLayout
}

// route is how a page of the first pass went (report.Routes).
type route int

const (
	routeReference route = iota
	routeZero
	routeNotInLayout
	routeNoLayout
	routeRefused
	numRoutes
)

// routes counts the first pass's pages by route; safe for concurrent use.
type routes [numRoutes]atomic.Uint64

// count adds a page to route k; a nil c counts nothing (not the first pass).
func (c *routes) count(k route) {
	if c != nil {
		c[k].Add(1)
	}
}

func (c *routes) report() report.Routes {
	return report.Routes{Reference: c[routeReference].Load(), Zero: c[routeZero].Load(), NotInLayout: c[routeNotInLayout].Load(),
		NoLayout: c[routeNoLayout].Load(), Refused: c[routeRefused].Load()}
}

// prepareFinalRefs fetches a layout for the post-copy push, just before
// the guest is paused, if it pays (fetchPays: the pause waits for the
// fetch, and a push of a few thousand pages saves less than that). Pages
// written after the last pass's scan (the hot set the scan at pause leaves)
// may postdate it and go as data.
func (s *source) prepareFinalRefs(ctx context.Context) {
	r := s.refs
	if r == nil || !r.refresh || !s.fetchPays(wire.IterationPostcopy) {
		return
	}
	r.prepare(ctx, wire.IterationPostcopy, s.guestPages())
}

// add appends page p of b (its bytes in page, read from guest RAM) to the
// batch as a storage reference if the layout of this pass names it.
func (r *refSource) add(batch *wire.PageBatch, b *srcBlock, p uint64, page []byte) bool {
	if r == nil || r.lay == nil || batch.Iteration != r.pass {
		return false
	}
	if batch.Iteration == wire.IterationPostcopy && b.hot.Has(p) {
		return false
	}
	ref, ok := r.lookup(b, p)
	if !ok || !r.use[ref.Disk] {
		return false
	}
	batch.AddRef(p, wire.Ref{Disk: r.keys[ref.Disk], Offset: ref.Offset, Hash: storageref.Hash(page)})
	r.sent.Add(1)
	return true
}

// pushable reports whether the post-copy push has a layout to send
// references under.
func (r *refSource) pushable() bool {
	return r != nil && r.lay != nil && r.pass == wire.IterationPostcopy
}

// names reports whether the post-copy push would send page p of b as a
// reference (unless its content turns out to be zeros).
func (r *refSource) names(b *srcBlock, p uint64) bool {
	if b.hot.Has(p) || b.noref.Has(p) {
		return false
	}
	ref, ok := r.lookup(b, p)
	return ok && r.use[ref.Disk]
}

// guestPages is the size of the guest in pages, all blocks together.
func (s *source) guestPages() uint64 {
	var n uint64
	for _, b := range s.blocks {
		n += b.npages
	}
	return n
}
