package testguest

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/dmig/dmig/layout"
)

func TestDatabaseWorkloadVerifies(t *testing.T) {
	g, ram := dbGuest(t) // 1024 db pages through 256 frames: evictions
	run(t, g, 300*time.Millisecond)
	r := mustVerify(t, ram)
	loads, flushes := g.h.load(offLoadCount), g.h.load(offFlushCount)
	if loads <= uint64(g.geo.frames) || r.Modifies == 0 || flushes == 0 {
		t.Fatalf("loads %d (want more than the %d frames: evictions), modifications %d, flushes %d", loads, g.geo.frames, r.Modifies, flushes)
	}
	// Reads of resident pages check the frame: a damaged one stops the run.
	k, _, _ := frames(t, g)
	d := int64(g.descPage(k).Load()) - 1
	g.page(g.piecePage(k, 3))[5] ^= 1
	_, err := g.readDB(d, func() int64 { t.Fatal("no victim needed"); return 0 })
	if err == nil {
		t.Fatal("reading a damaged frame succeeded")
	}
	t.Log(err)
	g.page(g.piecePage(k, 3))[5] ^= 1
}

func TestLayoutEndpointReportsOnlyCleanFramesMatchingTheFile(t *testing.T) {
	g, _ := dbGuest(t)
	ctx := context.Background()

	// While the workload runs, the endpoint answers with valid layouts.
	stats := filepath.Join(t.TempDir(), "stats")
	done := make(chan error, 1)
	go func() {
		done <- g.Run(ctx, RunOptions{Duration: time.Second, StatsFile: stats, LayoutListen: "127.0.0.1:0"})
	}()
	s := waitStats(t, stats, 10*time.Second, func(s Stats) bool { return s.LayoutAddr != "" })
	for range 5 {
		l, err := layout.Fetch(ctx, s.LayoutAddr)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Validate(uint64(g.geo.pages)); err != nil || l.Pages() == 0 {
			t.Fatalf("layout from a running guest: %d pages, %v", l.Pages(), err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// With the workload paused, every page it names is exact.
	addr, stop, err := g.serveLayout(ctx, "127.0.0.1:0", hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	l, err := layout.Fetch(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Validate(uint64(g.geo.pages)); err != nil {
		t.Fatal(err)
	}
	if len(l.Disks) != 1 || l.Disks[0].Name != DefaultDiskID {
		t.Fatalf("disks %v, want one named %q", l.Disks, DefaultDiskID)
	}
	clean := map[int64]bool{} // RAM pages of clean frames' pieces
	var dirty int
	for k := range g.geo.frames {
		switch {
		case g.descPage(k).Load() == 0:
		case g.descDirty(k).Load() == 1:
			dirty++
		default:
			for i := range 4 {
				clean[g.piecePage(k, i)] = true
			}
		}
	}
	if dirty == 0 || len(clean) == 0 {
		t.Fatalf("want both clean and dirty frames, got %d clean pieces and %d dirty frames", len(clean), dirty)
	}
	if l.Pages() != uint64(len(clean)) {
		t.Fatalf("layout names %d pages, the pool has %d clean pieces", l.Pages(), len(clean))
	}
	disk := make([]byte, PageSize)
	l.Each(func(ref layout.Ref) bool {
		if !clean[int64(ref.GuestPage)] {
			t.Fatalf("layout names RAM page %d, not a piece of a clean frame", ref.GuestPage)
		}
		if _, err := g.db.ReadAt(disk, int64(ref.Offset)); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(g.page(int64(ref.GuestPage)), disk) {
			t.Fatalf("RAM page %d differs from data file offset %d", ref.GuestPage, ref.Offset)
		}
		return true
	})
	// Pieces are scattered: few runs are longer than one page.
	if len(l.Runs) < len(clean)/2 {
		t.Fatalf("%d runs for %d pages: frames are not scattered", len(l.Runs), len(clean))
	}
}

// A read by the workload that finds a wrong data page stops the run with a
// MismatchError naming the page: this is how a guest running on the
// destination during post-copy notices a wrong page.
func TestWorkloadReadOfAWrongPageStopsTheRun(t *testing.T) {
	ram := filepath.Join(shmDir(t), "ram")
	p := Params{Size: 256 << 10, Seed: 2, Fill: 1, WriteRate: 10, ReadShare: 0.999}
	if err := Create(ram, p); err != nil {
		t.Fatal(err)
	}
	g, err := Open(ram)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	for i := range g.geo.dataPages {
		g.dataPage(i)[2000] ^= 0x40
	}
	err = g.Run(context.Background(), RunOptions{Duration: 10 * time.Second})
	var me *MismatchError
	if !errors.As(err, &me) || len(me.Report.Mismatches) != 1 {
		t.Fatalf("run over corrupt pages: %v", err)
	}
	m := me.Report.Mismatches[0]
	if m.Region != "data" || m.Page < g.geo.dataStart || m.Page >= g.geo.poolStart || !strings.Contains(m.Got, "1 of 512 words corrupt") {
		t.Fatalf("mismatch %v", m)
	}
}

func TestWarmPoolAtCreation(t *testing.T) {
	dir := shmDir(t)
	ram := filepath.Join(dir, "ram")
	p := smallDBParams(dir)
	p.DB.Fill = 0.75
	if err := Create(ram, p); err != nil {
		t.Fatal(err)
	}
	r := mustVerify(t, ram)
	g := readRAM(t, ram)
	l, err := g.Layout()
	if err != nil {
		t.Fatal(err)
	}
	want := int64(0.75 * float64(p.DB.Frames))
	var resident int64
	for k := range g.geo.frames {
		if g.descPage(k).Load() != 0 {
			resident++
		}
	}
	if resident != want || l.Pages() != uint64(4*want) || r.Modifies != 0 {
		t.Fatalf("warm pool: %d frames resident, layout %d pages, %d modifications; want %d frames", resident, l.Pages(), r.Modifies, want)
	}
}
