package wire

import (
	"encoding/binary"
	"fmt"
	"math/bits"
)

// Run is Count pages from Page of Block.
type Run struct {
	Block uint32
	Page  uint64
	Count uint64
}

// Runs are sorted by (Block, Page), never overlap and never touch (touching
// runs are one run), so each page set has exactly one encoding:
//
//	count                      uvarint
//	per run: block delta       uvarint (block - previous block; first: block)
//	         page gap          uvarint (first in block: page;
//	                                    else page - previous end - 1)
//	         count - 1         uvarint
//
// A fully dirty block costs 3 bytes, a scattered page about 4.

const minRunLen = 3

func checkRuns(runs []Run) error {
	for i, r := range runs {
		if r.Count == 0 || r.Page >= MaxPages || r.Count > MaxPages-r.Page {
			return fmt.Errorf("%w: run %d: %d pages at %d", ErrRange, i, r.Count, r.Page)
		}
		if r.Block >= MaxBlocks {
			return fmt.Errorf("%w: run %d: block %d", ErrRange, i, r.Block)
		}
		if i > 0 {
			p := runs[i-1]
			if r.Block < p.Block || (r.Block == p.Block && r.Page <= p.Page+p.Count) {
				return fmt.Errorf("%w: run %d (block %d page %d) not after run %d (block %d pages %d..%d)",
					ErrMalformed, i, r.Block, r.Page, i-1, p.Block, p.Page, p.Page+p.Count)
			}
		}
	}
	return nil
}

func appendRuns(b []byte, runs []Run) []byte {
	b = binary.AppendUvarint(b, uint64(len(runs)))
	var prev Run
	for i, r := range runs {
		gap := r.Page
		if i > 0 && r.Block == prev.Block {
			gap = r.Page - (prev.Page + prev.Count) - 1
		}
		blockDelta := r.Block
		if i > 0 {
			blockDelta -= prev.Block
		}
		b = binary.AppendUvarint(b, uint64(blockDelta))
		b = binary.AppendUvarint(b, gap)
		b = binary.AppendUvarint(b, r.Count-1)
		prev = r
	}
	return b
}

// maxRuns bounds a run list by the largest control frame.
const maxRuns = maxControlFrame / minRunLen

func decodeRuns(d *decoder) []Run {
	n := d.count("run count", maxRuns, minRunLen)
	if d.err != nil || n == 0 {
		return nil
	}
	runs := make([]Run, n)
	var prev Run
	for i := range runs {
		delta := d.uvarint("block delta")
		gap := d.uvarint("page gap")
		cm1 := d.uvarint("run length")
		if d.err != nil {
			return nil
		}
		block := uint64(prev.Block) + delta
		if i == 0 {
			block = delta
		}
		if block >= MaxBlocks {
			d.fail(ErrRange, "run %d block %d", i, block)
			return nil
		}
		page := gap
		if i > 0 && delta == 0 {
			// Sums are checked so a hostile gap cannot wrap around.
			end, c1 := bits.Add64(prev.Page, prev.Count, 0)
			var c2 uint64
			page, c2 = bits.Add64(end, gap, 1)
			if c1|c2 != 0 {
				page = MaxPages
			}
		}
		if page >= MaxPages {
			d.fail(ErrRange, "run %d page beyond %d", i, uint64(MaxPages))
			return nil
		}
		runs[i].Page = page
		if cm1 >= MaxPages-runs[i].Page {
			d.fail(ErrRange, "run %d of %d pages at %d", i, cm1+1, runs[i].Page)
			return nil
		}
		runs[i].Block = uint32(block)
		runs[i].Count = cm1 + 1
		prev = runs[i]
	}
	return runs
}

// AppendPage adds one page to a sorted run list, extending the last run when
// the page follows it. Pages must be added in (block, page) order.
func AppendPage(runs []Run, block uint32, page uint64) []Run {
	if n := len(runs); n > 0 {
		last := &runs[n-1]
		if last.Block == block && last.Page+last.Count == page {
			last.Count++
			return runs
		}
	}
	return append(runs, Run{Block: block, Page: page, Count: 1})
}

// AppendBitmap adds the set bits of a page bitmap of block (bit i of word
// i/64 = page i, first npages bits) to a sorted run list.
func AppendBitmap(runs []Run, block uint32, bitmap []uint64, npages uint64) []Run {
	for w, word := range bitmap {
		base := uint64(w) * 64
		for word != 0 {
			i := uint64(bits.TrailingZeros64(word))
			if base+i >= npages {
				return runs
			}
			// Take the whole stretch of ones from bit i at once.
			ones := uint64(bits.TrailingZeros64(^(word >> i)))
			n := min(ones, npages-(base+i))
			if k := len(runs); k > 0 && runs[k-1].Block == block && runs[k-1].Page+runs[k-1].Count == base+i {
				runs[k-1].Count += n
			} else {
				runs = append(runs, Run{Block: block, Page: base + i, Count: n})
			}
			if i+ones >= 64 {
				break
			}
			word &^= (1<<ones - 1) << i
		}
	}
	return runs
}

// PageCount is the number of pages in runs.
func PageCount(runs []Run) uint64 {
	var n uint64
	for _, r := range runs {
		n += r.Count
	}
	return n
}
