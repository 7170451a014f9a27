package tests

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dmig/dmig/dbrestore"
	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/internal/testguest"
	"github.com/dmig/dmig/layout"
	"github.com/dmig/dmig/precopy"
	"github.com/dmig/dmig/vmm/proc"
	"github.com/dmig/dmig/wire"
)

// dbGuest is a source test guest in database mode.
type dbGuest struct {
	*srcGuest
	dataFile string
	frames   int64
	layout   string // its layout endpoint
}

type dbOpts struct {
	size     int64   // RAM bytes
	poolPart float64 // share of RAM in buffer-pool frames
	dbPages  int64   // 16 KiB pages in the data file (default: 4/3 of the frames)
	// Buffer-pool operations per second.
	readRate, modifyRate, flushRate int64
	writeRate                       int64 // data-page writes per second outside the pool
	// hot is the share of pages (data and db) that get 90 % of the
	// accesses (testguest.Params.Hot; default 0.1, 1: uniform).
	hot float64
	// shm and stderr are guestOpts': where the RAM file goes, where the
	// guest's output goes.
	shm    string
	stderr io.Writer
}

// startDBSource starts a database-mode guest with a warm buffer pool whose
// data file lives in dir (the "shared storage" both sides read).
func startDBSource(t testing.TB, dir string, o dbOpts) *dbGuest {
	t.Helper()
	frames := int64(float64(o.size/4096)*o.poolPart) / 4
	if o.dbPages == 0 {
		o.dbPages = frames * 4 / 3
	}
	if o.writeRate == 0 {
		o.writeRate = 2000
	}
	db := &testguest.DBParams{
		File: filepath.Join(dir, "data.db"), Pages: o.dbPages, Frames: frames, Fill: 1,
		ReadRate: o.readRate, ModifyRate: o.modifyRate, FlushRate: o.flushRate,
	}
	g := startSource(t, guestOpts{size: o.size, writeRate: o.writeRate, hot: o.hot, db: db, layout: "127.0.0.1:0", shm: o.shm, stderr: o.stderr})
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := testguest.ReadStats(g.stats)
		if err == nil && st.LayoutAddr != "" {
			return &dbGuest{srcGuest: g, dataFile: db.File, frames: frames, layout: st.LayoutAddr}
		}
		if time.Now().After(deadline) {
			t.Fatalf("source guest serves no layout after 30s (stats %+v, err %v)", st, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startDBDest is startDest with shared disks (name → path) to restore from.
func startDBDest(t testing.TB, disks map[string]string) *dest {
	t.Helper()
	l, err := wire.Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return startDBDestOn(t, l, disks)
}

// startDBDestOn is startDBDest accepting on l; tune, if given, adjusts the
// destination's configuration.
func startDBDestOn(t testing.TB, l *wire.Listener, disks map[string]string, tune ...func(*dbrestore.Config)) *dest {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d := &dest{addr: l.Addr().String(), targets: make(chan *testTarget, 1), result: make(chan error, 1), cancel: cancel}
	shm, err := os.MkdirTemp("/dev/shm", "dmig-e2e-dst-")
	if err != nil {
		t.Fatal(err)
	}
	cfg := dbrestore.Config{
		Logger: testLogger(t, "dest"),
		Disks:  disks,
		NewGuest: func(h *wire.Hello) (dbrestore.Guest, error) {
			pt, err := proc.NewTarget(shm, h.Command)
			if err != nil {
				return nil, err
			}
			tt := &testTarget{Target: pt, resumed: make(chan struct{})}
			d.targets <- tt
			return tt, nil
		},
	}
	for _, f := range tune {
		f(&cfg)
	}
	go func() {
		d.result <- dbrestore.Serve(ctx, l, cfg, true, nil)
		l.Close()
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case tt := <-d.targets:
			tt.Kill()
		default:
		}
		os.RemoveAll(shm)
	})
	return d
}

// migrateDB migrates g with its layout taken from layoutAddr ("" for none).
func migrateDB(t testing.TB, g *dbGuest, to string, mode precopy.Mode, layoutAddr, destStats string) (*report.Report, error) {
	t.Helper()
	return migrateDBWith(t, g, precopy.Config{To: to, Mode: mode, LayoutAddr: layoutAddr}, destStats)
}

// migrateDBWith migrates g with cfg (its Logger set here); extra are more
// flags for the destination guest.
func migrateDBWith(t testing.TB, g *dbGuest, cfg precopy.Config, destStats string, extra ...string) (*report.Report, error) {
	t.Helper()
	src, err := proc.NewSource(g.pid(), []string{g.ram}, append(destCommand(destStats), extra...))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cfg.Logger = testLogger(t, "source")
	return precopy.Run(ctx, cfg, src)
}

// checkDestGuest waits for the destination guest to verify its RAM (buffer
// pool and data file included) at resume and run on, then kills it and
// verifies its RAM and data file offline.
func checkDestGuest(t testing.TB, d *dest, destStats string) testguest.Stats {
	return checkDestGuestVerify(t, d, destStats, false)
}

// checkDestGuestVerify is checkDestGuest for a guest that skipped its
// verify at resume if skippedVerify (its workload's reads still check every
// page they touch; the offline verify checks all).
func checkDestGuestVerify(t testing.TB, d *dest, destStats string, skippedVerify bool) testguest.Stats {
	t.Helper()
	tt := <-d.targets
	st := waitGuestHealthy(t, tt, destStats)
	if st.VerifiedPages == 0 && !skippedVerify {
		t.Errorf("destination guest verified no pages: %+v", st)
	}
	syscall.Kill(tt.Pid(), syscall.SIGKILL)
	<-tt.Exited()
	r, err := testguest.Verify(tt.Paths()[0])
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK() {
		t.Fatalf("destination RAM fails verification: %v", r.Mismatches)
	}
	return st
}

// copyDataFile copies the data file to path: a disk the destination reads
// that the test may damage without touching the guest's own data file.
func copyDataFile(t testing.TB, from, to string) {
	t.Helper()
	if err := copyFile(from, to); err != nil {
		t.Fatal(err)
	}
}

// proxyOpts are the shares (out of 100, by a hash of the guest page, so a
// page is treated alike in every layout) of references a layoutProxy spoils.
type proxyOpts struct {
	wrongOffset int // point to another 4 KiB block of the data file
	scratch     int // point to disk "scratch", damaged after the first layout
	ghost       int // point to disk "ghost", which the destination lacks
	scratchPath string
}

// layoutProxy serves the guest's layouts with some references spoiled.
type layoutProxy struct {
	addr string
	// Spoiled references in the first layout served, by kind.
	mu                      sync.Mutex
	served                  int
	wrong, scratched, ghost uint64
}

func startLayoutProxy(t testing.TB, upstream string, o proxyOpts) *layoutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lp := &layoutProxy{addr: ln.Addr().String()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		layout.Serve(ctx, ln, func(ctx context.Context) (*layout.Layout, error) { return lp.take(ctx, upstream, o) })
	}()
	t.Cleanup(func() { cancel(); <-done })
	return lp
}

func (lp *layoutProxy) take(ctx context.Context, upstream string, o proxyOpts) (*layout.Layout, error) {
	l, err := layout.Fetch(ctx, upstream)
	if err != nil {
		return nil, err
	}
	var refs []layout.Ref
	var wrong, scratched, ghost uint64
	var damage []uint64
	l.Each(func(r layout.Ref) bool {
		switch h := int(splitmix(r.GuestPage) % 100); {
		case h < o.wrongOffset:
			r.Offset += 4096 * (1 + splitmix(r.Offset)%5)
			wrong++
		case h < o.wrongOffset+o.scratch:
			r.Disk = 1
			damage = append(damage, r.Offset)
			scratched++
		case h < o.wrongOffset+o.scratch+o.ghost:
			r.Disk = 2
			ghost++
		}
		refs = append(refs, r)
		return true
	})
	out, err := layout.Build(refs)
	if err != nil {
		return nil, err
	}
	out.Generation = l.Generation
	out.Disks = []layout.Disk{{ID: 0, Name: l.Disks[0].Name}, {ID: 1, Name: "scratch"}, {ID: 2, Name: "ghost"}}
	lp.mu.Lock()
	defer lp.mu.Unlock()
	if lp.served == 0 {
		lp.wrong, lp.scratched, lp.ghost = wrong, scratched, ghost
		// The disk changes after the layout was taken.
		if o.scratchPath != "" && len(damage) > 0 {
			f, err := os.OpenFile(o.scratchPath, os.O_RDWR, 0)
			if err != nil {
				return nil, err
			}
			for _, off := range damage {
				if _, err := f.WriteAt([]byte("changed on disk after the layout"), int64(off)+100); err != nil {
					f.Close()
					return nil, err
				}
			}
			f.Close()
		}
	}
	lp.served++
	return out, nil
}

func (lp *layoutProxy) spoiled() (wrong, scratched, ghost uint64, served int) {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	return lp.wrong, lp.scratched, lp.ghost, lp.served
}

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}
