package layout

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
)

// ParseDiskFlag parses a --disk flag "NAME=PATH": the disk identity a layout
// uses (see Disk.Name) and the file or block device that holds it here.
func ParseDiskFlag(s string) (name, path string, err error) {
	name, path, ok := strings.Cut(s, "=")
	if !ok || name == "" || path == "" {
		return "", "", fmt.Errorf("parse disk %q: want NAME=PATH", s)
	}
	return name, path, nil
}

// Storage is the set of disks this host can read, by name. It owns the files
// it opened: they stay open until Close.
type Storage struct {
	disks map[string]storageDisk
}

type storageDisk struct {
	r    io.ReaderAt
	path string
	// file is r when it is a file: a Read hints its ranges to the kernel
	// before reading them (prefetch).
	file *os.File
	// direct is the same file opened for reads past the page cache
	// (O_DIRECT), nil where the file system refuses them: a batch outside
	// the page cache is read through it (see Reader.Read).
	direct *os.File
}

// OpenStorage opens each path (a regular file or a block device) read-only
// under its disk name. On error nothing stays open.
func OpenStorage(paths map[string]string) (*Storage, error) {
	s := &Storage{disks: make(map[string]storageDisk, len(paths))}
	for name, path := range paths {
		f, err := openDisk(path)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("open disk %s: %w", name, err)
		}
		s.disks[name] = storageDisk{r: f, path: path, file: f, direct: openDirect(path)}
	}
	return s, nil
}

func openDisk(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if m := st.Mode(); !m.IsRegular() && m&fs.ModeDevice == 0 || m&fs.ModeCharDevice != 0 {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, ErrNotStorage)
	}
	return f, nil
}

// NewStorage makes a Storage from readers the caller owns (Close does not
// close them): for in-memory disks and injected faults.
func NewStorage(disks map[string]io.ReaderAt) *Storage {
	s := &Storage{disks: make(map[string]storageDisk, len(disks))}
	for name, r := range disks {
		f, _ := r.(*os.File)
		s.disks[name] = storageDisk{r: noCloser{r}, path: name, file: f}
	}
	return s
}

type noCloser struct{ io.ReaderAt }

// Names returns the disk names, sorted.
func (s *Storage) Names() []string {
	names := make([]string, 0, len(s.disks))
	for n := range s.disks {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Close closes every disk OpenStorage opened. Readers of s must be done.
func (s *Storage) Close() error {
	var errs []error
	for name, d := range s.disks {
		if c, ok := d.r.(io.Closer); ok {
			if err := c.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close disk %s: %w", name, err))
			}
		}
		if d.direct != nil {
			if err := d.direct.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close disk %s (O_DIRECT): %w", name, err))
			}
		}
		delete(s.disks, name)
	}
	return errors.Join(errs...)
}

// ReaderOptions tune a Reader. Zero values take the defaults.
type ReaderOptions struct {
	Workers int // parallel reads; default 8
	MaxRead int // largest single read in bytes; default 1 MiB, at least PageSize
	MaxGap  int // bytes nobody asked for that one read may span to join two refs; default 0
	// NoPrefetch: a Read does not hint its ranges to the kernel first.
	NoPrefetch bool
	// NoDirect: a batch outside the page cache is read through it
	// (hinted) rather than past it with O_DIRECT.
	NoDirect bool
}

// Reader reads the pages of layout refs from a Storage. It is safe for
// concurrent use; each Read runs its own workers.
type Reader struct {
	disks []storageDisk // by DiskID; r == nil: not available here
	names []string      // by DiskID
	opts  ReaderOptions
	// bufs holds the workers' MaxRead buffers between Reads: a fresh buffer
	// per Read is faulted in page by page inside pread's copy, which cost
	// the restore four times the read itself.
	bufs sync.Pool

	reads, bytes, pages, errs, hinted, direct atomic.Uint64
}

// ReaderStats counts what a Reader did since it was made.
type ReaderStats struct {
	Reads  uint64 // read calls issued to disks
	Bytes  uint64 // bytes those calls returned
	Pages  uint64 // pages delivered without error
	Errors uint64 // pages delivered with an error
	Hinted uint64 // bytes of file ranges hinted to the kernel before reading
	Direct uint64 // bytes read past the page cache (O_DIRECT), part of Bytes
}

// NewReader binds the disk ids of a layout (its Disks) to s's disks by name.
// Disks s lacks are not an error here: their refs fail with ErrNoDisk.
func (s *Storage) NewReader(disks []Disk, opts ReaderOptions) *Reader {
	if opts.Workers <= 0 {
		opts.Workers = 8
	}
	if opts.MaxRead <= 0 {
		opts.MaxRead = 1 << 20
	}
	opts.MaxRead = max(opts.MaxRead, PageSize)
	opts.MaxGap = max(opts.MaxGap, 0)
	r := &Reader{opts: opts}
	for _, d := range disks {
		for int(d.ID) >= len(r.disks) {
			r.disks = append(r.disks, storageDisk{})
			r.names = append(r.names, "")
		}
		r.disks[d.ID] = s.disks[d.Name]
		r.names[d.ID] = d.Name
	}
	return r
}

// Stats returns the reader's counters.
func (r *Reader) Stats() ReaderStats {
	return ReaderStats{Reads: r.reads.Load(), Bytes: r.bytes.Load(), Pages: r.pages.Load(), Errors: r.errs.Load(), Hinted: r.hinted.Load(), Direct: r.direct.Load()}
}

// ReadPage reads the page of one ref into dst (len(dst) >= PageSize) with a
// single read: for a fault that cannot wait for a batch.
func (r *Reader) ReadPage(ref Ref, dst []byte) error {
	d, err := r.disk(ref.Disk)
	if err == nil {
		_, err = r.readAt(d, dst[:PageSize], ref.Offset)
	}
	if err != nil {
		r.errs.Add(1)
		return fmt.Errorf("read page %#x from disk %d offset %#x: %w", ref.GuestPage, ref.Disk, ref.Offset, err)
	}
	r.pages.Add(1)
	return nil
}

func (r *Reader) disk(id DiskID) (io.ReaderAt, error) {
	if int(id) >= len(r.disks) || r.disks[id].r == nil {
		name := ""
		if int(id) < len(r.names) {
			name = r.names[id]
		}
		return nil, fmt.Errorf("disk %d %q: %w", id, name, ErrNoDisk)
	}
	return r.disks[id].r, nil
}

// readAt reads len(buf) bytes at off and returns how many it got; fewer
// than asked is an error, ErrShortRead at the end of the disk.
func (r *Reader) readAt(d io.ReaderAt, buf []byte, off uint64) (int, error) {
	n, err := d.ReadAt(buf, int64(off))
	r.reads.Add(1)
	r.bytes.Add(uint64(n))
	if n == len(buf) {
		return n, nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return n, fmt.Errorf("%w: %d of %d bytes at %#x", ErrShortRead, n, len(buf), off)
	}
	return n, err
}

// group is one read: refs[i:j] of the sorted batch, bytes [start, end).
type group struct {
	i, j       int
	start, end uint64
}

// Read reads the page of every ref and calls fn once per ref with the page
// (valid only during the call) or the error for that ref: ErrNoDisk for a
// disk this host lacks, ErrShortRead past the end of a disk, or the read
// error. Refs adjacent on disk are read together, up to MaxRead bytes, by
// Workers goroutines; fn is called from those goroutines concurrently.
// Read returns the context's error if it is cancelled (fn is then not called
// for the refs not yet read), else nil.
//
// A batch outside the page cache (shared storage this host never read) is
// read past it, with O_DIRECT where the disk allows: through the cache,
// each page cost an allocation and a copy on its way to a buffer that is
// copied once more into guest RAM (here 1.5 s of CPU per GiB, eight times
// a direct read's), and left behind a cached copy of every page the guest
// now holds itself.
func (r *Reader) Read(ctx context.Context, refs []Ref, fn func(ref Ref, page []byte, err error)) error {
	sorted := slices.Clone(refs)
	slices.SortFunc(sorted, func(a, b Ref) int {
		return cmp.Or(cmp.Compare(a.Disk, b.Disk), cmp.Compare(a.Offset, b.Offset))
	})
	groups := r.groups(sorted, uint64(r.opts.MaxGap), fn)
	direct := false
	if (!r.opts.NoPrefetch || !r.opts.NoDirect) && !r.allCached(sorted, groups) {
		direct = !r.opts.NoDirect
		if direct && r.opts.MaxGap < directGap {
			groups = r.groups(sorted, directGap, nil)
		}
		if !r.opts.NoPrefetch {
			r.prefetch(sorted, groups, direct)
		}
	}
	// The workers take groups by index rather than from a channel: a
	// hand-off per read cost as much as the read of a page.
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(r.opts.Workers, len(groups)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf, _ := r.bufs.Get().(*[]byte)
			if buf == nil {
				b := alignedBuffer(r.opts.MaxRead)
				buf = &b
			}
			defer r.bufs.Put(buf)
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= len(groups) {
					return
				}
				g := groups[i]
				r.readGroup(sorted[g.i:g.j], g, *buf, direct, fn)
			}
		}()
	}
	wg.Wait()
	return ctx.Err()
}

// directGap is the most bytes nobody asked for that a read past the page
// cache spans to join two refs: such a read is a device request of its
// own, and a batch of pages scattered over a stretch of the disk (half of
// it, where two connections share the stretch's pages) is read faster in
// a few large requests, gaps and all, than in one request per page.
const directGap = 64 << 10

// groups cuts the sorted refs into reads joined across gaps of up to
// maxGap bytes; refs of a disk this host lacks fail here (reported to fn,
// unless fn is nil: a second cut of refs already reported).
func (r *Reader) groups(refs []Ref, maxGap uint64, fn func(Ref, []byte, error)) []group {
	maxRead := uint64(r.opts.MaxRead)
	var groups []group
	for i := 0; i < len(refs); {
		if _, err := r.disk(refs[i].Disk); err != nil {
			if fn != nil {
				r.errs.Add(1)
				fn(refs[i], nil, err)
			}
			i++
			continue
		}
		g := group{i: i, j: i + 1, start: refs[i].Offset, end: refs[i].Offset + PageSize}
		for ; g.j < len(refs); g.j++ {
			next := refs[g.j]
			if next.Disk != refs[i].Disk || next.Offset > g.end+maxGap || next.Offset+PageSize-g.start > maxRead {
				break
			}
			g.end = max(g.end, next.Offset+PageSize)
		}
		groups = append(groups, g)
		i = g.j
	}
	return groups
}

// prefetchGap is the most bytes nobody asked for that one hint spans to
// join two groups: fewer calls, and reading 32 KiB more costs a disk less
// than another request.
const prefetchGap = 32 << 10

// prefetchProbes is how many of a Read's groups are probed for the page
// cache before hinting (see prefetch).
const prefetchProbes = 16

// prefetch hints the groups' ranges of file-backed disks to the kernel
// before the workers read them. From a disk outside the page cache (shared
// storage the destination never read) a pread per group waits for its
// device round trip, Workers at a time; hinted, the kernel queues all of
// a batch's reads at once and the preads find them arriving. A hint per
// group costs a syscall even where every page is cached (a tenth of the
// restore's CPU here), so a batch whose probed groups are all cached is
// not hinted.
//
// Disks read past the page cache (direct) are not hinted: the hint would
// fill the cache the direct reads avoid.
func (r *Reader) prefetch(refs []Ref, groups []group, direct bool) {
	var f *os.File
	var disk DiskID
	var start, end uint64
	flush := func() {
		if f != nil && end > start && willNeed(f, int64(start), int64(end-start)) == nil {
			r.hinted.Add(end - start)
		}
		f = nil
	}
	for _, g := range groups {
		d := refs[g.i].Disk
		file := r.disks[d].file
		if file == nil || direct && r.disks[d].direct != nil {
			continue
		}
		if f != nil && d == disk && g.start <= end+prefetchGap {
			end = max(end, g.end)
			continue
		}
		flush()
		f, disk, start, end = file, d, g.start, g.end
	}
	flush()
}

// allCached probes up to prefetchProbes groups, spread over the batch, and
// reports whether each probed group was wholly in the page cache.
func (r *Reader) allCached(refs []Ref, groups []group) bool {
	n := min(len(groups), prefetchProbes)
	for k := range n {
		g := groups[k*len(groups)/n]
		f := r.disks[refs[g.i].Disk].file
		if f != nil && !cached(f, int64(g.start), int64(g.end-g.start)) {
			return false
		}
	}
	return true
}

// readGroup reads one group (with direct, past the page cache where the
// disk and the group's alignment allow) and delivers its refs. Refs inside
// the bytes read are delivered even if the read came up short. After an
// error other than the end of the disk, the refs it left are retried page
// by page so that one bad block fails only its own refs.
func (r *Reader) readGroup(refs []Ref, g group, buf []byte, direct bool, fn func(Ref, []byte, error)) {
	d, _ := r.disk(refs[0].Disk)
	buf = buf[:g.end-g.start]
	n, err := 0, error(nil)
	if f := r.disks[refs[0].Disk].direct; direct && f != nil && g.start%directAlign == 0 && len(buf)%directAlign == 0 {
		n, err = r.readAt(f, buf, g.start)
		if n > 0 {
			r.direct.Add(uint64(n))
		}
		if directRefused(err) {
			// Not for this file after all (a file system that opens
			// O_DIRECT but refuses the read): through the cache.
			n, err = r.readAt(d, buf, g.start)
		}
	} else {
		n, err = r.readAt(d, buf, g.start)
	}
	retry := err != nil && !errors.Is(err, ErrShortRead)
	for _, ref := range refs {
		page := buf[ref.Offset-g.start:][:PageSize]
		switch {
		case ref.Offset+PageSize-g.start <= uint64(n):
			r.deliver(ref, page, nil, fn)
		case retry && len(refs) > 1:
			if _, err := r.readAt(d, page, ref.Offset); err != nil {
				r.deliver(ref, nil, fmt.Errorf("read disk %d offset %#x: %w", ref.Disk, ref.Offset, err), fn)
			} else {
				r.deliver(ref, page, nil, fn)
			}
		default:
			r.deliver(ref, nil, fmt.Errorf("read disk %d offset %#x: %w", ref.Disk, ref.Offset, err), fn)
		}
	}
}

func (r *Reader) deliver(ref Ref, page []byte, err error, fn func(Ref, []byte, error)) {
	if err != nil {
		r.errs.Add(1)
	} else {
		r.pages.Add(1)
	}
	fn(ref, page, err)
}
