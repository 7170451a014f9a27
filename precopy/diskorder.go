package precopy

import (
	"cmp"
	"context"
	"maps"
	"slices"
	"sync/atomic"

	"github.com/dmig/dmig/layout"
	"github.com/dmig/dmig/wire"
)

// A hybrid pass sends the pages its layout names in the order of their
// disk offsets, then the others in page order (sendStripes). In page order
// the references of one batch point all over the data disk (a buffer pool
// maps frames to memory in no order of their own): the destination then
// reads them with one pread per page, and from storage outside its page
// cache, one device round trip each. In disk order each batch names one
// stretch of the disk, read in large sequential reads.
//
// diskChunk is how many such pages a connection collects before sorting
// them into page order (a batch's pages must ascend) and sending them as
// one batch. The references share each connection with the pass's data
// (sendBoth), a frame each in turn, and a data frame is a megabyte at the
// link's pace: a chunk is how many references reach the restore per data
// frame. At 2048 the restore waited for its references through the first
// half of an 8 GiB guest's first pass on a 1 Gbit/s link (they came at
// 110 k/s, the read kept up with them) and was 240 k behind at its end; at
// 16384 (about 500 KB of references) they all came in the first 6 s and
// the read ran at the cores' pace from the start.
const diskChunk = 16384

// diskRun is a run of a layout in block page numbers.
type diskRun struct {
	block int
	page  uint64 // first page in the block
	pages uint32
	disk  layout.DiskID
	off   uint64 // byte offset of the first page on its disk
}

// diskOrder is the runs of byBlock (a layout in block page numbers),
// sorted by disk and offset. An 8 GiB pool of scattered pages is 1.4 M
// runs, and the sort is paid before each pass that fetched a layout: it
// sorts integers (a run's disk page above its index), a disk at a time,
// at a third of a sort of the runs themselves.
func diskOrder(byBlock []*layout.Layout) []diskRun {
	var n int
	perDisk := map[layout.DiskID]int{}
	for _, l := range byBlock {
		n += len(l.Runs)
		for _, r := range l.Runs {
			perDisk[r.Disk]++
		}
	}
	runs := make([]diskRun, 0, n)
	for i, l := range byBlock {
		for _, r := range l.Runs {
			runs = append(runs, diskRun{block: i, page: r.GuestPage, pages: r.Pages, disk: r.Disk, off: r.Offset})
		}
	}
	const idxBits = 24
	byDisk := make(map[layout.DiskID][]uint64, len(perDisk))
	for d, c := range perDisk {
		byDisk[d] = make([]uint64, 0, c)
	}
	for i, r := range runs {
		if len(runs) >= 1<<idxBits || r.off/layout.PageSize >= 1<<(64-idxBits) {
			// Beyond the packing: sort the runs themselves.
			slices.SortFunc(runs, func(a, b diskRun) int {
				return cmp.Or(cmp.Compare(a.disk, b.disk), cmp.Compare(a.off, b.off))
			})
			return runs
		}
		byDisk[r.disk] = append(byDisk[r.disk], r.off/layout.PageSize<<idxBits|uint64(i))
	}
	disks := slices.Sorted(maps.Keys(byDisk))
	out := make([]diskRun, 0, len(runs))
	for _, d := range disks {
		keys := byDisk[d]
		slices.Sort(keys)
		for _, k := range keys {
			out = append(out, runs[k&(1<<idxBits-1)])
		}
	}
	return out
}

// passOrder is what sendInDiskOrder walks in pass iter: nil if the pass
// has no layout; in the first pass the layout's runs in disk order; in a
// later one, which sends a few percent of the pages, only the pending
// pages the layout names, so that the sort is of those.
func (s *source) passOrder(iter uint32) []diskRun {
	r := s.refs
	if r == nil || r.lay == nil || r.pass != iter {
		return nil
	}
	if iter == 1 {
		return diskOrder(r.byBlock)
	}
	var named []diskRun
	for i, b := range s.blocks {
		b.pending.Runs(0, b.npages, func(start, count uint64) bool {
			for p := start; p < start+count; p++ {
				if ref, ok := r.lookup(b, p); ok {
					named = append(named, diskRun{block: i, page: p, pages: 1, disk: ref.Disk, off: ref.Offset})
				}
			}
			return true
		})
	}
	slices.SortFunc(named, func(a, b diskRun) int {
		return cmp.Or(cmp.Compare(a.disk, b.disk), cmp.Compare(a.off, b.off))
	})
	return named
}

// firstPass is the only pass that sends pages on other bulk connections
// than their own (as references, in disk order). A page's entries must
// reach the destination in pass order, and only those of its own
// connection arrive in the order they were sent: the destination drops a
// reference older than its page's latest entry, but a page's older data
// arriving after a newer pass's reference on another connection would
// overwrite the newer page. In the first pass no page has an older entry;
// later passes send a few percent of the pages, each on its own
// connection (still in disk order within it).
const firstPass = 1

// blockPage is page of block (an index into source.blocks).
type blockPage struct {
	block int
	page  uint64
}

// diskCursor hands out a pass's disk order to the bulk connections, a
// span of runs at a time, so that each stretch of the disk goes whole on
// one connection: the destination then reads it in one sequential read
// instead of each connection's half of it (the pages of a stretch belong
// to both by their guest addresses) in two reads of half-empty ranges.
type diskCursor struct {
	order []diskRun
	next  atomic.Int64
}

// take returns the next span of the order, nil at its end.
func (d *diskCursor) take() []diskRun {
	const span = diskChunk
	end := int(d.next.Add(span))
	start := end - span
	if start >= len(d.order) {
		return nil
	}
	return d.order[start:min(end, len(d.order))]
}

// sendInDiskOrder sends, on bulk connection c, the pending pages of the
// spans it takes from cur, diskChunk pages at a time. A page of another
// connection's stripes (wire.BulkConn) goes only as a reference, and only
// in the first pass (see firstPass); one that would go as data or zeros,
// or in a later pass, is left pending for its own connection. It returns
// batches and pages sent; the pages it sent are no longer pending, so the
// pass's sendStripes then sends the others.
func (s *source) sendInDiskOrder(ctx context.Context, c *wire.Conn, i, n int, iter uint32, cur *diskCursor) (batches, sent uint64, err error) {
	var batch wire.PageBatch
	flush := func() error { return s.flushBatch(ctx, c, &batch, &batches) }
	chunk := make([]blockPage, 0, diskChunk)
	sendChunk := func() error {
		slices.SortFunc(chunk, func(a, b blockPage) int {
			return cmp.Or(cmp.Compare(a.block, b.block), cmp.Compare(a.page, b.page))
		})
		for _, bp := range chunk {
			b := s.blocks[bp.block]
			if len(batch.Entries) > 0 && batch.Block != b.idx {
				if err := flush(); err != nil {
					return err
				}
				batch.Reset(b.idx, iter)
			}
			if len(batch.Entries) == 0 {
				batch.Reset(b.idx, iter)
			}
			if wire.BulkConn(b.idx, bp.page, n) == i {
				if !b.pending.Remove(bp.page) {
					continue
				}
				s.addPage(&batch, b, bp.page)
			} else if iter != firstPass || !s.addForeignRef(&batch, b, bp.page) {
				continue
			}
			sent++
			if batch.Full() {
				if err := flush(); err != nil {
					return err
				}
				batch.Reset(b.idx, iter)
			}
		}
		chunk = chunk[:0]
		// A chunk ends its batch: the next chunk is another stretch of
		// the disk, the destination's next read.
		err := flush()
		batch.Reset(batch.Block, iter)
		return err
	}
	for span := cur.take(); span != nil; span = cur.take() {
		for _, r := range span {
			b := s.blocks[r.block]
			for p := r.page; p < r.page+uint64(r.pages); p++ {
				if b.pending.Has(p) {
					chunk = append(chunk, blockPage{r.block, p})
				}
			}
		}
		if len(chunk) >= diskChunk/2 {
			if err := sendChunk(); err != nil {
				return batches, sent, err
			}
		}
		if err := ctx.Err(); err != nil {
			return batches, sent, err
		}
	}
	return batches, sent, sendChunk()
}

// addForeignRef adds page p of b, which travels on another bulk
// connection, to batch if it goes as a storage reference; else it leaves
// the page pending (for its own connection) and reports false.
func (s *source) addForeignRef(batch *wire.PageBatch, b *srcBlock, p uint64) bool {
	if s.dataOnly || b.noref.Has(p) || b.data != nil && !b.data.Has(p) || !b.pending.Remove(p) {
		return false
	}
	page := b.Page(p)
	if isZero(page) || !s.refs.add(batch, b, p, page) {
		b.pending.Add(p)
		return false
	}
	if b.resend.Remove(p) {
		s.resent.Add(1)
	}
	if s.noteSent(b, p) && batch.Iteration == 1 { // the first pass's routes
		s.firstPass.count(routeReference)
	}
	return true
}
