package precopy

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/dmig/dmig/internal/storageref"
	"github.com/dmig/dmig/layout"
	"github.com/dmig/dmig/wire"
)

// layoutTimeout bounds one layout fetch: a guest too busy to answer costs
// the pass its references, not the migration.
const layoutTimeout = 5 * time.Second

// refSource turns the pages a storage layout names into storage references
// (hybrid mode). A layout is a hint: each reference carries the hash of the
// page as read from guest RAM, so whatever the layout says, the destination
// places exactly the bytes a data page would have carried, or gets the page
// from the source.
//
// A layout is used only in the pass it was fetched for. Pages written after
// the fetch are collected after the pass and, in a later pass, go out as data
// or under a newer layout: a page written since the layout was taken is never
// referenced under it. The final pass (guest paused, no fetch possible) sends
// data, so downtime never waits for storage. When hybrid leaves pages to
// post-copy, a layout is fetched just before the pause for the post-copy
// push: pages the scan at pause finds written go as data, the others it
// names as references, which the destination restores or reads on fault.
type refSource struct {
	addr    string
	refresh bool
	log     hclog.Logger

	lay  *layout.Layout
	pass uint32   // the pass lay may be used in
	keys []uint16 // wire disk id by layout disk id
	use  []bool   // layout disk id usable (its key is unique in the layout)
	base []uint64 // first guest page of each block: RAM pages are the blocks' concatenation

	fetchTook time.Duration // the last successful fetch
	sent      atomic.Uint64 // references sent
}

func newRefSource(cfg Config, blocks []*srcBlock) *refSource {
	if cfg.Mode != ModeHybrid || cfg.LayoutAddr == "" {
		return nil
	}
	r := &refSource{addr: cfg.LayoutAddr, refresh: !cfg.LayoutOnce, log: cfg.Logger.Named("layout")}
	var next uint64
	for _, b := range blocks {
		r.base = append(r.base, next)
		next += b.npages
	}
	return r
}

// prepareRefs fetches the layout for pass iter: always for the first, for a
// later one (with refresh) only if it is likely to pay: the pending pages
// the previous layout named, at the last pass's rate, would take longer to
// send than the last fetch took. A layout fetch walks the whole buffer pool
// in the guest (0.1–0.8 s for 200 k frames here), more than a late pass of a
// few thousand pages costs.
func (s *source) prepareRefs(ctx context.Context, iter uint32) {
	r := s.refs
	if r == nil || (iter > 1 && !r.refresh) {
		return
	}
	if iter > 1 && r.lay != nil && len(s.rep.IterationLog) > 0 {
		last := s.rep.IterationLog[len(s.rep.IterationLog)-1]
		var named uint64
		for _, b := range s.blocks {
			b.pending.Runs(0, b.npages, func(start, count uint64) bool {
				for p := start; p < start+count; p++ {
					if _, ok := r.lay.Lookup(r.base[b.idx] + p); ok {
						named++
					}
				}
				return true
			})
		}
		if last.Bytes > 0 && last.MS > 0 {
			saving := time.Duration(float64(named*pageSize) / float64(last.Bytes) * last.MS * float64(time.Millisecond))
			if saving < r.fetchTook {
				r.log.Debug("layout not refreshed: the pass would save less than a fetch costs", "iteration", iter, "named", named, "saving", saving, "fetch", r.fetchTook)
				return
			}
		}
	}
	r.prepare(ctx, iter, s.guestPages())
}

// prepare fetches the layout for pass iter. A failed fetch leaves the pass
// without references.
func (r *refSource) prepare(ctx context.Context, iter uint32, guestPages uint64) {
	if r == nil || (iter > 1 && !r.refresh) {
		return
	}
	fctx, cancel := context.WithTimeout(ctx, layoutTimeout)
	defer cancel()
	t0 := time.Now()
	l, err := layout.Fetch(fctx, r.addr)
	if err == nil {
		err = l.Validate(guestPages)
	}
	if err != nil {
		r.log.Warn("no storage references this pass", "iteration", iter, "error", err)
		return
	}
	r.lay, r.pass, r.fetchTook = l, iter, time.Since(t0)
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
	r.log.Debug("layout fetched", "iteration", iter, "pages", l.Pages(), "runs", len(l.Runs), "took", time.Since(t0))
}

// prepareFinalRefs fetches a layout for the post-copy push, just before
// the guest is paused. Pages written after the last pass's scan (the hot set
// the scan at pause leaves) may postdate it and go as data.
func (s *source) prepareFinalRefs(ctx context.Context) {
	s.refs.prepare(ctx, wire.IterationPostcopy, s.guestPages())
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
	ref, ok := r.lay.Lookup(r.base[b.idx] + p)
	if !ok || !r.use[ref.Disk] {
		return false
	}
	batch.AddRef(p, wire.Ref{Disk: r.keys[ref.Disk], Offset: ref.Offset, Hash: storageref.Hash(page)})
	r.sent.Add(1)
	return true
}

// guestPages is the size of the guest in pages, all blocks together.
func (s *source) guestPages() uint64 {
	var n uint64
	for _, b := range s.blocks {
		n += b.npages
	}
	return n
}
