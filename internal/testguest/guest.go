package testguest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"unsafe"
)

// Guest is a test guest's RAM (and data file) mapped by this process. All of
// its state is in mem and the data file; the struct only caches what the
// header implies. A Guest is used by one goroutine at a time, except for
// the layout endpoint's read-only snapshot of frame descriptors.
type Guest struct {
	name  string // the RAM files' paths, for messages
	rw    bool
	files []*os.File
	mem   []byte
	h     header
	p     Params
	geo   geometry
	db    *os.File
	// perm scatters frames over the pool: piece i of frame k is RAM page
	// geo.poolStart + perm[4k+i].
	perm []uint32
}

// Create makes a fresh test guest: a RAM file at path of p.Size bytes (holes
// except page 0, the tables and the Fill share of data pages) and, in
// database mode, the data file with every page at version 1.
func Create(path string, p Params) error { return CreateFiles([]string{path}, p) }

// CreateFiles is Create with the RAM split evenly over several files (as a
// VM's RAM may be several blocks); the guest addresses their concatenation,
// in this order, as one RAM.
func CreateFiles(paths []string, p Params) error {
	if p.DB.File != "" {
		// The destination starts the guest in another directory: the
		// data file's path in the header must not depend on this one.
		abs, err := filepath.Abs(p.DB.File)
		if err != nil {
			return fmt.Errorf("resolve data file path: %w", err)
		}
		p.DB.File = abs
	}
	if err := p.validate(); err != nil {
		return err
	}
	if len(paths) == 0 || p.Size%(int64(len(paths))*PageSize) != 0 || p.Size/int64(len(paths)) < PageSize {
		return fmt.Errorf("%w: %d bytes do not split into %d RAM files of whole pages", ErrParams, p.Size, len(paths))
	}
	geo, _ := newGeometry(&p)
	for _, path := range paths {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return fmt.Errorf("create RAM file: %w", err)
		}
		err = f.Truncate(p.Size / int64(len(paths)))
		f.Close()
		if err != nil {
			return fmt.Errorf("size RAM file %s: %w", path, err)
		}
	}
	g, err := mapGuest(paths, true)
	if err != nil {
		return err
	}
	defer g.Close()
	g.h.write(&p, geo, len(paths))
	if p.DB.Pages > 0 {
		if err := createDataFile(p.DB.File, p.DB.Pages); err != nil {
			return err
		}
	}
	if err := g.attach(); err != nil {
		return err
	}
	if p.Fill > 0 {
		cut := uint64(p.Fill * (1 << 63))
		var n uint64
		for i := range geo.dataPages {
			if mix(p.Seed^uint64(i)*gamma)>>1 < cut {
				fillPage(g.dataPage(i), dataTag, uint64(geo.dataStart+i), 1)
				g.ver(i).Store(1)
				n++
			}
		}
		g.h.store(offCounter, n)
	}
	if p.DB.Pages > 0 {
		for d := range p.DB.Pages {
			g.diskVer(d).Store(1)
		}
		// Warm frames take distinct db pages spread over the file, in
		// frame order (the workload fills free frames in order too).
		spread := newPicker(p.DB.Pages, 1, 1, p.Seed^0xf111)
		for k := range min(int64(p.DB.Fill*float64(p.DB.Frames)), p.DB.Pages) {
			d := spread.at(k)
			g.fillFrame(k, d, 1)
			g.descVer(k).Store(1)
			g.descPage(k).Store(uint32(d + 1))
			g.frameOf(d).Store(uint32(k + 1))
		}
	}
	return nil
}

func createDataFile(path string, pages int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("create data file: %w", err)
	}
	defer f.Close()
	const batch = 64
	buf := make([]byte, batch*DBPageSize)
	for d := int64(0); d < pages; d += batch {
		n := min(batch, pages-d)
		for j := range n {
			fillDBPage(buf[j*DBPageSize:(j+1)*DBPageSize], d+j, 1)
		}
		if _, err := f.WriteAt(buf[:n*DBPageSize], d*DBPageSize); err != nil {
			return fmt.Errorf("write data file %s: %w", path, err)
		}
	}
	return nil
}

func fillDBPage(b []byte, d int64, v uint32) {
	for i := range 4 {
		fillPage(b[i*PageSize:(i+1)*PageSize], dbTag, uint64(d*4+int64(i)), v)
	}
}

// mapGuest maps RAM files without reading any of them (see mapFiles).
func mapGuest(paths []string, writable bool) (*Guest, error) {
	files, mem, err := mapFiles(paths, writable)
	if err != nil {
		return nil, err
	}
	return &Guest{name: strings.Join(paths, ":"), rw: writable, files: files, mem: mem, h: header(mem[:PageSize])}, nil
}

// attach reads page 0 and opens the data file: the first time the guest
// touches its RAM.
func (g *Guest) attach() error {
	p, geo, err := g.h.read(int64(len(g.mem)), len(g.files))
	if err != nil {
		return fmt.Errorf("read header of %s: %w", g.name, err)
	}
	for _, f := range g.files {
		if fi, err := f.Stat(); err != nil || fi.Size() != p.Size/int64(len(g.files)) {
			return fmt.Errorf("%w: RAM file %s is not 1/%d of %d bytes", ErrNotGuest, f.Name(), len(g.files), p.Size)
		}
	}
	g.p, g.geo = p, geo
	if geo.frames > 0 {
		g.perm = scatter(p.Seed, 4*geo.frames)
		flag := os.O_RDONLY
		if g.rw {
			flag = os.O_RDWR
		}
		if g.db, err = os.OpenFile(p.DB.File, flag, 0); err != nil {
			return fmt.Errorf("open data file: %w", err)
		}
		fi, err := g.db.Stat()
		if err != nil {
			return fmt.Errorf("stat data file %s: %w", p.DB.File, err)
		}
		if fi.Size() != p.DB.Pages*DBPageSize {
			var r Report
			r.add(fi.Size()/DBPageSize, "disk", fmt.Sprintf("a data file of %d bytes", p.DB.Pages*DBPageSize), fmt.Sprintf("%d bytes in %s", fi.Size(), p.DB.File))
			return &MismatchError{Report: r}
		}
	}
	return nil
}

// Close unmaps the RAM and closes the files; the Guest is unusable after.
func (g *Guest) Close() error {
	var err error
	if g.db != nil {
		err = g.db.Close()
	}
	return errors.Join(err, unmapFiles(g.files, g.mem))
}

// Params returns the workload parameters stored in the guest's RAM.
func (g *Guest) Params() Params { return g.p }

// Counter returns the number of data-page writes done since creation.
func (g *Guest) Counter() uint64 { return g.h.load(offCounter) }

// scatter is a Fisher–Yates permutation driven by splitmix64, written out
// rather than taken from math/rand so the pool's layout can never change
// with the Go version between a source and a destination.
func scatter(seed uint64, n int64) []uint32 {
	perm := make([]uint32, n)
	for i := range perm {
		perm[i] = uint32(i)
	}
	s := seed ^ 0x5ca77e4
	for i := n - 1; i > 0; i-- {
		s += gamma
		j := int64(mix(s) % uint64(i+1))
		perm[i], perm[j] = perm[j], perm[i]
	}
	return perm
}

func (g *Guest) page(n int64) []byte { return g.mem[n*PageSize : (n+1)*PageSize : (n+1)*PageSize] }

func (g *Guest) u32(off int64) *atomic.Uint32 { return (*atomic.Uint32)(unsafe.Pointer(&g.mem[off])) }

// dataPage returns data page i (RAM page geo.dataStart+i).
func (g *Guest) dataPage(i int64) []byte { return g.page(g.geo.dataStart + i) }

// ver is data page i's entry in the version table.
func (g *Guest) ver(i int64) *atomic.Uint32 { return g.u32(g.geo.tableStart*PageSize + 4*i) }

// Frame descriptor fields.
func (g *Guest) descPage(k int64) *atomic.Uint32 { return g.u32(g.geo.descStart*PageSize + descSize*k) }
func (g *Guest) descVer(k int64) *atomic.Uint32 {
	return g.u32(g.geo.descStart*PageSize + descSize*k + 4)
}
func (g *Guest) descDirty(k int64) *atomic.Uint32 {
	return g.u32(g.geo.descStart*PageSize + descSize*k + 8)
}

// Db table fields: the version on disk and the frame holding the page.
func (g *Guest) diskVer(d int64) *atomic.Uint32 { return g.u32(g.geo.dbtStart*PageSize + dbtSize*d) }
func (g *Guest) frameOf(d int64) *atomic.Uint32 {
	return g.u32(g.geo.dbtStart*PageSize + dbtSize*d + 4)
}

// piecePage is the RAM page holding piece i of frame k.
func (g *Guest) piecePage(k int64, i int) int64 { return g.geo.poolStart + int64(g.perm[4*k+int64(i)]) }

func (g *Guest) pieces(k int64) [][]byte {
	return [][]byte{g.page(g.piecePage(k, 0)), g.page(g.piecePage(k, 1)), g.page(g.piecePage(k, 2)), g.page(g.piecePage(k, 3))}
}

func (g *Guest) fillFrame(k, d int64, v uint32) {
	for i := range 4 {
		fillPage(g.page(g.piecePage(k, i)), dbTag, uint64(d*4+int64(i)), v)
	}
}

func (g *Guest) frameIs(k, d int64, v uint32) bool {
	for i := range 4 {
		if !pageIs(g.page(g.piecePage(k, i)), dbTag, uint64(d*4+int64(i)), v) {
			return false
		}
	}
	return true
}
