package precopy

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"slices"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/dmig/dmig/internal/pages"
	"github.com/dmig/dmig/internal/ramfile"
	"github.com/dmig/dmig/layout"
	"github.com/dmig/dmig/wire"
)

// A hybrid pass sends every pending page once, on its own connection, in
// batches whose pages ascend; the pages the layout names go first, in
// chunks of disk order, so that each chunk's references name one stretch
// of the disk; the others follow as data.
func TestPassInDiskOrder(t *testing.T) {
	const npages = 1 << 15 // per block: 128 stripes of 256 pages
	s, disk := diskOrderSource(t, npages, 1)
	named := len(disk)
	order := s.passOrder(1)
	if len(order) != named {
		t.Fatalf("disk order of %d runs, want %d", len(order), named)
	}

	const conns = 2
	type got struct {
		kind wire.Kind
		conn int
		off  uint64
	}
	seen := map[[2]uint64]got{}
	var chunkRefs [][]uint64 // disk pages of each batch of references
	sendPass(t, s, conns, 1, order, func(i int, batch *wire.PageBatch) {
		var offs []uint64
		for k, e := range batch.Entries {
			if k > 0 && e.Page <= batch.Entries[k-1].Page {
				t.Fatalf("batch pages not ascending: %d after %d", e.Page, batch.Entries[k-1].Page)
			}
			if wire.BulkConn(batch.Block, e.Page, conns) != i && e.Kind != wire.KindRef {
				// Data and zeros keep to their page's connection:
				// only a reference may overtake (the destination
				// drops one older than its page's latest entry).
				t.Errorf("block %d page %d sent as %v on connection %d", batch.Block, e.Page, e.Kind, i)
			}
			key := [2]uint64{uint64(batch.Block), e.Page}
			if _, dup := seen[key]; dup {
				t.Errorf("block %d page %d sent twice", batch.Block, e.Page)
			}
			seen[key] = got{e.Kind, i, e.Ref.Offset}
			if e.Kind == wire.KindRef {
				offs = append(offs, e.Ref.Offset/pageSize)
			}
		}
		if len(offs) > 0 {
			chunkRefs = append(chunkRefs, offs)
		}
	})
	if len(seen) != 2*npages {
		t.Fatalf("%d pages sent, want %d", len(seen), 2*npages)
	}
	for key, g := range seen {
		gpage := key[0]*npages + key[1]
		wantRef := gpage%2 == 0
		if (g.kind == wire.KindRef) != wantRef {
			t.Errorf("guest page %d sent as %v", gpage, g.kind)
		}
		if wantRef && g.off != disk[gpage/2]*pageSize {
			t.Errorf("guest page %d referenced at %#x, want %#x", gpage, g.off, disk[gpage/2]*pageSize)
		}
	}
	// Each batch of references is one chunk of the disk order, whole on
	// one connection: its disk pages span about diskChunk pages, not the
	// whole disk, and not half of twice that.
	span := func(offs []uint64) (lo, hi uint64) {
		lo, hi = offs[0], offs[0]
		for _, o := range offs {
			lo, hi = min(lo, o), max(hi, o)
		}
		return lo, hi
	}
	// A chunk goes as a batch per block: consecutive batches over the
	// same stretch are one chunk, which names most of its stretch.
	for k := 0; k < len(chunkRefs); {
		group := chunkRefs[k]
		lo, hi := span(group)
		for k++; k < len(chunkRefs); k++ {
			l2, h2 := span(chunkRefs[k])
			if l2 > hi || h2 < lo {
				break
			}
			group = append(slices.Clone(group), chunkRefs[k]...)
			lo, hi = min(lo, l2), max(hi, h2)
		}
		if 4*uint64(len(group)) < 3*(hi-lo+1) {
			t.Errorf("a chunk of %d references over disk pages %d..%d: the stretch split between connections", len(group), lo, hi)
		}
	}
	for _, offs := range chunkRefs {
		lo, hi := span(offs)
		if hi-lo > 2*diskChunk {
			t.Errorf("a batch of %d references spans disk pages %d..%d: not one stretch of the disk", len(offs), lo, hi)
		}
	}
}

// sendPass sends pass iter of s over conns bulk connections, one after
// the other, as the source does (its disk order first, from one cursor,
// then its stripes), and calls each with every batch connection i
// carried; the batches' data is read and dropped.
func sendPass(t *testing.T, s *source, conns int, iter uint32, order []diskRun, each func(i int, batch *wire.PageBatch)) {
	t.Helper()
	ctx := context.Background()
	cur := &diskCursor{order: order}
	for i := range conns {
		a, b := net.Pipe()
		src, dst := wire.NewConn(a, wire.RoleBulk, i), wire.NewConn(b, wire.RoleBulk, i)
		errc := make(chan error, 1)
		go func() {
			_, _, err := s.sendInDiskOrder(ctx, src, i, conns, iter, cur)
			if err == nil {
				_, _, err = s.sendStripes(ctx, src, i, conns, iter, nil, nil)
			}
			a.Close()
			errc <- err
		}()
		for {
			m, err := dst.ReadFrame(ctx)
			if err != nil {
				break
			}
			each(i, m.(*wire.PageBatch))
			if err := dst.ReadData(make([]byte, dst.DataLeft())); err != nil {
				t.Fatal(err)
			}
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}

// diskOrderSource is a source of two blocks of npages pages, all pending,
// whose layout for pass iter names the even guest pages of both blocks at
// disk pages given by a shuffle (disk[i]: guest page 2i's), so that page
// order and disk order differ everywhere.
func diskOrderSource(t *testing.T, npages int, iter uint32) (*source, []uint64) {
	t.Helper()
	// Block 0 guest pages 0..npages-1, block 1 the next npages.
	named := 2 * npages / 2
	disk := make([]uint64, named)
	for i := range disk {
		disk[i] = uint64(i)
	}
	for i := len(disk) - 1; i > 0; i-- {
		j := int((uint64(i) * 0x9e3779b97f4a7c15 >> 33) % uint64(i+1))
		disk[i], disk[j] = disk[j], disk[i]
	}
	var refs []layout.Ref
	for i := range named {
		refs = append(refs, layout.Ref{GuestPage: uint64(2 * i), Disk: 0, Offset: disk[i] * pageSize})
	}
	l, err := layout.Build(refs)
	if err != nil {
		t.Fatal(err)
	}
	l.Disks = []layout.Disk{{ID: 0, Name: "data"}}
	var blocks []*srcBlock
	for b := range 2 {
		mem := make([]byte, npages*pageSize)
		for p := range uint64(npages) {
			binary.LittleEndian.PutUint64(mem[p*pageSize:], uint64(b)<<32|p|1<<40)
		}
		blk := &srcBlock{idx: uint32(b), npages: uint64(npages), Block: &ramfile.Block{Mem: mem}}
		blk.pending, blk.hot, blk.noref, blk.resend, blk.sent = pages.NewSet(uint64(npages)), pages.NewSet(uint64(npages)), pages.NewSet(uint64(npages)), pages.NewSet(uint64(npages)), pages.NewSet(uint64(npages))
		blk.pending.Fill()
		blocks = append(blocks, blk)
	}
	s := &source{log: hclog.NewNullLogger(), blocks: blocks}
	s.refs = newRefSource(hybridCfg(Config{Mode: ModeHybrid, LayoutAddr: serveLayout(t, l)}), s.blocks, nil)
	s.refs.prepare(context.Background(), iter, uint64(2*npages))
	return s, disk
}

// A later pass sends every page on its own bulk connection, references
// too: a page's entries then reach the destination in pass order, which a
// reference on another connection would not keep against the page's
// older data still in flight on its own.
func TestLaterPassKeepsPagesOnTheirConnection(t *testing.T) {
	const npages = 1 << 12
	s, _ := diskOrderSource(t, npages, 2)
	order := s.passOrder(2)
	if len(order) == 0 {
		t.Fatal("no disk order for pass 2")
	}
	const conns = 2
	var refs, total int
	sendPass(t, s, conns, 2, order, func(i int, batch *wire.PageBatch) {
		for _, e := range batch.Entries {
			total++
			if e.Kind == wire.KindRef {
				refs++
			}
			if c := wire.BulkConn(batch.Block, e.Page, conns); c != i {
				t.Errorf("pass 2: block %d page %d (%v) sent on connection %d, its own is %d", batch.Block, e.Page, e.Kind, i, c)
			}
		}
	})
	if total != 2*npages || refs != npages {
		t.Errorf("pass 2 sent %d pages, %d as references; want %d, %d", total, refs, 2*npages, npages)
	}
}

// A later pass orders only its pending pages that the layout names.
func TestPassOrderLaterPass(t *testing.T) {
	l := &layout.Layout{
		Disks: []layout.Disk{{ID: 0, Name: "data"}},
		Runs: []layout.Run{
			{GuestPage: 0, Pages: 4, Disk: 0, Offset: 40 * pageSize},
			{GuestPage: 4, Pages: 4, Disk: 0, Offset: 8 * pageSize},
		},
	}
	blk := &srcBlock{idx: 0, npages: 16, Block: &ramfile.Block{Mem: make([]byte, 16*pageSize)}}
	blk.pending = pages.NewSet(16)
	for _, p := range []uint64{1, 5, 6, 12} { // 12: not in the layout
		blk.pending.Add(p)
	}
	s := &source{log: hclog.NewNullLogger(), blocks: []*srcBlock{blk}}
	s.refs = newRefSource(hybridCfg(Config{Mode: ModeHybrid, LayoutAddr: serveLayout(t, l)}), s.blocks, nil)
	s.refs.prepare(context.Background(), 2, 16)
	var got []uint64
	for _, r := range s.passOrder(2) {
		got = append(got, r.page)
	}
	if want := []uint64{5, 6, 1}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("pass 2 order %v, want %v (pages 5, 6 at disk pages 9, 10 before page 1 at 41)", got, want)
	}
	if s.passOrder(3) != nil {
		t.Error("an order for a pass without its layout")
	}
}
