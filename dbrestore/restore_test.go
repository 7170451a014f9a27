package dbrestore

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/dmig/dmig/internal/pages"
	"github.com/dmig/dmig/internal/ramfile"
	"github.com/dmig/dmig/internal/storageref"
	"github.com/dmig/dmig/wire"
)

// restoreFixture is a destination of one 16-page block backed by a file,
// and a disk "data" of 16 pages, page i filled with byte i+1.
type restoreFixture struct {
	pl   *placer
	r    *restorer
	ram  *os.File
	disk [][]byte

	// What the restorer sent the source on the control connection.
	mu       sync.Mutex
	resends  []wire.Run
	verdicts []verdictSeen
}

// verdictSeen is a Verdict and the pages handed back before it.
type verdictSeen struct {
	wire.Verdict
	handedBack int
}

func newRestoreFixture(t *testing.T, disks map[string]string, flags wire.HelloFlags) *restoreFixture {
	t.Helper()
	dir := t.TempDir()
	f := &restoreFixture{}
	var img []byte
	for i := range 16 {
		p := bytes.Repeat([]byte{byte(i + 1)}, pageSize)
		f.disk = append(f.disk, p)
		img = append(img, p...)
	}
	diskPath := filepath.Join(dir, "data.img")
	if err := os.WriteFile(diskPath, img, 0o600); err != nil {
		t.Fatal(err)
	}
	if disks == nil {
		disks = map[string]string{"data": diskPath}
	}
	ram, err := os.Create(filepath.Join(dir, "ram"))
	if err != nil {
		t.Fatal(err)
	}
	if err := ram.Truncate(16 * pageSize); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ram.Close() })
	f.ram = ram
	// The source's end of the control connection records every Resend.
	dstEnd, srcEnd := net.Pipe()
	ctrl, src := wire.NewConn(dstEnd, wire.RoleControl, 0), wire.NewConn(srcEnd, wire.RoleControl, 0)
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		for {
			m, err := src.ReadFrame(context.Background())
			if err != nil {
				return
			}
			f.mu.Lock()
			switch m := m.(type) {
			case *wire.Resend:
				f.resends = append(f.resends, m.Pages...)
			case *wire.Verdict:
				f.verdicts = append(f.verdicts, verdictSeen{*m, len(owedPages(f.resends))})
			}
			f.mu.Unlock()
		}
	}()
	t.Cleanup(func() { ctrl.Close(); src.Close(); <-readDone })
	f.pl = newPlacer()
	f.pl.blocks = []*dstBlock{{Block: &ramfile.Block{Name: "ram", File: ram}, idx: 0, npages: 16, placed: pages.NewSet(16), missing: pages.NewSet(16)}}
	f.r = newRestorer(restoreOptions{Log: hclog.NewNullLogger(), Active: flags&wire.FlagStorageRefs != 0, Disks: disks}, f.pl, connSender{ctrl})
	t.Cleanup(f.r.close)
	return f
}

// connSender is the restorer's sender on one connection (the fixture's
// control connection, which the source side of the fixture reads).
type connSender struct{ c *wire.Conn }

func (s connSender) Resend(ctx context.Context, runs []wire.Run) error {
	return s.c.WriteFrame(ctx, &wire.Resend{Pages: runs})
}
func (s connSender) Verdict(ctx context.Context, v *wire.Verdict) error {
	return s.c.WriteFrame(ctx, v)
}
func (s connSender) PageRequest(ctx context.Context, block uint32, page uint64, count uint32) error {
	return s.c.WriteFrame(ctx, &wire.PageRequest{Block: block, Page: page, Count: count})
}

func (f *restoreFixture) ref(disk string, page uint64, content []byte) wire.Ref {
	return wire.Ref{Disk: storageref.DiskKey(disk), Offset: page * pageSize, Hash: storageref.Hash(content)}
}

// run starts the collectors, waits for the queue to drain and stops them.
func (f *restoreFixture) run(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	f.r.start(ctx, func(g func() error) {
		wg.Add(1)
		go func() { defer wg.Done(); _ = g() }()
	})
	if err := f.r.drain(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	wg.Wait()
}

func (f *restoreFixture) ramPage(t *testing.T, p uint64) []byte {
	t.Helper()
	b := make([]byte, pageSize)
	if _, err := f.ram.ReadAt(b, int64(p*pageSize)); err != nil {
		t.Fatal(err)
	}
	return b
}

// handedBack returns the pages sent back to the source, once at least n
// arrived or after a second: the source's end decodes a frame after the
// restorer's write returned.
func (f *restoreFixture) handedBack(n int) []uint64 {
	deadline := time.Now().Add(time.Second)
	for {
		f.mu.Lock()
		ps := owedPages(f.resends)
		f.mu.Unlock()
		if len(ps) >= n || time.Now().After(deadline) {
			slices.Sort(ps)
			return ps
		}
		time.Sleep(time.Millisecond)
	}
}

func owedPages(runs []wire.Run) []uint64 {
	var ps []uint64
	for _, r := range runs {
		for p := r.Page; p < r.Page+r.Count; p++ {
			ps = append(ps, p)
		}
	}
	return ps
}

func TestRestorePlacesVerifiedPages(t *testing.T) {
	f := newRestoreFixture(t, nil, wire.FlagStorageRefs)
	// Guest page 2 is disk page 5; guest page 3 claims disk page 6 but the
	// source read other bytes; guest page 4 names a disk this host lacks.
	f.r.enqueue(0, 2, 1, f.ref("data", 5, f.disk[5]))
	f.r.enqueue(0, 3, 1, f.ref("data", 6, []byte("not what the disk holds")))
	f.r.enqueue(0, 4, 1, f.ref("ghost", 1, f.disk[1]))
	f.run(t)
	if got := f.ramPage(t, 2); !bytes.Equal(got, f.disk[5]) {
		t.Errorf("page 2 holds %d..., want disk page 5", got[0])
	}
	if got := f.ramPage(t, 3); !bytes.Equal(got, make([]byte, pageSize)) {
		t.Errorf("page 3 was written from a disk page that failed its hash (%d...)", got[0])
	}
	if got, want := owedPages(f.r.owed()), []uint64{3, 4}; !slices.Equal(got, want) {
		t.Errorf("owed pages %v, want %v", got, want)
	}
	if got, want := f.handedBack(2), []uint64{3, 4}; !slices.Equal(got, want) {
		t.Errorf("pages handed back to the source %v, want %v", got, want)
	}
	if v, m := f.r.n.verified.Load(), f.r.n.mismatch.Load(); v != 1 || m != 2 {
		t.Errorf("verified %d, mismatched %d; want 1, 2", v, m)
	}
	if !f.pl.blocks[0].placed.Has(2) || f.pl.blocks[0].placed.Has(3) {
		t.Error("placed set wrong")
	}
}

// A reference still queued when a newer entry for its page arrives must not
// be placed, and a failed one must not be owed: the newer entry wins.
func TestRestoreNewerEntryWins(t *testing.T) {
	f := newRestoreFixture(t, nil, wire.FlagStorageRefs)
	f.r.enqueue(0, 7, 1, f.ref("data", 7, f.disk[7]))
	f.r.enqueue(0, 8, 1, f.ref("data", 8, []byte("stale")))
	f.r.enqueue(0, 9, 1, f.ref("data", 9, f.disk[9]))
	// Iteration 2 sends page 7 as data (written by the caller after
	// supersede), page 8 as zero; page 9 gets a reference again.
	f.r.supersede(0, 7, 2)
	newer := bytes.Repeat([]byte{0xee}, pageSize)
	if _, err := f.ram.WriteAt(newer, 7*pageSize); err != nil {
		t.Fatal(err)
	}
	f.r.supersede(0, 8, 2)
	f.r.enqueue(0, 9, 2, f.ref("data", 9, f.disk[9]))
	f.run(t)
	if got := f.ramPage(t, 7); !bytes.Equal(got, newer) {
		t.Errorf("page 7: an older reference overwrote newer data (%#x...)", got[0])
	}
	if got := f.ramPage(t, 9); !bytes.Equal(got, f.disk[9]) {
		t.Errorf("page 9 not restored")
	}
	if got := owedPages(f.r.owed()); len(got) != 0 {
		t.Errorf("owed %v: a failed reference superseded by a newer entry is not owed", got)
	}
}

// A reference that arrives after a newer pass's entry for its page (it
// came on another bulk connection than the page's data) is dropped, never
// placed over the newer page, and counted as checked so that the source's
// verdict does not wait for it.
func TestRestoreLateOlderReference(t *testing.T) {
	f := newRestoreFixture(t, nil, wire.FlagStorageRefs)
	f.r.supersede(0, 7, 2) // pass 2's data for page 7, first
	newer := bytes.Repeat([]byte{0xee}, pageSize)
	if _, err := f.ram.WriteAt(newer, 7*pageSize); err != nil {
		t.Fatal(err)
	}
	f.r.enqueue(0, 7, 1, f.ref("data", 7, f.disk[7])) // pass 1's reference, late
	f.r.enqueue(0, 9, 1, f.ref("data", 9, f.disk[9]))
	f.run(t)
	if got := f.ramPage(t, 7); !bytes.Equal(got, newer) {
		t.Errorf("page 7: a late older reference overwrote newer data (%#x...)", got[0])
	}
	if got := f.ramPage(t, 9); !bytes.Equal(got, f.disk[9]) {
		t.Errorf("page 9 not restored")
	}
	if c, r := f.r.n.checked.Load(), f.r.n.received.Load(); c != r || r != 2 {
		t.Errorf("checked %d of %d references received, want 2 of 2", c, r)
	}
}

// A newer entry for a page that arrives while an older reference for it
// is being queued (they travel on different bulk connections) stays the
// page's latest: the page is not left unchecked behind newer data, nor
// with the older reference queued as the one a carry would check its disk
// copy against. Either would let switchover free the newer page and place
// the older disk copy instead.
func TestRestoreNewerEntryDuringEnqueue(t *testing.T) {
	f := newRestoreFixture(t, nil, wire.FlagStorageRefs)
	const rounds = 5000
	for k := range uint32(rounds) {
		older, newer := 2*k+1, 2*k+2
		// Every page at once, the newer entry data for even pages and a
		// reference for odd ones.
		var start, wg sync.WaitGroup
		start.Add(1)
		for p := range uint64(16) {
			wg.Add(2)
			go func() {
				defer wg.Done()
				start.Wait()
				f.r.enqueue(0, p, older, f.ref("data", p, f.disk[p]))
			}()
			go func() {
				defer wg.Done()
				start.Wait()
				if p%2 == 0 {
					f.r.supersede(0, p, newer)
				} else {
					f.r.enqueue(0, p, newer, f.ref("data", p, f.disk[p]))
				}
			}()
		}
		start.Done()
		wg.Wait()
		for p := range uint64(16) {
			data := p%2 == 0
			if e := f.r.entries[0][p]; e.iter != newer {
				t.Fatalf("round %d: page %d's latest entry is of pass %d, want %d", k, p, e.iter, newer)
			}
			if data && f.r.unchecked[0].Has(p) {
				t.Fatalf("round %d: page %d unchecked behind newer data: a carry would free it", k, p)
			}
			if q := f.r.queued[pageKey{0, p}]; !data && q.iter != newer {
				t.Fatalf("round %d: page %d's queued reference is of pass %d, its latest of %d", k, p, q.iter, newer)
			}
			if !data && !f.r.unchecked[0].Has(p) {
				t.Fatalf("round %d: page %d's newer reference is not unchecked", k, p)
			}
		}
	}
}

// Guest neighbours are placed together, each only if it is verified and
// still its page's latest entry: a newer entry or a failed hash in the
// middle of a run leaves that page alone and its neighbours placed. The
// disk order (reversed) is not the guest order.
func TestRestorePlacesRuns(t *testing.T) {
	f := newRestoreFixture(t, nil, wire.FlagStorageRefs)
	for p := uint64(4); p < 12; p++ {
		d := 15 - p
		content := f.disk[d]
		if p == 9 {
			content = []byte("not what the disk holds")
		}
		f.r.enqueue(0, p, 1, f.ref("data", d, content))
	}
	f.r.supersede(0, 7, 2) // page 7 sent as data by pass 2
	newer := bytes.Repeat([]byte{0xee}, pageSize)
	if _, err := f.ram.WriteAt(newer, 7*pageSize); err != nil {
		t.Fatal(err)
	}
	f.run(t)
	for p := uint64(4); p < 12; p++ {
		want := f.disk[15-p]
		switch p {
		case 7:
			want = newer
		case 9:
			want = make([]byte, pageSize)
		}
		if got := f.ramPage(t, p); !bytes.Equal(got, want) {
			t.Errorf("page %d holds %#x..., want %#x...", p, got[0], want[0])
		}
	}
	if got, want := owedPages(f.r.owed()), []uint64{9}; !slices.Equal(got, want) {
		t.Errorf("owed pages %v, want %v", got, want)
	}
	if v := f.r.n.verified.Load(); v != 6 {
		t.Errorf("verified %d, want 6", v)
	}
	if f.pl.blocks[0].placed.Has(7) || f.pl.blocks[0].placed.Has(9) || !f.pl.blocks[0].placed.Has(8) {
		t.Error("placed set wrong")
	}
}

// Before switchover a failed reference is handed back to the source (a
// later pass sends the page as data, which clears it); once Switchover
// arrived it is only owed; one superseded before its read failed is
// neither.
func TestRestoreHandsBackFailedRefs(t *testing.T) {
	f := newRestoreFixture(t, nil, wire.FlagStorageRefs)
	for _, p := range []uint64{1, 2, 3, 5} {
		f.r.enqueue(0, p, 1, f.ref("data", p, []byte("stale")))
	}
	f.r.supersede(0, 5, 2) // data of pass 2 arrived before the read failed
	f.run(t)
	if got, want := f.handedBack(3), []uint64{1, 2, 3}; !slices.Equal(got, want) {
		t.Fatalf("handed back %v, want %v", got, want)
	}
	// Pass 2 resends pages 1 and 2 as data: no longer owed.
	f.r.supersede(0, 1, 2)
	f.r.supersede(0, 2, 2)
	// Switchover has come and the guest runs; a failure found now stays
	// with the destination.
	f.r.release()
	f.r.enqueue(0, 9, 2, f.ref("data", 9, []byte("stale")))
	f.run(t)
	if got, want := f.handedBack(4), []uint64{1, 2, 3}; !slices.Equal(got, want) {
		t.Errorf("after switchover handed back %v, want still %v", got, want)
	}
	if got, want := owedPages(f.r.owed()), []uint64{3, 9}; !slices.Equal(got, want) {
		t.Errorf("owed at switchover %v, want %v", got, want)
	}
	if n := f.r.n.handedBack.Load(); n != 3 {
		t.Errorf("handed-back counter %d, want 3", n)
	}
}

// The source learns how many references were checked and how many failed
// (wire.Verdict), each failure handed back before the Verdict that counts
// it; after Switchover no Verdict goes.
func TestRestoreReportsVerdict(t *testing.T) {
	f := newRestoreFixture(t, nil, wire.FlagStorageRefs)
	for _, p := range []uint64{1, 2, 3} {
		f.r.enqueue(0, p, 1, f.ref("data", p, f.disk[p]))
	}
	f.r.enqueue(0, 4, 1, f.ref("data", 4, []byte("stale")))
	f.r.enqueue(0, 5, 1, f.ref("ghost", 5, f.disk[5]))
	f.run(t)
	last := func() (verdictSeen, int) {
		deadline := time.Now().Add(time.Second)
		for {
			f.mu.Lock()
			vs := slices.Clone(f.verdicts)
			f.mu.Unlock()
			if (len(vs) > 0 && vs[len(vs)-1].Checked == 5) || time.Now().After(deadline) {
				if len(vs) == 0 {
					return verdictSeen{}, 0
				}
				for _, v := range vs {
					if v.handedBack < int(v.Failed) {
						t.Errorf("verdict %+v counts failures not handed back before it", v)
					}
				}
				return vs[len(vs)-1], len(vs)
			}
			time.Sleep(time.Millisecond)
		}
	}
	v, n := last()
	if v.Checked != 5 || v.Failed != 2 {
		t.Fatalf("last verdict checked %d, failed %d; want 5, 2", v.Checked, v.Failed)
	}
	f.r.release()
	f.r.enqueue(0, 6, 2, f.ref("data", 6, f.disk[6]))
	f.run(t)
	if _, m := last(); m != n {
		t.Errorf("%d verdicts after switchover", m-n)
	}
}

func TestRestoreWithoutDisks(t *testing.T) {
	dir := t.TempDir()
	// A directory and a missing file: neither opens; every reference is owed.
	f := newRestoreFixture(t, map[string]string{"data": dir, "other": filepath.Join(dir, "missing")}, wire.FlagStorageRefs)
	f.r.enqueue(0, 1, 1, f.ref("data", 1, f.disk[1]))
	f.run(t)
	if got := owedPages(f.r.owed()); !slices.Equal(got, []uint64{1}) {
		t.Errorf("owed %v, want [1]", got)
	}
}

func TestRestoreInactiveWithoutFlag(t *testing.T) {
	f := newRestoreFixture(t, nil, 0)
	if f.r.active || f.r.reader != nil {
		t.Fatal("restorer active for a session without storage references")
	}
	f.r.supersede(0, 1, 1) // must not panic: no per-page state
	if got := f.r.owed(); len(got) != 0 {
		t.Errorf("owed %v", got)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// BenchmarkRestore restores 64 k pages from a file in the page cache into a
// fresh shmem RAM file: the restore pool's rate without a network. Two
// layouts: "scattered", each page at a random disk page (the test guest's
// scattered frames), and "frames16k", InnoDB's 16 KiB frames (4 pages
// contiguous on disk and in the guest) in a random disk order. Its
// baseline, in the same run, copies the same pages to the same offsets with
// 1 MiB reads and no verification, on as many goroutines as cores: what
// moving those bytes costs at all. It reports restore_vs_copy (the
// restore's rate over the baseline's) and CPU seconds per GiB of each.
func BenchmarkRestore(b *testing.B) {
	for _, c := range []struct {
		name  string
		frame int // pages contiguous on disk and in the guest
		// cold: the data file is dropped from the page cache before each
		// run, restore and copy alike, as on a destination host that never
		// read the shared storage (the test's temporary directory must be
		// on a disk, not a tmpfs).
		cold bool
	}{{"scattered", 1, false}, {"frames16k", 4, false}, {"scattered-cold", 1, true}, {"frames16k-cold", 4, true}} {
		b.Run(c.name, func(b *testing.B) { benchRestore(b, c.frame, c.cold) })
	}
}

// dropCache writes path back and drops its pages from the page cache.
func dropCache(b *testing.B, path string) {
	b.Helper()
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		b.Fatalf("drop %s from the page cache: %v", path, err)
	}
}

func benchRestore(b *testing.B, frame int, cold bool) {
	const n = 1 << 16
	dir := b.TempDir()
	img := make([]byte, n*pageSize)
	for i := range n {
		img[i*pageSize] = byte(i)
		img[i*pageSize+1] = byte(i >> 8)
	}
	diskPath := filepath.Join(dir, "data.img")
	if err := os.WriteFile(diskPath, img, 0o600); err != nil {
		b.Fatal(err)
	}
	frames := make([]uint64, n/frame) // guest frame → disk frame
	for i := range frames {
		frames[i] = uint64(i)
	}
	for i := len(frames) - 1; i > 0; i-- { // deterministic shuffle
		j := int((uint64(i) * 0x9e3779b97f4a7c15 >> 32) % uint64(i+1))
		frames[i], frames[j] = frames[j], frames[i]
	}
	perm := make([]uint64, n) // guest page → disk page
	for p := range perm {
		perm[p] = frames[p/frame]*uint64(frame) + uint64(p%frame)
	}
	refs := make([]wire.Ref, n)
	for p := range n {
		off := perm[p] * pageSize
		refs[p] = wire.Ref{Disk: storageref.DiskKey("data"), Offset: off, Hash: storageref.Hash(img[off : off+pageSize])}
	}
	b.SetBytes(n * pageSize)
	var restore, copied benchCost
	for range b.N {
		if cold {
			dropCache(b, diskPath)
		}
		copied.add(b, func(shm *os.File) { copyScattered(b, diskPath, shm, perm) })
		if cold {
			dropCache(b, diskPath)
		}
		restore.add(b, func(shm *os.File) { restoreOnce(b, diskPath, shm, refs) })
	}
	gib := float64(b.N) * n * pageSize / (1 << 30)
	b.ReportMetric(copied.wall.Seconds()/restore.wall.Seconds(), "restore_vs_copy")
	b.ReportMetric(restore.cpu.Seconds()/gib, "restore_cpu_s/GiB")
	b.ReportMetric(copied.cpu.Seconds()/gib, "copy_cpu_s/GiB")
	b.ReportMetric(gib*(1<<30)/1e6/restore.wall.Seconds(), "restore_MB/s")
	b.ReportMetric(gib*(1<<30)/1e6/copied.wall.Seconds(), "copy_MB/s")
}

// benchCost sums the wall and CPU time (this process, user + system) of
// runs, each into a fresh shmem RAM file.
type benchCost struct{ wall, cpu time.Duration }

func (c *benchCost) add(b *testing.B, run func(shm *os.File)) {
	b.Helper()
	shm, err := os.CreateTemp("/dev/shm", "dmig-restore-bench-")
	if err != nil {
		b.Fatal(err)
	}
	os.Remove(shm.Name())
	defer shm.Close()
	if err := shm.Truncate(1 << 28); err != nil {
		b.Fatal(err)
	}
	cpu0, t0 := cpuTime(b), time.Now()
	run(shm)
	c.wall += time.Since(t0)
	c.cpu += cpuTime(b) - cpu0
}

func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// copyScattered is the baseline: the disk read in 1 MiB chunks, each page
// written to its guest offset, chunks spread over one goroutine per core.
func copyScattered(b *testing.B, diskPath string, shm *os.File, perm []uint64) {
	disk, err := os.Open(diskPath)
	if err != nil {
		b.Fatal(err)
	}
	defer disk.Close()
	guestOf := make([]uint64, len(perm)) // disk page → guest page
	for g, d := range perm {
		guestOf[d] = uint64(g)
	}
	const chunk = 256 // pages per read
	next := make(chan int)
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, chunk*pageSize)
			for first := range next {
				n := min(chunk, len(perm)-first)
				if _, err := disk.ReadAt(buf[:n*pageSize], int64(first)*pageSize); err != nil {
					b.Error(err)
					return
				}
				for k := range n {
					if _, err := shm.WriteAt(buf[k*pageSize:(k+1)*pageSize], int64(guestOf[first+k])*pageSize); err != nil {
						b.Error(err)
						return
					}
				}
			}
		}()
	}
	for first := 0; first < len(perm); first += chunk {
		next <- first
	}
	close(next)
	wg.Wait()
}

// restoreOnce runs the restorer on refs (guest page p's reference is refs[p])
// until every page is verified and placed. The references arrive in the
// order a hybrid pass sends them: by disk offset.
func restoreOnce(b *testing.B, diskPath string, shm *os.File, refs []wire.Ref) {
	n := uint64(len(refs))
	// The source's end of the control connection reads the Verdicts.
	dstEnd, srcEnd := net.Pipe()
	defer dstEnd.Close()
	go func() { _, _ = io.Copy(io.Discard, srcEnd) }()
	pl := newPlacer()
	pl.blocks = []*dstBlock{{Block: &ramfile.Block{Name: "ram", File: shm}, idx: 0, npages: n, placed: pages.NewSet(n), missing: pages.NewSet(n)}}
	r := newRestorer(restoreOptions{Log: hclog.NewNullLogger(), Active: true, Disks: map[string]string{"data": diskPath}}, pl,
		connSender{wire.NewConn(dstEnd, wire.RoleControl, 0)})
	defer r.close()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	r.start(ctx, func(g func() error) {
		wg.Add(1)
		go func() { defer wg.Done(); _ = g() }()
	})
	order := make([]uint64, n)
	for p := range order {
		order[p] = uint64(p)
	}
	slices.SortFunc(order, func(a, b uint64) int { return cmp.Compare(refs[a].Offset, refs[b].Offset) })
	for _, p := range order {
		r.enqueue(0, p, 1, refs[p])
	}
	if err := r.drain(ctx); err != nil {
		b.Fatal(err)
	}
	cancel()
	wg.Wait()
	if v := r.n.verified.Load(); v != n {
		b.Fatalf("%d of %d pages verified", v, n)
	}
}

// The post-copy restore pace spaces reads across collectors: pages beyond
// the first read wait their turn at the configured rate.
func TestPacerSpacesReads(t *testing.T) {
	if p := newPacer(0); p != nil {
		t.Fatal("a pacer without a rate")
	}
	p := newPacer(100 * pageSize) // 100 pages a second
	if p.chunk != 16 {
		t.Errorf("chunk %d pages, want the floor of 16", p.chunk)
	}
	ctx := context.Background()
	t0 := time.Now()
	for range 3 {
		must(t, p.wait(ctx, 10)) // at 0, 100 and 200 ms
	}
	if el := time.Since(t0); el < 190*time.Millisecond || el > 2*time.Second {
		t.Errorf("three reads of 10 pages at 100 pages/s took %v, want ~200ms", el)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := p.wait(cctx, 10); err == nil {
		t.Error("a wait past the pace returned despite a cancelled context")
	}
}

// Owed pages the source lists as pending are not asked for again: only
// those it does not know about are.
func TestUnlistedOwedPages(t *testing.T) {
	f := newRestoreFixture(t, nil, wire.FlagStorageRefs)
	for _, p := range []uint64{2, 3, 7} {
		f.pl.blocks[0].missing.Add(p)
	}
	got := f.pl.unlisted([]wire.Run{{Block: 0, Page: 1, Count: 4}, {Block: 0, Page: 7, Count: 2}})
	if want := []uint64{1, 4, 8}; !slices.Equal(owedPages(got), want) {
		t.Errorf("unlisted %v, want pages %v", got, want)
	}
	if len(got) != 3 {
		t.Errorf("runs %v: pages 1, 4 and 8 are not adjacent", got)
	}
}

// At switchover the references not yet checked are carried past it (kept
// for faults, their pages for the caller to make missing) unless the source
// lists their page as pending, and no read finishing late writes a page of
// either kind into the RAM file.
func TestRestoreCarry(t *testing.T) {
	f := newRestoreFixture(t, nil, wire.FlagStorageRefs)
	for _, p := range []uint64{1, 2, 3, 4, 5, 6, 7} {
		f.r.enqueue(0, p, 1, f.ref("data", p, f.disk[p]))
	}
	// Page 7 gets a newer reference in pass 2, also unchecked.
	f.r.enqueue(0, 7, 2, f.ref("data", 8, f.disk[8]))
	// Page 3 is checked and placed before switchover; page 2 gets data in
	// pass 2 (its reference is stale); page 6's read fails before
	// switchover (owed).
	f.r.place(refJob{block: 0, page: 3, iter: 1, ref: f.ref("data", 3, f.disk[3])}, f.disk[3])
	f.r.supersede(0, 2, 2)
	f.r.fail(refJob{block: 0, page: 6, iter: 1}, ErrHashMismatch)
	f.r.switchover()
	carried := f.r.carry([]wire.Run{{Block: 0, Page: 4, Count: 1}})
	if got, want := owedPages(carried), []uint64{1, 5, 7}; !slices.Equal(got, want) {
		t.Fatalf("carried %v, want %v (3 placed, 2 superseded, 4 pending, 6 failed)", got, want)
	}
	if n := f.r.n.carried.Load(); n != 3 {
		t.Errorf("carried counter %d", n)
	}
	for _, p := range []uint64{1, 5} {
		if q, ok := f.r.carriedRefs[pageKey{0, p}]; !ok || q.ref.Hash != storageref.Hash(f.disk[p]) || !f.r.carriedSet[0].Has(p) {
			t.Errorf("page %d: no reference kept for its faults", p)
		}
	}
	for _, p := range []uint64{2, 3, 4, 6} {
		if f.r.carriedSet[0].Has(p) {
			t.Errorf("page %d (placed, superseded, pending or failed) is carried", p)
		}
	}
	if got := owedPages(f.r.owed()); !slices.Equal(got, []uint64{6}) {
		t.Errorf("owed %v, want [6]", got)
	}
	// The reads of pages 1, 4 and 5 finish now (the caller has made 1 and
	// 5 missing): none may be written with a pwrite (1 and 5 are placed
	// only if missing, by UFFDIO_COPY; 4 is dropped).
	f.r.carriedMissing()
	// Only page 7's newer reference is carried: the older one, read late,
	// must not be placed.
	if f.r.isCarried(refJob{block: 0, page: 7, iter: 1}) || !f.r.isCarried(refJob{block: 0, page: 7, iter: 2}) {
		t.Error("page 7: the stale reference of pass 1 passes for the carried one")
	}
	for _, p := range []uint64{1, 4, 5} {
		f.r.place(refJob{block: 0, page: p, iter: 1, ref: f.ref("data", p, f.disk[p])}, f.disk[p])
		if got := f.ramPage(t, p); !bytes.Equal(got, make([]byte, pageSize)) {
			t.Errorf("page %d written into the RAM file after switchover", p)
		}
	}
	if got := f.ramPage(t, 3); !bytes.Equal(got, f.disk[3]) {
		t.Error("page 3 placed before switchover was lost")
	}

}

// drain waits until every queued reference was checked (tests only: the
// destination never waits for the restore).
func (r *restorer) drain(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() {
		r.mu.Lock()
		r.cond.Broadcast()
		r.mu.Unlock()
	})
	defer stop()
	r.mu.Lock()
	defer r.mu.Unlock()
	for r.inflight > 0 {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("wait for storage reads: %w", err)
		}
		r.cond.Wait()
	}
	return nil
}
