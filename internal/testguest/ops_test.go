package testguest

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// These tests stop each operation after every one of its steps, as a
// SIGSTOP at the wrong instruction would, and check that the RAM verifies
// as it is and again after redo, with the operation done exactly once.

func dbGuest(t *testing.T) (*Guest, string) {
	t.Helper()
	dir := shmDir(t)
	ram := filepath.Join(dir, "ram")
	p := smallDBParams(dir)
	p.DB.Pages, p.DB.Frames = 1024, 256
	if err := Create(ram, p); err != nil {
		t.Fatal(err)
	}
	g, err := Open(ram)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	run(t, g, 200*time.Millisecond)
	mustVerify(t, ram)
	return g, ram
}

func interrupted(t *testing.T, ram, what string) {
	t.Helper()
	r := mustVerify(t, ram)
	if len(r.Interrupted) != 1 || !strings.HasPrefix(r.Interrupted[0], what) {
		t.Fatalf("want one interrupted %s, got %q", what, r.Interrupted)
	}
}

func redone(t *testing.T, g *Guest, ram string) {
	t.Helper()
	if err := g.redo(); err != nil {
		t.Fatal(err)
	}
	if r := mustVerify(t, ram); len(r.Interrupted) != 0 {
		t.Fatalf("after redo: still interrupted %q", r.Interrupted)
	}
}

func TestInterruptedWriteVerifiesAndRedoes(t *testing.T) {
	g, ram := dbGuest(t)
	for steps := 1; steps < writeSteps; steps++ {
		i := int64(steps * 17)
		v, c := g.ver(i).Load(), g.Counter()
		g.writeData(i, steps)
		interrupted(t, ram, "write of page")
		redone(t, g, ram)
		if g.ver(i).Load() != v+1 || g.Counter() != c+1 {
			t.Fatalf("stopped after %d steps: version %d→%d, counter %d→%d; want one write", steps, v, g.ver(i).Load(), c, g.Counter())
		}
	}

	t.Run("torn page", func(t *testing.T) {
		i := int64(5)
		n := g.geo.dataStart + i
		v := g.ver(i).Load()
		g.writeData(i, 1)
		next := make([]byte, PageSize)
		fillPage(next, dataTag, uint64(n), v+1)
		copy(g.page(n)[:PageSize/2], next)
		interrupted(t, ram, "write of page")
		// A word from neither version is still caught.
		g.page(n)[PageSize-8] ^= 1
		r := mustMismatch(t, ram)
		onlyMismatch(t, r, n, "data", "")
		g.page(n)[PageSize-8] ^= 1
		redone(t, g, ram)
	})
	t.Run("wrong counter during a write", func(t *testing.T) {
		g.writeData(9, 1)
		c := g.Counter()
		g.h.store(offCounter, c+1)
		mustMismatch(t, ram)
		g.h.store(offCounter, c)
		redone(t, g, ram)
	})
	t.Run("another stale page during a write", func(t *testing.T) {
		g.writeData(11, 1)
		n := g.geo.dataStart + 12
		g.ver(12).Add(1)
		r := mustMismatch(t, ram)
		found := false
		for _, m := range r.Mismatches {
			found = found || (m.Page == n && strings.Contains(m.Got, "(stale)"))
		}
		if !found {
			t.Fatalf("stale page %d not reported: %v", n, r.Mismatches)
		}
		g.ver(12).Add(^uint32(0))
		redone(t, g, ram)
	})
}

// frames returns a resident frame that is clean, one that is dirty, and a db
// page that is not resident.
func frames(t *testing.T, g *Guest) (clean, dirty, absent int64) {
	t.Helper()
	clean, dirty, absent = -1, -1, -1
	for k := range g.geo.frames {
		switch {
		case g.descPage(k).Load() == 0:
		case g.descDirty(k).Load() == 0 && clean < 0:
			clean = k
		case g.descDirty(k).Load() == 1 && dirty < 0:
			dirty = k
		}
	}
	for d := range g.geo.dbPages {
		if g.frameOf(d).Load() == 0 {
			absent = d
			break
		}
	}
	if clean < 0 || dirty < 0 || absent < 0 {
		t.Fatalf("workload left no clean (%d) or dirty (%d) frame or no absent page (%d)", clean, dirty, absent)
	}
	return clean, dirty, absent
}

func TestInterruptedLoadVerifiesAndRedoes(t *testing.T) {
	g, ram := dbGuest(t)
	for steps := 1; steps < loadSteps; steps++ {
		k, _, d := frames(t, g)
		prev := int64(g.descPage(k).Load()) - 1
		if err := g.loadFrame(k, d, steps); err != nil {
			t.Fatal(err)
		}
		interrupted(t, ram, "load of db page")
		redone(t, g, ram)
		if g.descPage(k).Load() != uint32(d+1) || g.frameOf(d).Load() != uint32(k+1) || g.frameOf(prev).Load() != 0 {
			t.Fatalf("stopped after %d steps: db page %d not in frame %d, or %d still is", steps, d, k, prev)
		}
	}
	t.Run("torn read", func(t *testing.T) {
		k, _, d := frames(t, g)
		if err := g.loadFrame(k, d, 3); err != nil { // intent, frame freed, back pointer cleared
			t.Fatal(err)
		}
		fillPage(g.page(g.piecePage(k, 0)), dbTag, uint64(d*4), g.diskVer(d).Load())
		interrupted(t, ram, "load of db page")
		redone(t, g, ram)
	})
}

func TestInterruptedModifyVerifiesAndRedoes(t *testing.T) {
	g, ram := dbGuest(t)
	for steps := 1; steps < modifySteps; steps++ {
		k, _, _ := frames(t, g)
		d := int64(g.descPage(k).Load()) - 1
		v, m := g.descVer(k).Load(), g.h.load(offModCount)
		g.modifyFrame(k, d, steps)
		interrupted(t, ram, "modification of db page")
		redone(t, g, ram)
		if g.descVer(k).Load() != v+1 || g.descDirty(k).Load() != 1 || g.h.load(offModCount) != m+1 {
			t.Fatalf("stopped after %d steps: frame %d version %d→%d, modifications %d→%d; want one", steps, k, v, g.descVer(k).Load(), m, g.h.load(offModCount))
		}
	}
	t.Run("torn frame", func(t *testing.T) {
		_, k, _ := frames(t, g)
		d := int64(g.descPage(k).Load()) - 1
		v := g.descVer(k).Load()
		g.modifyFrame(k, d, 1)
		fillPage(g.page(g.piecePage(k, 1)), dbTag, uint64(d*4+1), v+1)
		half := make([]byte, PageSize)
		fillPage(half, dbTag, uint64(d*4+2), v+1)
		copy(g.page(g.piecePage(k, 2))[:PageSize/2], half)
		interrupted(t, ram, "modification of db page")
		redone(t, g, ram)
	})
}

func TestInterruptedFlushVerifiesAndRedoes(t *testing.T) {
	g, ram := dbGuest(t)
	for steps := 1; steps < flushSteps; steps++ {
		_, k, _ := frames(t, g)
		d := int64(g.descPage(k).Load()) - 1
		if err := g.flushFrame(k, steps); err != nil {
			t.Fatal(err)
		}
		interrupted(t, ram, "flush of db page")
		redone(t, g, ram)
		if g.descDirty(k).Load() != 0 || g.diskVer(d).Load() != g.descVer(k).Load() {
			t.Fatalf("stopped after %d steps: frame %d still dirty or disk at version %d", steps, k, g.diskVer(d).Load())
		}
	}
	t.Run("torn write-back", func(t *testing.T) {
		_, k, _ := frames(t, g)
		d := int64(g.descPage(k).Load()) - 1
		if err := g.flushFrame(k, 1); err != nil {
			t.Fatal(err)
		}
		if _, err := g.db.WriteAt(g.page(g.piecePage(k, 1)), d*DBPageSize+PageSize); err != nil {
			t.Fatal(err)
		}
		interrupted(t, ram, "flush of db page")
		redone(t, g, ram)
	})
}
