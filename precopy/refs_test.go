package precopy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/dmig/dmig/internal/pages"
	"github.com/dmig/dmig/internal/ramfile"
	"github.com/dmig/dmig/internal/storageref"
	"github.com/dmig/dmig/layout"
	"github.com/dmig/dmig/wire"
)

// serveLayout serves l on a local port until the test ends.
func serveLayout(t *testing.T, l *layout.Layout) string {
	return serveGet(t, func(context.Context) (*layout.Layout, error) { return l, nil })
}

// serveGet serves the layouts get takes on a local port until the test ends.
func serveGet(t *testing.T, get func(context.Context) (*layout.Layout, error)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		layout.Serve(ctx, ln, get)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String()
}

func TestRefSourceModes(t *testing.T) {
	blocks := []*srcBlock{{idx: 0, npages: 8}}
	for _, m := range []Mode{ModePrecopy, ModePostcopy} {
		if r := newRefSource(hybridCfg(Config{Mode: m, LayoutAddr: "127.0.0.1:1"}), blocks, nil); r != nil {
			t.Errorf("%s uses storage references", m)
		}
	}
	if r := newRefSource(hybridCfg(Config{Mode: ModeHybrid}), blocks, nil); r != nil {
		t.Error("hybrid without a layout uses storage references")
	}
}

func TestRefSourceAdd(t *testing.T) {
	// Two blocks of 4 pages: guest pages 0-3 and 4-7. The layout names
	// guest pages 1, 5 and 6.
	l := &layout.Layout{
		Disks: []layout.Disk{{ID: 0, Name: "data"}},
		Runs: []layout.Run{
			{GuestPage: 1, Pages: 1, Disk: 0, Offset: 40960},
			{GuestPage: 5, Pages: 2, Disk: 0, Offset: 8192},
		},
	}
	addr := serveLayout(t, l)
	blocks := []*srcBlock{{idx: 0, npages: 4}, {idx: 1, npages: 4}}
	r := newRefSource(hybridCfg(Config{Mode: ModeHybrid, LayoutAddr: addr}), blocks, nil)
	r.prepare(context.Background(), 1, 8)
	page := bytes.Repeat([]byte{7}, pageSize)

	var batch wire.PageBatch
	batch.Reset(1, 1)
	if r.add(&batch, blocks[1], 0, page) {
		t.Error("guest page 4, not in the layout, became a reference")
	}
	if !r.add(&batch, blocks[1], 1, page) || !r.add(&batch, blocks[1], 2, page) {
		t.Fatal("guest pages 5 and 6 (block 1 pages 1, 2) did not become references")
	}
	want := wire.Ref{Disk: storageref.DiskKey("data"), Offset: 8192 + pageSize, Hash: storageref.Hash(page)}
	if got := batch.Entries[1].Ref; got != want {
		t.Errorf("reference for guest page 6 = %+v, want %+v", got, want)
	}
	// The layout was fetched for pass 1: not used in another pass, the final
	// one or a post-copy push.
	for _, iter := range []uint32{2, wire.IterationPostcopy} {
		batch.Reset(0, iter)
		if r.add(&batch, blocks[0], 1, page) {
			t.Errorf("layout of pass 1 used in iteration %d", iter)
		}
	}
	// Without refresh, pass 2 fetches nothing and sends data.
	r.refresh = false
	r.prepare(context.Background(), 2, 8)
	batch.Reset(0, 2)
	if r.add(&batch, blocks[0], 1, page) {
		t.Error("layout of pass 1 used in pass 2 without a refresh")
	}
}

func TestRefSourceBadLayout(t *testing.T) {
	// A layout beyond the guest is refused: the pass sends data.
	l := &layout.Layout{Disks: []layout.Disk{{ID: 0, Name: "data"}}, Runs: []layout.Run{{GuestPage: 6, Pages: 4, Disk: 0}}}
	blocks := []*srcBlock{{idx: 0, npages: 8}}
	r := newRefSource(hybridCfg(Config{Mode: ModeHybrid, LayoutAddr: serveLayout(t, l)}), blocks, nil)
	r.prepare(context.Background(), 1, 8)
	var batch wire.PageBatch
	batch.Reset(0, 1)
	if r.add(&batch, blocks[0], 6, make([]byte, pageSize)) {
		t.Error("page of an out-of-range layout became a reference")
	}
	// An unreachable layout endpoint costs the pass its references only.
	r = newRefSource(hybridCfg(Config{Mode: ModeHybrid, LayoutAddr: "127.0.0.1:1"}), blocks, nil)
	r.prepare(context.Background(), 1, 8)
	if r.add(&batch, blocks[0], 6, make([]byte, pageSize)) {
		t.Error("reference without a layout")
	}
}

func hybridCfg(c Config) Config {
	c.defaults()
	return c
}

func TestRefSourceDiskKeyCollision(t *testing.T) {
	// Two disk names with one wire key: the second disk's pages go as data.
	seen := map[uint16]string{}
	var a, b string
	for i := 0; b == ""; i++ {
		n := fmt.Sprintf("disk%d", i)
		k := storageref.DiskKey(n)
		if prev, ok := seen[k]; ok {
			a, b = prev, n
		}
		seen[k] = n
	}
	l := &layout.Layout{
		Disks: []layout.Disk{{ID: 0, Name: a}, {ID: 1, Name: b}},
		Runs:  []layout.Run{{GuestPage: 0, Pages: 1, Disk: 0}, {GuestPage: 1, Pages: 1, Disk: 1}},
	}
	blocks := []*srcBlock{{idx: 0, npages: 2}}
	r := newRefSource(hybridCfg(Config{Mode: ModeHybrid, LayoutAddr: serveLayout(t, l)}), blocks, nil)
	r.prepare(context.Background(), 1, 2)
	var batch wire.PageBatch
	batch.Reset(0, 1)
	page := make([]byte, pageSize)
	if !r.add(&batch, blocks[0], 0, page) {
		t.Errorf("page on disk %s (first of the pair) is not a reference", a)
	}
	if r.add(&batch, blocks[0], 1, page) {
		t.Errorf("page on disk %s, whose key %#x disk %s has, became a reference", b, storageref.DiskKey(b), a)
	}
}

// xlateGuest maps guest-physical pages [0, 4) to block "lo" and
// [0x100000, 0x100004) to block "hi", like RAM split around a PCI hole.
type xlateGuest struct{ Guest }

func (xlateGuest) Translate(gpa uint64) (string, uint64, bool) {
	switch p := gpa / pageSize; {
	case p < 4:
		return "lo", gpa, true
	case p >= 0x100000 && p < 0x100004:
		return "hi", gpa - 0x100000*pageSize, true
	}
	return "", 0, false
}

func TestRefSourceTranslates(t *testing.T) {
	l := &layout.Layout{
		Disks: []layout.Disk{{ID: 0, Name: "vda"}},
		Runs: []layout.Run{
			{GuestPage: 2, Pages: 1, Disk: 0, Offset: 1 << 20},
			{GuestPage: 0x50, Pages: 1, Disk: 0, Offset: 2 << 20}, // no RAM: skipped
			{GuestPage: 0x100001, Pages: 2, Disk: 0, Offset: 3 << 20},
		},
	}
	blocks := []*srcBlock{{Block: &ramfile.Block{Name: "lo"}, idx: 0, npages: 4}, {Block: &ramfile.Block{Name: "hi"}, idx: 1, npages: 4}}
	r := newRefSource(hybridCfg(Config{Mode: ModeHybrid, LayoutAddr: serveLayout(t, l)}), blocks, xlateGuest{})
	r.prepare(context.Background(), 1, 8)
	page := bytes.Repeat([]byte{3}, pageSize)
	var batch wire.PageBatch
	batch.Reset(0, 1)
	if !r.add(&batch, blocks[0], 2, page) || r.add(&batch, blocks[0], 1, page) {
		t.Fatal("block lo: want a reference for page 2 only")
	}
	batch.Reset(1, 1)
	for p := uint64(0); p < 4; p++ {
		if got, want := r.add(&batch, blocks[1], p, page), p == 1 || p == 2; got != want {
			t.Fatalf("block hi page %d: reference %v, want %v", p, got, want)
		}
	}
	if got, want := batch.Entries[1].Ref.Offset, uint64(3<<20+pageSize); got != want {
		t.Errorf("block hi page 2 at offset %#x, want %#x", got, want)
	}
}

// A page the destination hands back (wire.Resend) is pending again and goes
// as data in the next pass even though the layout still names it, and is
// counted as resent; one handed back after the pause is only kept from
// references (the destination owes it after switchover).
func TestResendGoesAsData(t *testing.T) {
	l := &layout.Layout{
		Disks: []layout.Disk{{ID: 0, Name: "data"}},
		Runs:  []layout.Run{{GuestPage: 0, Pages: 4, Disk: 0, Offset: 0}},
	}
	blk := &srcBlock{idx: 0, npages: 4, Block: &ramfile.Block{Mem: bytes.Repeat([]byte{9}, 4*pageSize)}}
	blk.pending, blk.hot, blk.noref, blk.resend, blk.sent = pages.NewSet(4), pages.NewSet(4), pages.NewSet(4), pages.NewSet(4), pages.NewSet(4)
	s := &source{log: hclog.NewNullLogger(), blocks: []*srcBlock{blk}}
	s.refs = newRefSource(hybridCfg(Config{Mode: ModeHybrid, LayoutAddr: serveLayout(t, l)}), s.blocks, nil)
	s.refs.prepare(context.Background(), 2, 4)

	s.markResend([]wire.Run{{Block: 0, Page: 1, Count: 2}})
	if !blk.pending.Has(1) || !blk.pending.Has(2) || blk.pending.Has(0) {
		t.Fatal("handed-back pages 1 and 2 not pending again")
	}
	var batch wire.PageBatch
	batch.Reset(0, 2)
	for p := range uint64(4) {
		s.addPage(&batch, blk, p)
	}
	for _, e := range batch.Entries {
		if want := map[bool]wire.Kind{true: wire.KindData, false: wire.KindRef}[e.Page == 1 || e.Page == 2]; e.Kind != want {
			t.Errorf("page %d sent as %v, want %v", e.Page, e.Kind, want)
		}
	}
	if n := s.resent.Load(); n != 2 {
		t.Errorf("resent %d pages, want 2", n)
	}

	s.pausing.Store(true)
	s.markResend([]wire.Run{{Block: 0, Page: 3, Count: 1}})
	if blk.pending.Has(3) || !blk.noref.Has(3) {
		t.Error("page handed back after the pause: pending again, or still referenced")
	}
}

// serveAgent serves layouts from get with the pool figures of pool, as
// dmig guest-agent does, until the test ends; its cache is primed with
// one request.
func serveAgent(t *testing.T, get func(context.Context) (*layout.Layout, error), pool layout.Info) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := layout.NewServer(get)
	srv.Pool = func(context.Context) (layout.Info, error) { return pool, nil }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	if _, err := layout.FetchWith(ctx, ln.Addr().String(), true); err != nil {
		t.Fatal(err)
	}
	return ln.Addr().String()
}

// TestFirstPassLayoutJudged: the first pass takes the agent's cached
// layout unless it is too small for the pool (or predates its load): then
// a fresh one, and the report says why; if the fresh one fails, the cached
// one, with a warning giving the figures.
func TestFirstPassLayoutJudged(t *testing.T) {
	lay := func(pages uint32) *layout.Layout {
		return &layout.Layout{Disks: []layout.Disk{{ID: 0, Name: "data"}}, Runs: []layout.Run{{GuestPage: 0, Pages: pages}}}
	}
	pool := layout.Info{PoolPages: 1000, DirtyPages: 40, LoadAge: time.Hour}
	blocks := []*srcBlock{{idx: 0, npages: 1024}}
	for name, c := range map[string]struct {
		takes     []uint32 // pages of each layout taken; 0: the take fails
		pool      layout.Info
		pages     uint64
		refreshed string
		warning   string
	}{
		"cached good":            {[]uint32{900}, pool, 900, "", ""},
		"cached too small":       {[]uint32{300, 950}, pool, 950, "names 300 pages, the buffer pool holds 960 clean", ""},
		"refresh fails":          {[]uint32{300, 0}, pool, 300, "", "a fresh layout failed"},
		"fresh still small":      {[]uint32{300, 310}, pool, 310, "names 300 pages", "fresh layout: the layout names 310 pages"},
		"before the load":        {[]uint32{900, 960}, layout.Info{PoolPages: 1000, LoadAge: time.Microsecond}, 960, "before the buffer pool's last load", ""},
		"agent gives no figures": {[]uint32{300}, layout.Info{}, 300, "", ""},
	} {
		t.Run(name, func(t *testing.T) {
			var n atomic.Int32
			get := func(context.Context) (*layout.Layout, error) {
				k := min(int(n.Add(1))-1, len(c.takes)-1)
				if c.takes[k] == 0 {
					return nil, errors.New("mysqld went away")
				}
				return lay(c.takes[k]), nil
			}
			addr := serveAgent(t, get, c.pool)
			r := newRefSource(hybridCfg(Config{Mode: ModeHybrid, LayoutAddr: addr}), blocks, nil)
			r.prepare(context.Background(), 1, 1024)
			f := r.first
			if r.lay == nil || f.LayoutPages != c.pages || !contains(f.Refreshed, c.refreshed) || !contains(f.Warning, c.warning) {
				t.Fatalf("first pass layout %+v, want %d pages, refreshed %q, warning %q", f, c.pages, c.refreshed, c.warning)
			}
			if c.pool.PoolPages > 0 && f.PoolCleanPages != c.pool.CleanPages() {
				t.Fatalf("pool clean pages %d, want %d", f.PoolCleanPages, c.pool.CleanPages())
			}
		})
	}
}

// contains is strings.Contains, with "" wanting "".
func contains(s, sub string) bool {
	if sub == "" {
		return s == ""
	}
	return strings.Contains(s, sub)
}
