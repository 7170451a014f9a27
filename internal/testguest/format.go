package testguest

import (
	"encoding/binary"
	"fmt"
	"math"
	"sync/atomic"
	"unsafe"
)

// magic opens page 0 of every test-guest RAM file; the last byte is the
// format version.
const magic = "DMIGTG\x00\x01"

// Byte offsets in page 0. Geometry and parameters are written once at
// creation; the fields from offCounter on change while the guest runs and
// are accessed atomically, because their order of stores is what makes the
// RAM consistent at any instruction.
const (
	offMagic      = 0
	offPages      = 8
	offTableStart = 16
	offTablePages = 24
	offDataStart  = 32
	offDataPages  = 40
	offDescStart  = 48
	offDescPages  = 56
	offDBTStart   = 64
	offDBTPages   = 72
	offPoolStart  = 80
	offFrames     = 88
	offDBPages    = 96
	offFiles      = 104 // number of RAM files, each an equal share
	offPoolFill   = 112

	offSeed       = 128
	offWriteRate  = 136
	offHot        = 144
	offHotShare   = 152
	offReadShare  = 160
	offDBRead     = 168
	offDBModify   = 176
	offDBFlush    = 184
	offFill       = 192
	offDiskIDLen  = 200
	offDiskID     = 208 // 32 bytes
	offDBFileLen  = 240
	offDBFile     = 248 // up to maxPath bytes
	maxPath       = 1024
	maxDiskID     = 32
	offCounter    = 2048
	offIntent     = 2056 // 0 idle, 1 active
	offIntentPage = 2064
	offIntentVer  = 2072
	offIntentCnt  = 2080

	offDBOp       = 2112 // dbOp*
	offDBFrame    = 2120
	offDBPage     = 2128
	offDBVer      = 2136
	offDBPrev     = 2144 // previous db page + 1, 0 for a free frame
	offDBCnt      = 2152 // modify count before the op
	offModCount   = 2160
	offLoadCount  = 2168
	offFlushCount = 2176
)

const (
	dbOpNone = iota
	dbOpLoad
	dbOpModify
	dbOpFlush
)

// Sizes of the RAM tables: a uint32 version per data page; per frame a
// descriptor {db page + 1 (0 = free), version, dirty, unused}; per db page
// {version on disk, frame + 1 (0 = not resident)}.
const (
	descSize = 16
	dbtSize  = 8
)

// Params is everything the guest needs to run its workload. It is stored in
// page 0 of the RAM file, so a guest resumed from that RAM (on the
// destination) continues the same workload without any flag.
type Params struct {
	// Size of the RAM file in bytes, a multiple of PageSize.
	Size int64
	// Seed drives the workload's choices and the buffer pool's scatter.
	Seed uint64
	// Fill is the share of data pages written once (version 1) at
	// creation; the rest are holes (version 0, all zeros).
	Fill float64
	// WriteRate is data-page writes per second; 0 writes nothing.
	WriteRate int64
	// Hot is the share of pages that receive HotShare of all accesses.
	Hot      float64
	HotShare float64
	// ReadShare is the share of data-page operations that are reads:
	// reads/s = WriteRate × ReadShare / (1 − ReadShare). Must be < 1.
	ReadShare float64
	// DB configures the database-like mode; zero Pages disables it.
	DB DBParams
}

// DBParams is the database-like mode: a data file on shared storage and a
// buffer pool of 16 KiB frames in RAM.
type DBParams struct {
	// File is the data file's path; both hosts must reach it at this path.
	File string
	// DiskID names File in the layout the guest serves ("data" if empty).
	DiskID string
	// Pages is the number of 16 KiB pages in File.
	Pages int64
	// Frames is the number of 16 KiB buffer-pool frames in RAM.
	Frames int64
	// Fill is the share of frames loaded (clean) at creation, so a guest
	// starts with the warm buffer pool a database has after a while.
	Fill float64
	// Operations per second: reads (load a page into a frame if it is not
	// resident, else check the frame), modifications (frame becomes dirty)
	// and flushes (a dirty frame written back, clean again).
	ReadRate, ModifyRate, FlushRate int64
}

// DefaultParams is a 1 GiB guest writing 20 k pages/s, 90 % of them to 10 %
// of its pages, with as many reads as writes.
func DefaultParams() Params {
	return Params{
		Size:      1 << 30,
		Seed:      1,
		WriteRate: 20000,
		Hot:       0.1,
		HotShare:  0.9,
		ReadShare: 0.5,
	}
}

// geometry is where each region of the RAM file lives, in pages:
// header | version table | frame descriptors | db table | data | pool.
type geometry struct {
	pages                  int64
	tableStart, tablePages int64
	descStart, descPages   int64
	dbtStart, dbtPages     int64
	dataStart, dataPages   int64
	poolStart, frames      int64
	dbPages                int64
}

func ceilDiv(a, b int64) int64 { return (a + b - 1) / b }

func (p *Params) validate() error {
	switch {
	case p.Size <= 0 || p.Size%PageSize != 0:
		return fmt.Errorf("%w: size %d is not a positive multiple of %d", ErrParams, p.Size, PageSize)
	case !share(p.Fill) || !share(p.DB.Fill):
		return fmt.Errorf("%w: fill %v / pool fill %v outside [0, 1]", ErrParams, p.Fill, p.DB.Fill)
	case p.WriteRate < 0 || p.DB.ReadRate < 0 || p.DB.ModifyRate < 0 || p.DB.FlushRate < 0:
		return fmt.Errorf("%w: negative rate", ErrParams)
	case !share(p.Hot) || !share(p.HotShare):
		return fmt.Errorf("%w: hot %v / hot share %v outside [0, 1]", ErrParams, p.Hot, p.HotShare)
	case !share(p.ReadShare) || p.ReadShare == 1:
		return fmt.Errorf("%w: read share %v outside [0, 1)", ErrParams, p.ReadShare)
	case p.DB.Pages < 0 || p.DB.Frames < 0 || p.DB.Pages >= 1<<31 || p.DB.Frames >= 1<<31:
		return fmt.Errorf("%w: db pages %d / frames %d out of range", ErrParams, p.DB.Pages, p.DB.Frames)
	case p.DB.Pages > 0 && (p.DB.File == "" || p.DB.Frames == 0):
		return fmt.Errorf("%w: db mode needs a file and at least one frame", ErrParams)
	case len(p.DB.File) > maxPath || len(p.DB.DiskID) > maxDiskID:
		return fmt.Errorf("%w: db file path or disk id too long", ErrParams)
	}
	_, err := newGeometry(p)
	return err
}

// share reports whether x is in [0, 1]; NaN (from a damaged header) is not.
func share(x float64) bool { return x >= 0 && x <= 1 }

func newGeometry(p *Params) (geometry, error) {
	g := geometry{pages: p.Size / PageSize}
	if p.DB.Pages > 0 {
		g.frames, g.dbPages = p.DB.Frames, p.DB.Pages
		g.descPages = ceilDiv(g.frames*descSize, PageSize)
		g.dbtPages = ceilDiv(g.dbPages*dbtSize, PageSize)
	}
	rest := 1 + g.descPages + g.dbtPages + 4*g.frames
	avail := g.pages - rest
	g.tablePages = ceilDiv(avail, PageSize/4+1)
	g.dataPages = avail - g.tablePages
	if g.dataPages < 1 {
		return geometry{}, fmt.Errorf("%w: %d pages of RAM leave no data page beside %d frames", ErrParams, g.pages, g.frames)
	}
	g.tableStart = 1
	g.descStart = g.tableStart + g.tablePages
	g.dbtStart = g.descStart + g.descPages
	g.dataStart = g.dbtStart + g.dbtPages
	g.poolStart = g.dataStart + g.dataPages
	return g, nil
}

// header reads and writes page 0 of a RAM mapping.
type header []byte

func (h header) u64(off int) uint64        { return binary.LittleEndian.Uint64(h[off:]) }
func (h header) put(off int, v uint64)     { binary.LittleEndian.PutUint64(h[off:], v) }
func (h header) f64(off int) float64       { return math.Float64frombits(h.u64(off)) }
func (h header) putF(off int, v float64)   { h.put(off, math.Float64bits(v)) }
func (h header) at(off int) *atomic.Uint64 { return (*atomic.Uint64)(unsafe.Pointer(&h[off])) }
func (h header) load(off int) uint64       { return h.at(off).Load() }
func (h header) store(off int, v uint64)   { h.at(off).Store(v) }
func (h header) str(lenOff, off int) string {
	return string(h[off : off+int(min(h.u64(lenOff), maxPath))])
}

func (h header) write(p *Params, g geometry, files int) {
	copy(h[offMagic:], magic)
	for off, v := range map[int]int64{
		offPages: g.pages, offTableStart: g.tableStart, offTablePages: g.tablePages,
		offDataStart: g.dataStart, offDataPages: g.dataPages, offDescStart: g.descStart,
		offDescPages: g.descPages, offDBTStart: g.dbtStart, offDBTPages: g.dbtPages,
		offPoolStart: g.poolStart, offFrames: g.frames, offDBPages: g.dbPages,
		offWriteRate: p.WriteRate, offDBRead: p.DB.ReadRate, offDBModify: p.DB.ModifyRate,
		offDBFlush: p.DB.FlushRate, offFiles: int64(files),
	} {
		h.put(off, uint64(v))
	}
	h.put(offSeed, p.Seed)
	h.putF(offHot, p.Hot)
	h.putF(offHotShare, p.HotShare)
	h.putF(offReadShare, p.ReadShare)
	h.putF(offFill, p.Fill)
	h.putF(offPoolFill, p.DB.Fill)
	h.put(offDiskIDLen, uint64(len(p.DB.DiskID)))
	copy(h[offDiskID:offDiskID+maxDiskID], p.DB.DiskID)
	h.put(offDBFileLen, uint64(len(p.DB.File)))
	copy(h[offDBFile:offDBFile+maxPath], p.DB.File)
}

// read parses page 0 of a RAM of size bytes in files files and checks that
// the geometry it records is the one its parameters imply.
func (h header) read(size int64, files int) (Params, geometry, error) {
	if string(h[:len(magic)]) != magic {
		return Params{}, geometry{}, fmt.Errorf("%w: bad magic %q", ErrNotGuest, h[:8])
	}
	p := Params{
		Size:      int64(h.u64(offPages)) * PageSize,
		Seed:      h.u64(offSeed),
		Fill:      h.f64(offFill),
		WriteRate: int64(h.u64(offWriteRate)),
		Hot:       h.f64(offHot),
		HotShare:  h.f64(offHotShare),
		ReadShare: h.f64(offReadShare),
		DB: DBParams{
			File:       h.str(offDBFileLen, offDBFile),
			DiskID:     string(h[offDiskID : offDiskID+int(min(h.u64(offDiskIDLen), maxDiskID))]),
			Pages:      int64(h.u64(offDBPages)),
			Frames:     int64(h.u64(offFrames)),
			Fill:       h.f64(offPoolFill),
			ReadRate:   int64(h.u64(offDBRead)),
			ModifyRate: int64(h.u64(offDBModify)),
			FlushRate:  int64(h.u64(offDBFlush)),
		},
	}
	if p.Size != size {
		return Params{}, geometry{}, fmt.Errorf("%w: header says %d bytes, RAM has %d", ErrNotGuest, p.Size, size)
	}
	if n := h.u64(offFiles); n != uint64(files) {
		return Params{}, geometry{}, fmt.Errorf("%w: header says %d RAM files, given %d", ErrNotGuest, n, files)
	}
	if err := p.validate(); err != nil {
		return Params{}, geometry{}, fmt.Errorf("%w: %w", ErrNotGuest, err)
	}
	g, _ := newGeometry(&p)
	for off, v := range map[int]int64{
		offTableStart: g.tableStart, offTablePages: g.tablePages, offDataStart: g.dataStart,
		offDataPages: g.dataPages, offDescStart: g.descStart, offDescPages: g.descPages,
		offDBTStart: g.dbtStart, offDBTPages: g.dbtPages, offPoolStart: g.poolStart,
	} {
		if int64(h.u64(off)) != v {
			return Params{}, geometry{}, fmt.Errorf("%w: geometry field at %d is %d, want %d", ErrNotGuest, off, h.u64(off), v)
		}
	}
	return p, g, nil
}
