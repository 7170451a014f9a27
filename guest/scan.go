package guest

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dmig/dmig/internal/clock"
	"github.com/dmig/dmig/layout"
)

// Region is a range of the server's virtual memory the agent scans as
// buffer pool.
type Region struct {
	Start, End uint64
	// Descriptors is how many frames at the start of every 8 MiB extent
	// hold block descriptors (MariaDB's single-mapping pool), else 0.
	Descriptors int
}

// mapping is one line of /proc/PID/maps.
type mapping struct {
	start, end uint64
	perms      string
	anon       bool
}

func readMaps(pid int) ([]mapping, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, fmt.Errorf("read maps of pid %d: %w", pid, permission(err))
	}
	defer f.Close()
	var out []mapping
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		anon := fields[4] == "0" && (len(fields) == 5 || strings.HasPrefix(fields[5], "[anon"))
		out = append(out, mapping{start: start, end: end, perms: fields[1], anon: anon})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read maps of pid %d: %w", pid, err)
	}
	return out, nil
}

// Frames per 8 MiB extent that hold block descriptors in MariaDB's
// single-mapping buffer pool (10.11.12+), by page size: measured for 16 KiB
// (docs/architecture.md, "InnoDB facts"). For other sizes none are skipped explicitly;
// descriptors then fail the checksum like any other non-page.
var descriptorFrames = map[int]int{16384: 5}

const extentSize = 8 << 20

// findPool locates the buffer pool among the server's mappings:
//   - MariaDB 10.11.12+ reserves innodb_buffer_pool_size_max up front: an
//     anonymous rw-p mapping of the pool's size directly followed by an
//     anonymous ---p reservation. The pool is the last PoolSize bytes of
//     the rw-p mapping (a neighbour may have merged into its start).
//   - Otherwise (MySQL, older MariaDB): the anonymous rw-p mapping closest
//     to the pool's size, or with chunks, every anonymous rw-p mapping of
//     at least one chunk.
func findPool(maps []mapping, s *Server) ([]Region, error) {
	for i, m := range maps[:max(len(maps)-1, 0)] {
		n := maps[i+1]
		if m.anon && m.perms == "rw-p" && n.anon && n.perms == "---p" && n.start == m.end &&
			s.PoolSizeMax > s.PoolSize && m.end-m.start >= s.PoolSize && n.end-n.start >= s.PoolSizeMax-s.PoolSize-s.PoolSize/8 {
			return []Region{{Start: m.end - s.PoolSize, End: m.end, Descriptors: descriptorFrames[s.PageSize]}}, nil
		}
	}
	var best *mapping
	for i := range maps {
		m := &maps[i]
		size := m.end - m.start
		if !m.anon || m.perms != "rw-p" || size < s.PoolSize || size > s.PoolSize+s.PoolSize/8+32<<20 {
			continue
		}
		if best == nil || size < best.end-best.start {
			best = m
		}
	}
	if best != nil {
		return []Region{{Start: best.start, End: best.end}}, nil
	}
	var out []Region
	if s.ChunkSize > 0 {
		for _, m := range maps {
			if m.anon && m.perms == "rw-p" && m.end-m.start >= s.ChunkSize {
				out = append(out, Region{Start: m.start, End: m.end})
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("find %d MiB buffer pool: %w", s.PoolSize>>20, ErrNoBufferPool)
	}
	return out, nil
}

// Stats counts what one scan saw. Frames are innodb_page_size; the last four
// counters are in 4 KiB pages.
type Stats struct {
	PoolBytes   uint64 `json:"pool_bytes"`  // buffer pool bytes scanned
	Frames      uint64 `json:"frames"`      // frames scanned
	Zero        uint64 `json:"zero"`        // all-zero frames (free memory)
	Descriptors uint64 `json:"descriptors"` // frames skipped as block descriptors
	Unknown     uint64 `json:"unknown"`     // frames naming no page of a listed tablespace (free, garbage, dropped)
	SkipSpace   uint64 `json:"skip_space"`  // frames of encrypted, compressed or temporary spaces
	Pages       uint64 `json:"pages"`       // frames naming a page of another listed tablespace
	Clean       uint64 `json:"clean"`       // of those, with a valid checksum
	Dirty       uint64 `json:"dirty"`       // of those, without
	Unsettled   uint64 `json:"unsettled"`   // clean pages newer than the last checkpoint (their write may be in flight)
	Duplicate   uint64 `json:"duplicate"`   // clean pages claimed by more than one frame (all dropped)
	NoFile      uint64 `json:"no_file"`     // clean pages whose file could not be mapped (see log)

	NotPresent uint64 `json:"not_present"` // 4 KiB of clean frames not in RAM
	NoDisk     uint64 `json:"no_disk"`     // 4 KiB of clean frames in no usable extent (unwritten, past the end)
	SharedPFN  uint64 `json:"shared_pfn"`  // 4 KiB whose frame number two references claimed (all dropped)
	Refs       uint64 `json:"refs"`        // 4 KiB pages in the layout

	Runs     int           `json:"runs"`
	Duration time.Duration `json:"duration_ns"`
	CPU      time.Duration `json:"cpu_ns"` // user+system CPU of the agent during the scan
}

// candidate is a clean frame to reference.
type candidate struct {
	space *Space
	page  uint32
	lsn   uint64 // FIL_PAGE_LSN: the page's newest change
	pfns  int    // index of its pagemap entries in scanner.entries
}

// scanner holds one scan's state.
type scanner struct {
	srv     *Server
	mem     *Mem
	pm      *Pagemap
	rate    float64 // bytes per second; 0: unlimited
	chunk   int
	stats   Stats
	cands   []candidate
	entries []uint64 // pagemap entries of the candidates, pageSize/4K each
}

// scan reads every region and collects the clean frames.
func (s *scanner) scan(ctx context.Context, regions []Region) error {
	ps := uint64(s.srv.PageSize)
	buf := make([]byte, s.chunk)
	pm := make([]uint64, s.chunk/pageSize4K)
	perFrame := int(ps / pageSize4K)
	start := time.Now()
	var read uint64
	for _, r := range regions {
		framesPerExtent := uint64(extentSize) / ps
		for va := (r.Start + ps - 1) &^ (ps - 1); va+ps <= r.End; {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := min(uint64(len(buf)), (r.End-va)&^(ps-1))
			got, err := s.mem.ReadAt(buf[:n], va)
			if err != nil {
				return err
			}
			got &^= int(ps - 1)
			if got == 0 { // an unmapped hole: step over one frame
				va += ps
				continue
			}
			if err := s.pm.Read(va, pm[:got/pageSize4K]); err != nil {
				return err
			}
			for off := 0; off < got; off += int(ps) {
				frame := buf[off : off+int(ps)]
				s.stats.Frames++
				if r.Descriptors > 0 && ((va+uint64(off)-r.Start)/ps)%framesPerExtent < uint64(r.Descriptors) {
					s.stats.Descriptors++
					continue
				}
				if isZero(frame) {
					s.stats.Zero++
					continue
				}
				spaceID, page := pageID(frame)
				sp := s.srv.Spaces[spaceID]
				if sp == nil || sp.Size > 0 && uint64(page) >= sp.Size/ps {
					s.stats.Unknown++
					continue
				}
				if sp.Skip != "" {
					// Checked before the checksum: an encrypted or compressed
					// page's checksum is computed on its disk form, not the frame.
					s.stats.SkipSpace++
					continue
				}
				s.stats.Pages++
				if !checksumOK(frame, sp.FullCRC32) {
					s.stats.Dirty++
					continue
				}
				s.stats.Clean++
				s.cands = append(s.cands, candidate{space: sp, page: page, lsn: frameLSN(frame), pfns: len(s.entries)})
				s.entries = append(s.entries, pm[off/pageSize4K:][:perFrame]...)
			}
			va += uint64(got)
			read += uint64(got)
			s.stats.PoolBytes += uint64(got)
			if err := s.pace(ctx, start, read); err != nil {
				return err
			}
		}
	}
	return nil
}

// pace sleeps until reading `read` bytes since start keeps to the rate.
func (s *scanner) pace(ctx context.Context, start time.Time, read uint64) error {
	if s.rate <= 0 {
		return nil
	}
	due := time.Duration(float64(read) / s.rate * float64(time.Second))
	return clock.Sleep(ctx, due-time.Since(start))
}

// refs turns the candidates into layout references: drops pages claimed by
// two frames and, if checkpoint > 0, pages changed at or after it; maps each
// 4 KiB to its frame number and disk offset.
//
// Why the checkpoint: InnoDB writes the checksum into the frame before the
// write reaches the disk, so a frame being flushed is valid but not yet on
// disk. Such a page is still on the flush list, and the checkpoint cannot
// pass its oldest change until the write completes; a page whose newest
// change (FIL_PAGE_LSN) lies below the checkpoint read after the scan was
// on disk in this version.
func (s *scanner) refs(dm *diskMap, checkpoint uint64) ([]layout.Ref, error) {
	claims := make(map[uint64]int, len(s.cands))
	for _, c := range s.cands {
		claims[uint64(c.space.ID)<<32|uint64(c.page)]++
	}
	ps := uint64(s.srv.PageSize)
	perFrame := int(ps / pageSize4K)
	var refs []layout.Ref
	var present, zeroPFN uint64
	for _, c := range s.cands {
		if claims[uint64(c.space.ID)<<32|uint64(c.page)] > 1 {
			s.stats.Duplicate++
			continue
		}
		if checkpoint > 0 && c.lsn >= checkpoint {
			s.stats.Unsettled++
			continue
		}
		fm := dm.file(c.space)
		if fm.err != nil {
			s.stats.NoFile++
			continue
		}
		for i, e := range s.entries[c.pfns : c.pfns+perFrame] {
			pfn, ok := PFN(e)
			if !ok {
				s.stats.NotPresent++
				continue
			}
			present++
			if pfn == 0 {
				zeroPFN++
				continue
			}
			off, ok := fm.offset(uint64(c.page)*ps + uint64(i)*pageSize4K)
			if !ok {
				s.stats.NoDisk++
				continue
			}
			refs = append(refs, layout.Ref{GuestPage: pfn, Disk: fm.disk, Offset: off})
		}
	}
	if present > 0 && zeroPFN == present {
		return nil, ErrNoPFN
	}
	// Two references to one frame number (memory deduplicated by KSM, or a
	// page moved between reads): neither can be trusted.
	slices.SortFunc(refs, func(a, b layout.Ref) int { return cmp.Compare(a.GuestPage, b.GuestPage) })
	out := refs[:0]
	for i := 0; i < len(refs); {
		j := i + 1
		for j < len(refs) && refs[j].GuestPage == refs[i].GuestPage {
			j++
		}
		if j-i == 1 {
			out = append(out, refs[i])
		} else {
			s.stats.SharedPFN += uint64(j - i)
		}
		i = j
	}
	return out, nil
}
