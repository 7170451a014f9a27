package layout

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pageData is the content of block i of a test disk: its number repeated,
// so a misplaced block is caught.
func pageData(i uint64) []byte {
	p := make([]byte, PageSize)
	for j := 0; j < PageSize; j += 8 {
		binary.LittleEndian.PutUint64(p[j:], i*1000003+uint64(j))
	}
	return p
}

// diskFile writes a test disk of n blocks and returns its path.
func diskFile(t testing.TB, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 0, 256*PageSize)
	for i := range n {
		buf = append(buf, pageData(uint64(i))...)
		if len(buf) == cap(buf) || i == n-1 {
			if _, err := f.Write(buf); err != nil {
				t.Fatal(err)
			}
			buf = buf[:0]
		}
	}
	return path
}

// result is what a Read delivered for one ref.
type result struct {
	data []byte
	err  error
}

// readAll runs r.Read and collects the results by guest page, checking that
// each ref was delivered exactly once.
func readAll(t *testing.T, r *Reader, refs []Ref) map[uint64]result {
	t.Helper()
	var mu sync.Mutex
	got := make(map[uint64]result)
	err := r.Read(context.Background(), refs, func(ref Ref, page []byte, err error) {
		mu.Lock()
		defer mu.Unlock()
		if _, dup := got[ref.GuestPage]; dup {
			t.Errorf("guest page %d delivered twice", ref.GuestPage)
		}
		got[ref.GuestPage] = result{bytes.Clone(page), err}
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(refs) {
		t.Fatalf("%d of %d refs delivered", len(got), len(refs))
	}
	return got
}

func openOne(t *testing.T, name, path string) *Storage {
	t.Helper()
	s, err := OpenStorage(map[string]string{name: path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestParseDiskFlag(t *testing.T) {
	for _, c := range []struct{ in, name, path string }{
		{"vda=/srv/guest.raw", "vda", "/srv/guest.raw"},
		{"serial:QM1=/dev/sdb", "serial:QM1", "/dev/sdb"},
		{"vda=/odd/p=th", "vda", "/odd/p=th"},
	} {
		name, path, err := ParseDiskFlag(c.in)
		if err != nil || name != c.name || path != c.path {
			t.Errorf("ParseDiskFlag(%q) = %q, %q, %v", c.in, name, path, err)
		}
	}
	for _, bad := range []string{"", "vda", "=/x", "vda="} {
		if _, _, err := ParseDiskFlag(bad); err == nil {
			t.Errorf("ParseDiskFlag(%q) accepted", bad)
		}
	}
}

func TestReaderCoalesces(t *testing.T) {
	s := openOne(t, "vda", diskFile(t, 64))
	// Guest pages scattered, disk blocks: 0-15, 20, 21, 40, and 5 again.
	var refs []Ref
	for i := range 16 {
		refs = append(refs, Ref{GuestPage: uint64(1000 - 7*i), Offset: uint64(i) * PageSize})
	}
	refs = append(refs,
		Ref{GuestPage: 1, Offset: 21 * PageSize},
		Ref{GuestPage: 2, Offset: 20 * PageSize},
		Ref{GuestPage: 3, Offset: 40 * PageSize},
		Ref{GuestPage: 4, Offset: 5 * PageSize}, // a second guest page with the same block
	)
	for _, c := range []struct {
		name  string
		opts  ReaderOptions
		reads uint64
	}{
		{"adjacent only", ReaderOptions{}, 3},                                                 // 0-15, 20-21, 40
		{"max read 8 pages", ReaderOptions{MaxRead: 8 * PageSize}, 4},                         // 0-7, 8-15, 20-21, 40
		{"gap of 4 pages", ReaderOptions{MaxGap: 4 * PageSize}, 2},                            // 0-21, 40
		{"max read 1 page", ReaderOptions{MaxRead: 1, Workers: 1}, 19},                        // every distinct block
		{"gap and max read", ReaderOptions{MaxGap: 64 * PageSize, MaxRead: 32 * PageSize}, 2}, // 0-21, 40
	} {
		t.Run(c.name, func(t *testing.T) {
			r := s.NewReader(disks("vda"), c.opts)
			got := readAll(t, r, refs)
			for _, ref := range refs {
				res := got[ref.GuestPage]
				if res.err != nil || !bytes.Equal(res.data, pageData(ref.Offset/PageSize)) {
					t.Errorf("guest page %d: wrong page (err %v)", ref.GuestPage, res.err)
				}
			}
			st := r.Stats()
			if st.Reads != c.reads || st.Pages != uint64(len(refs)) || st.Errors != 0 {
				t.Errorf("stats %+v, want %d reads, %d pages", st, c.reads, len(refs))
			}
		})
	}
}

func TestReaderParallel(t *testing.T) {
	const blocks = 8192 // 32 MiB
	s := openOne(t, "serial:X", diskFile(t, blocks))
	// Every block once, guest pages a random permutation, refs in random order.
	perm := rand.Perm(blocks)
	refs := make([]Ref, blocks)
	for i, p := range perm {
		refs[i] = Ref{GuestPage: uint64(p), Disk: 0, Offset: uint64(i) * PageSize}
	}
	rand.Shuffle(len(refs), func(i, j int) { refs[i], refs[j] = refs[j], refs[i] })

	r := s.NewReader(disks("serial:X"), ReaderOptions{Workers: 8, MaxRead: 256 << 10})
	var mu sync.Mutex
	active, peak := 0, 0
	seen := make([]bool, blocks)
	err := r.Read(context.Background(), refs, func(ref Ref, page []byte, err error) {
		mu.Lock()
		active++
		peak = max(peak, active)
		mu.Unlock()
		if err != nil {
			t.Errorf("guest page %d: %v", ref.GuestPage, err)
		} else if !bytes.Equal(page, pageData(ref.Offset/PageSize)) {
			t.Errorf("guest page %d: wrong data", ref.GuestPage)
		}
		time.Sleep(time.Microsecond) // let workers overlap
		mu.Lock()
		active--
		if seen[ref.GuestPage] {
			t.Errorf("guest page %d twice", ref.GuestPage)
		}
		seen[ref.GuestPage] = true
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	for p, ok := range seen {
		if !ok {
			t.Fatalf("guest page %d never delivered", p)
		}
	}
	if st := r.Stats(); st.Reads != blocks/64 || st.Bytes != blocks*PageSize {
		t.Errorf("stats %+v, want %d reads of 256 KiB", st, blocks/64)
	}
	if peak < 2 {
		t.Errorf("callbacks never ran in parallel (peak %d)", peak)
	}
}

func TestReaderErrors(t *testing.T) {
	path := diskFile(t, 16)
	// A truncated disk: blocks 10 and up are gone, block 9 is half there.
	if err := os.Truncate(path, 9*PageSize+100); err != nil {
		t.Fatal(err)
	}
	s := openOne(t, "vda", path)
	l := Layout{Disks: disks("vda", "vdb")} // vdb: not on this host
	refs := []Ref{
		{GuestPage: 0, Disk: 0, Offset: 7 * PageSize},
		{GuestPage: 1, Disk: 0, Offset: 8 * PageSize},
		{GuestPage: 2, Disk: 0, Offset: 9 * PageSize}, // half there
		{GuestPage: 3, Disk: 0, Offset: 10 * PageSize},
		{GuestPage: 4, Disk: 1, Offset: 0},
		{GuestPage: 5, Disk: 7, Offset: 0}, // not even in the layout
	}
	r := s.NewReader(l.Disks, ReaderOptions{})
	got := readAll(t, r, refs)
	for _, gp := range []uint64{0, 1} {
		if res := got[gp]; res.err != nil || !bytes.Equal(res.data, pageData(refs[gp].Offset/PageSize)) {
			t.Errorf("guest page %d (before the end): %v", gp, res.err)
		}
	}
	for _, gp := range []uint64{2, 3} {
		if err := got[gp].err; !errors.Is(err, ErrShortRead) {
			t.Errorf("guest page %d (past the end): %v, want ErrShortRead", gp, err)
		}
	}
	for _, gp := range []uint64{4, 5} {
		if err := got[gp].err; !errors.Is(err, ErrNoDisk) {
			t.Errorf("guest page %d (disk missing): %v, want ErrNoDisk", gp, err)
		}
	}
	if !strings.Contains(got[4].err.Error(), `"vdb"`) {
		t.Errorf("missing-disk error does not name the disk: %v", got[4].err)
	}
	if st := r.Stats(); st.Reads != 1 || st.Pages != 2 || st.Errors != 4 {
		t.Errorf("stats %+v, want 1 read, 2 pages, 4 errors", st)
	}

	buf := make([]byte, PageSize)
	if err := r.ReadPage(refs[0], buf); err != nil || !bytes.Equal(buf, pageData(7)) {
		t.Errorf("ReadPage: %v", err)
	}
	if err := r.ReadPage(refs[3], buf); !errors.Is(err, ErrShortRead) {
		t.Errorf("ReadPage past the end: %v", err)
	}

	t.Run("open", func(t *testing.T) {
		dir := t.TempDir()
		for _, c := range []struct {
			path string
			want error
		}{
			{dir, ErrNotStorage},
			{"/dev/null", ErrNotStorage},
			{filepath.Join(dir, "missing"), fs.ErrNotExist},
		} {
			s, err := OpenStorage(map[string]string{"ok": path, "bad": c.path})
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), "bad") {
				t.Errorf("OpenStorage(%s) = %v, want %v naming the disk", c.path, err, c.want)
			}
			if s != nil {
				t.Errorf("OpenStorage(%s) returned storage with an error", c.path)
			}
		}
	})
}

// faultyDisk fails reads that touch bad blocks with EIO.
type faultyDisk struct {
	io.ReaderAt
	bad map[int64]bool
}

func (d faultyDisk) ReadAt(p []byte, off int64) (int, error) {
	for b := off / PageSize; b*PageSize < off+int64(len(p)); b++ {
		if d.bad[b] {
			return 0, &fs.PathError{Op: "read", Path: "faulty", Err: syscall.EIO}
		}
	}
	return d.ReaderAt.ReadAt(p, off)
}

func TestReaderIOErrorFailsOnlyItsPage(t *testing.T) {
	f, err := os.Open(diskFile(t, 32))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := NewStorage(map[string]io.ReaderAt{"vda": faultyDisk{f, map[int64]bool{5: true}}})
	defer s.Close()
	var refs []Ref
	for i := range 16 {
		refs = append(refs, Ref{GuestPage: uint64(i), Offset: uint64(i) * PageSize})
	}
	r := s.NewReader(disks("vda"), ReaderOptions{})
	got := readAll(t, r, refs)
	for i, ref := range refs {
		res := got[ref.GuestPage]
		if i == 5 {
			if !errors.Is(res.err, syscall.EIO) {
				t.Errorf("bad block: %v, want EIO", res.err)
			}
			continue
		}
		if res.err != nil || !bytes.Equal(res.data, pageData(uint64(i))) {
			t.Errorf("block %d: %v", i, res.err)
		}
	}
	if st := r.Stats(); st.Reads != 1+16 || st.Errors != 1 {
		t.Errorf("stats %+v: want one failed batch read and 16 retries", st)
	}
	if _, err := f.Stat(); err != nil {
		t.Errorf("Close closed a reader it does not own: %v", err)
	}
}

func TestReaderCancel(t *testing.T) {
	s := openOne(t, "vda", diskFile(t, 1024))
	var refs []Ref
	for i := range 1024 {
		refs = append(refs, Ref{GuestPage: uint64(i), Offset: uint64(i) * PageSize})
	}
	r := s.NewReader(disks("vda"), ReaderOptions{Workers: 2, MaxRead: PageSize})
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	n := 0
	err := r.Read(ctx, refs, func(Ref, []byte, error) {
		mu.Lock()
		defer mu.Unlock()
		if n++; n == 10 {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Read = %v, want context.Canceled", err)
	}
	if n >= len(refs) {
		t.Errorf("all %d refs delivered after cancel", n)
	}
}

// TestBlockDevice reads through a loop device over the test disk, when this
// host lets the test make one.
func TestBlockDevice(t *testing.T) {
	path := diskFile(t, 256)
	out, err := exec.Command("losetup", "--find", "--show", "--read-only", path).CombinedOutput()
	if err != nil {
		t.Skipf("cannot make a loop device: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	s := openOne(t, "loop", dev)
	refs := []Ref{{GuestPage: 9, Offset: 200 * PageSize}, {GuestPage: 8, Offset: 201 * PageSize}, {GuestPage: 1, Offset: 255 * PageSize}}
	got := readAll(t, s.NewReader(disks("loop"), ReaderOptions{}), refs)
	for _, ref := range refs {
		if res := got[ref.GuestPage]; res.err != nil || !bytes.Equal(res.data, pageData(ref.Offset/PageSize)) {
			t.Errorf("%s block %d: %v", dev, ref.Offset/PageSize, res.err)
		}
	}
	got = readAll(t, s.NewReader(disks("loop"), ReaderOptions{}), []Ref{{Offset: 256 * PageSize}})
	if !errors.Is(got[0].err, ErrShortRead) {
		t.Errorf("read past the end of %s: %v", dev, got[0].err)
	}
}

// BenchmarkReader reads a whole disk file (in the page cache) through the
// reader, refs in random order as a guest's pages are, and copies each page
// into a guest-sized buffer; the baseline reads the same file sequentially
// into that buffer with 1 MiB reads. Metrics: GB/s of each, and their ratio.
func BenchmarkReader(b *testing.B) {
	const blocks = 65536 // 256 MiB
	path := diskFile(b, blocks)
	s, err := OpenStorage(map[string]string{"vda": path})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	perm := rand.Perm(blocks)
	refs := make([]Ref, blocks)
	for i, p := range perm {
		refs[i] = Ref{GuestPage: uint64(p), Offset: uint64(i) * PageSize}
	}
	guest := make([]byte, blocks*PageSize)
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()

	var readerTime, seqTime time.Duration
	b.SetBytes(blocks * PageSize)
	for b.Loop() {
		start := time.Now()
		for off := int64(0); off < int64(len(guest)); off += 1 << 20 {
			if _, err := f.ReadAt(guest[off:off+1<<20], off); err != nil {
				b.Fatal(err)
			}
		}
		seqTime += time.Since(start)

		r := s.NewReader(disks("vda"), ReaderOptions{})
		start = time.Now()
		err := r.Read(context.Background(), refs, func(ref Ref, page []byte, err error) {
			if err != nil {
				panic(fmt.Sprint(ref, err))
			}
			copy(guest[ref.GuestPage*PageSize:], page)
		})
		if err != nil {
			b.Fatal(err)
		}
		readerTime += time.Since(start)
	}
	total := float64(b.N) * blocks * PageSize / 1e9
	b.ReportMetric(total/readerTime.Seconds(), "GB/s")
	b.ReportMetric(total/seqTime.Seconds(), "seq-GB/s")
	b.ReportMetric(seqTime.Seconds()/readerTime.Seconds(), "x-seq")
}

// dropCache writes path back and drops its pages from the page cache, or
// skips the test where they cannot leave it (a tmpfs TMPDIR).
func dropCache(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	if cached(f, 0, PageSize) {
		t.Skipf("%s stays in the page cache (a tmpfs?): no cold read to hint", path)
	}
}

// A Read of a file outside the page cache hints its groups' ranges, joined
// across small gaps, before reading; one of cached pages hints nothing.
// Either way every page arrives intact.
// TestReaderDirect: a batch outside the page cache is read past it
// (O_DIRECT), exactly, without hints and without filling the cache; a
// cached batch, or one with an unaligned ref, is read through the cache.
func TestReaderDirect(t *testing.T) {
	path := diskFile(t, 1024)
	s := openOne(t, "vda", path)
	if s.disks["vda"].direct == nil {
		t.Skipf("the file system of %s refuses O_DIRECT", path)
	}
	var refs []Ref
	for i := uint64(0); i < 512; i += 3 {
		refs = append(refs, Ref{GuestPage: i, Offset: i * PageSize})
	}
	dropCache(t, path)
	// Every third page (MaxGap 0): one read per ref through the page
	// cache, but a read past it joins them across the gaps (directGap).
	r := s.NewReader(disks("vda"), ReaderOptions{})
	got := readAll(t, r, refs)
	for _, ref := range refs {
		if res := got[ref.GuestPage]; res.err != nil || !bytes.Equal(res.data, pageData(ref.Offset/PageSize)) {
			t.Fatalf("guest page %d: wrong page (err %v)", ref.GuestPage, res.err)
		}
	}
	st := r.Stats()
	if st.Direct == 0 || st.Direct != st.Bytes || st.Hinted != 0 {
		t.Errorf("cold batch: %d of %d bytes direct, %d hinted; want all direct, none hinted", st.Direct, st.Bytes, st.Hinted)
	}
	if want := uint64(512*PageSize/(1<<20)) + 1; st.Reads > want {
		t.Errorf("cold batch: %d reads, want at most %d (joined across gaps)", st.Reads, want)
	}
	if cached(s.disks["vda"].file, int64(refs[1].Offset), PageSize) {
		t.Errorf("a direct read left page %d in the page cache", refs[1].GuestPage)
	}

	// Cached (by a read through the cache): through the cache.
	r = s.NewReader(disks("vda"), ReaderOptions{NoDirect: true})
	readAll(t, r, refs[:1])
	r = s.NewReader(disks("vda"), ReaderOptions{})
	readAll(t, r, refs[:1])
	if d := r.Stats().Direct; d != 0 {
		t.Errorf("cached page read past the cache (%d bytes)", d)
	}

	// Unaligned: through the cache, still exact.
	dropCache(t, path)
	odd := Ref{GuestPage: 7, Offset: 5*PageSize + 512}
	r = s.NewReader(disks("vda"), ReaderOptions{})
	res := readAll(t, r, []Ref{odd})[7]
	want := append(pageData(5)[512:], pageData(6)[:512]...)
	if res.err != nil || !bytes.Equal(res.data, want) {
		t.Fatalf("unaligned ref: wrong page (err %v)", res.err)
	}
	if d := r.Stats().Direct; d != 0 {
		t.Errorf("unaligned ref read past the cache (%d bytes)", d)
	}
}

func TestReaderPrefetch(t *testing.T) {
	path := diskFile(t, 1024)
	s := openOne(t, "vda", path)
	// Every fourth block of 0..255 (3-page gaps: one hint), and 1000 (a
	// gap past prefetchGap: a second).
	var refs []Ref
	for i := uint64(0); i < 256; i += 4 {
		refs = append(refs, Ref{GuestPage: i, Offset: i * PageSize})
	}
	refs = append(refs, Ref{GuestPage: 1000, Offset: 1000 * PageSize})
	want := uint64(253*PageSize + PageSize)
	check := func(t *testing.T, r *Reader) {
		t.Helper()
		for _, ref := range refs {
			if res := readAll(t, r, []Ref{ref})[ref.GuestPage]; res.err != nil || !bytes.Equal(res.data, pageData(ref.Offset/PageSize)) {
				t.Fatalf("guest page %d: wrong page (err %v)", ref.GuestPage, res.err)
			}
		}
	}
	t.Run("cold", func(t *testing.T) {
		dropCache(t, path)
		r := s.NewReader(disks("vda"), ReaderOptions{NoDirect: true})
		readAll(t, r, refs)
		if h := r.Stats().Hinted; h != want {
			t.Errorf("hinted %d bytes, want %d", h, want)
		}
		if d := r.Stats().Direct; d != 0 {
			t.Errorf("NoDirect read %d bytes past the page cache", d)
		}
		check(t, r)
	})
	t.Run("cached", func(t *testing.T) {
		r := s.NewReader(disks("vda"), ReaderOptions{})
		readAll(t, r, refs) // the cold run left them cached
		if h := r.Stats().Hinted; h != 0 {
			t.Errorf("hinted %d bytes of a cached file, want none", h)
		}
	})
	t.Run("off", func(t *testing.T) {
		dropCache(t, path)
		r := s.NewReader(disks("vda"), ReaderOptions{NoPrefetch: true, NoDirect: true})
		readAll(t, r, refs)
		if h := r.Stats().Hinted; h != 0 {
			t.Errorf("NoPrefetch hinted %d bytes", h)
		}
		check(t, r)
	})
}
