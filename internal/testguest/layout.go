package testguest

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/dmig/dmig/layout"
	"github.com/hashicorp/go-hclog"
)

// DefaultDiskID names the data file in layouts when DBParams.DiskID is empty.
const DefaultDiskID = "data"

// Layout reports the clean frames of the buffer pool: for each of their
// 4 KiB pieces, the RAM page holding it (byte offset in the RAM file / 4096;
// with several RAM files, in their concatenation) and the data-file offset
// of the identical copy (db page·16 KiB + piece·4 KiB). It may be called while Run
// runs: a frame dirtied after it was read is stale in the result, which a
// layout is allowed to be (the engine verifies every page it restores).
func (g *Guest) Layout() (*layout.Layout, error) {
	if g.geo.frames == 0 {
		return nil, fmt.Errorf("take layout of %s: %w: not in database mode", g.name, ErrParams)
	}
	busy := int64(-1)
	if g.h.load(offDBOp) != dbOpNone {
		busy = int64(g.h.load(offDBFrame))
	}
	refs := make([]layout.Ref, 0, 4*g.geo.frames)
	for k := range g.geo.frames {
		pg := int64(g.descPage(k).Load())
		if pg == 0 || k == busy || g.descDirty(k).Load() != 0 {
			continue
		}
		for i := range 4 {
			refs = append(refs, layout.Ref{
				GuestPage: uint64(g.piecePage(k, i)),
				Offset:    uint64((pg-1)*DBPageSize + int64(i)*PageSize),
			})
		}
	}
	l, err := layout.Build(refs)
	if err != nil {
		return nil, fmt.Errorf("take layout of %s: %w", g.name, err)
	}
	id := g.p.DB.DiskID
	if id == "" {
		id = DefaultDiskID
	}
	l.Disks = []layout.Disk{{ID: 0, Name: id}}
	l.Generation = uint64(time.Now().UnixNano())
	return l, nil
}

// serveLayout starts the layout endpoint on addr and returns the address it
// listens on and a func that stops it and waits for it.
func (g *Guest) serveLayout(ctx context.Context, addr string, log hclog.Logger) (string, func(), error) {
	if g.geo.frames == 0 {
		return "", nil, fmt.Errorf("serve layout on %s: %w: not in database mode", addr, ErrParams)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("serve layout: %w", err)
	}
	log.Info("layout endpoint", "addr", ln.Addr().String())
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := layout.Serve(ctx, ln, func(context.Context) (*layout.Layout, error) { return g.Layout() }); err != nil {
			log.Error("layout endpoint", "error", err)
		}
	}()
	return ln.Addr().String(), func() { cancel(); <-done }, nil
}
