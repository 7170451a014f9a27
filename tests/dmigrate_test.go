package tests

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/internal/storageref"
	"github.com/dmig/dmig/precopy"
)

// TestDMigrateHybrid migrates a 1 GiB database-mode guest whose buffer pool
// is 75 % of its RAM, while it reads pages into the pool, modifies and
// flushes them. The clean pool pages must come from the data file (verified
// against their hashes), only a small part of the pool over the network, and
// the destination guest must verify every page, its pool and its data file.
func TestDMigrateHybrid(t *testing.T) {
	dir := t.TempDir()
	g := startDBSource(t, dir, dbOpts{size: gib, poolPart: 0.75, readRate: 4000, modifyRate: 1500, flushRate: 1200})
	d := startDBDest(t, map[string]string{"data": g.dataFile})
	destStats := filepath.Join(t.TempDir(), "dst.stats")
	rep, err := migrateDB(t, g, d.addr, precopy.ModeHybrid, g.layout, destStats)
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if err := <-d.result; err != nil {
		t.Fatalf("destination: %v", err)
	}
	poolPages := uint64(4 * g.frames)
	t.Logf("hybrid: total %.0f ms, downtime %.1f ms, %.1f MB, %d iterations, pages %+v, storage %+v, postcopy %d",
		rep.TotalMS, rep.DowntimeMS, float64(rep.BytesSent)/1e6, rep.Iterations, rep.Pages, rep.Storage, rep.PostcopyPages)
	t.Logf("passes: %+v", rep.IterationLog)
	if rep.Outcome != report.Completed {
		t.Fatalf("outcome %s", rep.Outcome)
	}
	if rep.Pages.StorageVerified < poolPages*8/10 {
		t.Errorf("%d pages restored from storage, want at least 80%% of the %d pool pages", rep.Pages.StorageVerified, poolPages)
	}
	// Everything sent over the network, all routes: at most the non-pool
	// RAM plus a fifth of the pool (pages modified during the migration).
	network := rep.Pages.Data + rep.Pages.PostcopyFault + rep.Pages.Prefetch
	if limit := rep.GuestPages - poolPages + poolPages/5; network > limit {
		t.Errorf("%d pages sent as data, want at most %d (guest %d pages, pool %d)", network, limit, rep.GuestPages, poolPages)
	}
	if rep.LayoutMS <= 0 || rep.LayoutMS >= rep.TotalMS {
		t.Errorf("layout fetches took %.1f ms of the %.1f ms migration", rep.LayoutMS, rep.TotalMS)
	}
	if rep.Storage.BytesRead < rep.Pages.StorageVerified*4096 || rep.Storage.MBps <= 0 {
		t.Errorf("storage figures %+v for %d verified pages", rep.Storage, rep.Pages.StorageVerified)
	}
	// The report says how the first pass sent every page, and why those
	// not by reference went otherwise.
	f := rep.Refs
	if f == nil {
		t.Fatal("hybrid report without its storage-reference figures")
	}
	fp := f.FirstPass
	t.Logf("first pass: %+v; layout %d pages, %.0f ms old, cached %v", fp, f.LayoutPages, f.LayoutAgeMS, f.Cached)
	if n := fp.Reference + fp.Zero + fp.NotInLayout + fp.NoLayout + fp.Refused; n != rep.GuestPages {
		t.Errorf("the first pass's routes add up to %d pages, the guest has %d", n, rep.GuestPages)
	}
	if fp.NoLayout != 0 || fp.Refused != 0 || fp.Reference < poolPages*8/10 || f.LayoutPages < fp.Reference || f.Layout != g.layout || f.Warning != "" {
		t.Errorf("first pass %+v with a layout of %d pages from %s (warning %q): want most of the %d pool pages by reference", fp, f.LayoutPages, f.Layout, f.Warning, poolPages)
	}
	checkDestGuest(t, d, destStats)
}

// TestDMigrateAdversarialLayout serves the source layouts in which 10 % of
// the references point to the wrong offset, 10 % to a disk whose pages
// change after the layout was taken, and 5 % to a disk the destination
// lacks. The migration must still be exact, with the spoiled references
// counted as mismatches and their pages sent again as data in a later pass.
func TestDMigrateAdversarialLayout(t *testing.T) {
	dir := t.TempDir()
	g := startDBSource(t, dir, dbOpts{size: gib / 2, poolPart: 0.75, readRate: 3000, modifyRate: 1000, flushRate: 800})
	scratch := filepath.Join(dir, "scratch.db")
	copyDataFile(t, g.dataFile, scratch)
	proxy := startLayoutProxy(t, g.layout, proxyOpts{wrongOffset: 10, scratch: 10, ghost: 5, scratchPath: scratch})
	if storageref.DiskKey("ghost") == storageref.DiskKey("data") || storageref.DiskKey("ghost") == storageref.DiskKey("scratch") {
		t.Fatal("test disk names share a key")
	}
	d := startDBDest(t, map[string]string{"data": g.dataFile, "scratch": scratch})
	destStats := filepath.Join(t.TempDir(), "dst.stats")
	rep, err := migrateDB(t, g, d.addr, precopy.ModeHybrid, proxy.addr, destStats)
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if err := <-d.result; err != nil {
		t.Fatalf("destination: %v", err)
	}
	wrong, scratched, ghost, served := proxy.spoiled()
	t.Logf("adversarial: total %.0f ms, downtime %.1f ms, %.1f MB, pages %+v, postcopy %d; first layout spoiled %d wrong offset, %d changed on disk, %d on a missing disk; %d layouts",
		rep.TotalMS, rep.DowntimeMS, float64(rep.BytesSent)/1e6, rep.Pages, rep.PostcopyPages, wrong, scratched, ghost, served)
	if rep.Outcome != report.Completed {
		t.Fatalf("outcome %s", rep.Outcome)
	}
	spoiled := wrong + scratched + ghost
	if spoiled == 0 || wrong == 0 || scratched == 0 || ghost == 0 {
		t.Fatalf("proxy spoiled nothing of some kind: %d %d %d", wrong, scratched, ghost)
	}
	// Each spoiled reference of the first pass fails its check (a few pages
	// may have gone as zero instead, freed between layout and pass).
	if rep.Pages.StorageMismatch < spoiled*9/10 {
		t.Errorf("%d mismatches counted, the first layout alone spoiled %d references", rep.Pages.StorageMismatch, spoiled)
	}
	if rep.Pages.StorageVerified == 0 {
		t.Error("no page restored from storage")
	}
	// The references of pass 1 fail while pass 2 can still carry their
	// pages: the destination hands them back and the source resends them as
	// data before switchover, rather than the destination fetching them
	// from the paused source.
	if rep.Iterations < 2 {
		t.Fatalf("%d pre-copy passes: no later pass to resend pages in", rep.Iterations)
	}
	if rep.Pages.StorageResent < spoiled/2 {
		t.Errorf("%d pages resent in a later pass, want at least half of the %d spoiled references of pass 1", rep.Pages.StorageResent, spoiled)
	}
	// From the source after switchover: on a fault (postcopy_fault), or
	// pushed or asked ahead (prefetch).
	if late := rep.Pages.PostcopyFault + rep.Pages.Prefetch; late >= rep.Pages.StorageResent {
		t.Errorf("%d pages fetched after switchover, %d resent before: failed references should mostly be resent", late, rep.Pages.StorageResent)
	}
	checkDestGuest(t, d, destStats)
}

// TestDMigrateDestStorage damages the disk the destination restores from (a
// copy of the data file, so the guest's own file stays intact): rewritten
// during the migration, truncated, replaced by a directory, missing, or
// returning I/O errors. Each migration must complete exactly, the failed
// references fetched from the source.
func TestDMigrateDestStorage(t *testing.T) {
	cases := []struct {
		name string
		// setup returns the disk's path and what to do to it while the
		// migration runs (until stop is closed), if anything.
		setup func(t *testing.T, disk string) (path string, during func(stop <-chan struct{}))
	}{
		{"rewritten", func(t *testing.T, disk string) (string, func(<-chan struct{})) {
			return disk, func(stop <-chan struct{}) { overwrite(t, disk, stop) }
		}},
		{"truncated", func(t *testing.T, disk string) (string, func(<-chan struct{})) {
			st, err := os.Stat(disk)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(disk, st.Size()/3); err != nil {
				t.Fatal(err)
			}
			return disk, nil
		}},
		{"directory", func(t *testing.T, disk string) (string, func(<-chan struct{})) {
			if err := os.Remove(disk); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(disk, 0o755); err != nil {
				t.Fatal(err)
			}
			return disk, nil
		}},
		{"missing", func(t *testing.T, disk string) (string, func(<-chan struct{})) {
			return filepath.Join(filepath.Dir(disk), "no-such-disk"), nil
		}},
		{"ioerror", func(t *testing.T, disk string) (string, func(<-chan struct{})) {
			checkFailingDisk(t)
			return failingDisk, nil
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			g := startDBSource(t, dir, dbOpts{size: gib / 4, poolPart: 0.75, readRate: 2000, modifyRate: 500, flushRate: 400})
			disk := filepath.Join(dir, "dest-view.db")
			copyDataFile(t, g.dataFile, disk)
			path, during := c.setup(t, disk)
			d := startDBDest(t, map[string]string{"data": path})
			destStats := filepath.Join(t.TempDir(), "dst.stats")
			stop, stopped := make(chan struct{}), make(chan struct{})
			go func() {
				defer close(stopped)
				if during != nil {
					during(stop)
				}
			}()
			rep, err := migrateDB(t, g, d.addr, precopy.ModeHybrid, g.layout, destStats)
			close(stop)
			<-stopped
			if err != nil {
				t.Fatalf("migrate: %v", err)
			}
			if err := <-d.result; err != nil {
				t.Fatalf("destination: %v", err)
			}
			t.Logf("%s: total %.0f ms, %.1f MB, pages %+v, storage %+v", c.name, rep.TotalMS, float64(rep.BytesSent)/1e6, rep.Pages, rep.Storage)
			if rep.Outcome != report.Completed {
				t.Fatalf("outcome %s", rep.Outcome)
			}
			if rep.Pages.StorageMismatch == 0 {
				t.Errorf("no reference failed on a damaged disk")
			}
			checkDestGuest(t, d, destStats)
		})
	}
}

// overwrite rewrites the file with other bytes, over and over until stop
// is closed (the migration runs meanwhile).
func overwrite(t *testing.T, path string, stop <-chan struct{}) {
	junk := bytes.Repeat([]byte("rewritten under the migration!\n"), 4096)
	for {
		select {
		case <-stop:
			return
		default:
		}
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			t.Errorf("rewrite disk: %v", err)
			return
		}
		st, _ := f.Stat()
		for off := int64(0); off < st.Size(); off += int64(len(junk)) {
			f.WriteAt(junk, off)
		}
		f.Close()
	}
}

// failingDisk is a regular file every read of which fails with an error
// other than EOF (loopback has no link speed: EINVAL at any offset): a disk
// with an I/O error. (This kernel has no device-mapper for an "error"
// target.)
const failingDisk = "/sys/class/net/lo/speed"

func checkFailingDisk(t *testing.T) {
	t.Helper()
	f, err := os.Open(failingDisk)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(make([]byte, 4096), 8192); err == nil || err == io.EOF {
		t.Fatalf("read of %s gave %v, want an I/O error", failingDisk, err)
	}
}

// TestDMigratePostcopyRefs makes hybrid switch over after one pass (at most
// one iteration), so many clean pool pages are still owed: the source pushes
// them as storage references from a layout taken just before the pause, the
// destination places them from storage, and a fault on one is resolved from
// storage at once. Exact, and storage placed part of what post-copy owed.
func TestDMigratePostcopyRefs(t *testing.T) {
	dir := t.TempDir()
	// Many more db pages than frames: reads load new pages into frames,
	// which are clean (and in the layout) again right after.
	g := startDBSource(t, dir, dbOpts{size: gib / 2, poolPart: 0.75, dbPages: 200000, readRate: 20000, modifyRate: 500, flushRate: 400})
	d := startDBDest(t, map[string]string{"data": g.dataFile})
	destStats := filepath.Join(t.TempDir(), "dst.stats")
	// The destination guest goes straight to its workload (random pool
	// reads) instead of reading all RAM in order: faults land on pages whose
	// reference is still queued.
	rep, err := migrateDBWith(t, g, precopy.Config{To: d.addr, Mode: precopy.ModeHybrid, LayoutAddr: g.layout, MaxIterations: 1}, destStats, "--skip-resume-verify")
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if err := <-d.result; err != nil {
		t.Fatalf("destination: %v", err)
	}
	t.Logf("post-copy refs: total %.0f ms, downtime %.1f ms, %.1f MB, pages %+v, owed at switchover %d, storage %+v",
		rep.TotalMS, rep.DowntimeMS, float64(rep.BytesSent)/1e6, rep.Pages, rep.PostcopyPages, rep.Storage)
	if rep.Outcome != report.Completed {
		t.Fatalf("outcome %s", rep.Outcome)
	}
	if rep.PostcopyPages == 0 {
		t.Fatal("nothing owed at switchover: the test did not exercise post-copy")
	}
	if rep.Storage.PostcopyPages == 0 {
		t.Errorf("none of the %d pages owed after switchover came from storage", rep.PostcopyPages)
	}
	// Faults from storage and from the source: each histogram sums to its
	// count.
	checkFaultFigures(t, *rep)
	checkDestGuestVerify(t, d, destStats, true)
}
