package precopy

import (
	"cmp"
	"context"
	"maps"
	"slices"

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
// them into page order (a batch's pages must ascend) and sending them:
// with two bulk connections, two chunks make one batch of the
// destination's restore (4096 pages).
const diskChunk = 2048

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

// blockPage is page of block (an index into source.blocks).
type blockPage struct {
	block int
	page  uint64
}

// sendInDiskOrder sends, on bulk connection i of n, the pending pages of
// its stripes (wire.BulkConn) that order names, walking order, diskChunk
// pages at a time. It returns batches and pages sent; the pages it sent are
// no longer pending, so the pass's sendStripes then sends the others.
func (s *source) sendInDiskOrder(ctx context.Context, c *wire.Conn, i, n int, iter uint32, order []diskRun) (batches, sent uint64, err error) {
	var batch wire.PageBatch
	flush := func() error { return flushBatch(ctx, c, &batch, &batches) }
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
			if !b.pending.Remove(bp.page) {
				continue
			}
			s.addPage(&batch, b, bp.page)
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
	for _, r := range order {
		b := s.blocks[r.block]
		for p := r.page; p < r.page+uint64(r.pages); p++ {
			if wire.BulkConn(b.idx, p, n) != i || !b.pending.Has(p) {
				continue
			}
			chunk = append(chunk, blockPage{r.block, p})
			if len(chunk) == diskChunk {
				if err := sendChunk(); err != nil {
					return batches, sent, err
				}
				if err := ctx.Err(); err != nil {
					return batches, sent, err
				}
			}
		}
	}
	return batches, sent, sendChunk()
}
