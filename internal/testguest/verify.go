package testguest

import (
	"errors"
	"fmt"
)

// maxListed bounds the mismatches a Report lists; the rest are counted.
const maxListed = 1000

// Report is the outcome of verifying a guest's RAM (and data file).
type Report struct {
	// Pages is the number of RAM pages checked (all of them when the
	// header is readable).
	Pages int64
	// Counter is the write counter in page 0.
	Counter uint64
	// Modifies is the buffer pool's modification counter in page 0.
	Modifies uint64
	// DBFilePages is the number of data-file pages checked.
	DBFilePages int64
	// Interrupted names the operations a stop interrupted (to be redone),
	// e.g. "write of page 12 to version 3"; empty when none was.
	Interrupted []string
	// Mismatches lists pages that disagree with the guest's state, at most
	// maxListed; More counts the rest.
	Mismatches []Mismatch
	More       int
}

// OK reports whether the guest's state is consistent.
func (r *Report) OK() bool { return len(r.Mismatches) == 0 && r.More == 0 }

// Mismatch is one page that is not what the guest's state says.
type Mismatch struct {
	// Page is the RAM page (byte offset / 4096 in the RAM file), or for
	// Region "disk" the 16 KiB page of the data file.
	Page int64
	// Region is "header", "table", "data", "desc", "dbtable", "pool" or
	// "disk".
	Region string
	Want   string
	Got    string
}

func (m Mismatch) String() string {
	return fmt.Sprintf("%s page %d: want %s, found %s", m.Region, m.Page, m.Want, m.Got)
}

func (r *Report) add(page int64, region, want, got string) {
	if len(r.Mismatches) >= maxListed {
		r.More++
		return
	}
	r.Mismatches = append(r.Mismatches, Mismatch{Page: page, Region: region, Want: want, Got: got})
}

// Verify checks a test guest's RAM file(s) offline (the guest stopped or
// gone) and, in database mode, its data file. The error is for files that
// cannot be read; an inconsistent guest, including an unreadable header, is
// a Report that is not OK.
func Verify(paths ...string) (Report, error) {
	g, err := mapGuest(paths, false)
	if err != nil {
		return Report{}, err
	}
	defer g.Close()
	if err := g.attach(); err != nil {
		var me *MismatchError
		switch {
		case errors.As(err, &me):
			return me.Report, nil
		case errors.Is(err, ErrNotGuest):
			var r Report
			r.add(0, "header", "a test guest header", err.Error())
			return r, nil
		}
		return Report{}, err
	}
	return g.verify()
}

// verify checks every invariant of the RAM, allowing for the one data write
// and the one buffer-pool operation a stop may have interrupted. It reads
// every page once.
func (g *Guest) verify() (Report, error) {
	r := Report{Pages: g.geo.pages, Counter: g.h.load(offCounter), Modifies: g.h.load(offModCount)}
	g.verifyData(&r)
	if g.geo.frames > 0 {
		if err := g.verifyDB(&r); err != nil {
			return r, err
		}
	}
	return r, nil
}

// checkIntents checks only that the intent records in page 0 name pages,
// frames and versions that exist: enough for redo to be safe when the
// full verify is skipped.
func (g *Guest) checkIntents() Report {
	var r Report
	g.dataIntent(&r)
	if g.geo.frames > 0 {
		g.poolIntent(&r)
	}
	return r
}

// dataIntent reads the write intent, reports it if malformed (then it is
// ignored) and records it as interrupted if active.
func (g *Guest) dataIntent(r *Report) (active uint64, ip int64, iv, ic uint64) {
	active = g.h.load(offIntent)
	ip, iv, ic = int64(g.h.load(offIntentPage)), g.h.load(offIntentVer), g.h.load(offIntentCnt)
	switch {
	case active > 1:
		r.add(0, "header", "write intent 0 or 1", fmt.Sprint(active))
		active = 0
	case active == 1 && (ip < 0 || ip >= g.geo.dataPages || iv == 0 || iv >= 1<<32):
		r.add(0, "header", "a write intent naming a data page and a version > 0", fmt.Sprintf("page %d version %d", ip, iv))
		active = 0
	case active == 1:
		r.Interrupted = append(r.Interrupted, fmt.Sprintf("write of page %d to version %d", g.geo.dataStart+ip, iv))
	}
	return active, ip, iv, ic
}

func (g *Guest) verifyData(r *Report) {
	geo := g.geo
	active, ip, iv, ic := g.dataIntent(r)
	wantSum := r.Counter
	var sum uint64
	for i := range geo.dataPages {
		v := g.ver(i).Load()
		sum += uint64(v)
		n := geo.dataStart + i
		page := g.page(n)
		if active == 1 && i == ip {
			switch uint64(v) {
			case iv - 1:
				if ic != r.Counter {
					r.add(0, "header", fmt.Sprintf("counter %d (as the intent says)", ic), fmt.Sprint(r.Counter))
				}
				if !pageIsEither(page, dataTag, uint64(n), v, uint32(iv)) {
					r.add(n, "data", fmt.Sprintf("versions %d and %d mixed (write interrupted)", v, iv), describe(page, dataTag, uint64(n), v))
				}
				wantSum = ic
			case iv:
				if r.Counter != ic && r.Counter != ic+1 {
					r.add(0, "header", fmt.Sprintf("counter %d or %d (as the intent says)", ic, ic+1), fmt.Sprint(r.Counter))
				}
				if !pageIs(page, dataTag, uint64(n), v) {
					r.add(n, "data", fmt.Sprintf("version %d (table page %d)", v, g.tablePageOf(i)), describe(page, dataTag, uint64(n), v))
				}
				wantSum = ic + 1
			default:
				r.add(g.tablePageOf(i), "table", fmt.Sprintf("version %d or %d for page %d (being written)", iv-1, iv, n), fmt.Sprint(v))
			}
			continue
		}
		if !pageIs(page, dataTag, uint64(n), v) {
			r.add(n, "data", fmt.Sprintf("version %d (table page %d)", v, g.tablePageOf(i)), describe(page, dataTag, uint64(n), v))
		}
	}
	if sum != wantSum {
		r.add(0, "header", fmt.Sprintf("write counter equal to the sum of versions %d", sum),
			fmt.Sprintf("%d (a version-table page or page 0 is stale or from the future)", r.Counter))
	}
	// Table entries past the last data page are never written.
	for off := geo.tableStart*PageSize + 4*geo.dataPages; off < (geo.tableStart+geo.tablePages)*PageSize; off += 4 {
		if g.u32(off).Load() != 0 {
			r.add(off/PageSize, "table", "zero past the last data page", fmt.Sprintf("%d at byte %d", g.u32(off).Load(), off))
			break
		}
	}
}

func (g *Guest) tablePageOf(i int64) int64 { return g.geo.tableStart + i*4/PageSize }
func (g *Guest) descPageOf(k int64) int64  { return g.geo.descStart + k*descSize/PageSize }
func (g *Guest) dbtPageOf(d int64) int64   { return g.geo.dbtStart + d*dbtSize/PageSize }

// poolIntent is dataIntent for the buffer-pool intent.
func (g *Guest) poolIntent(r *Report) (op uint64, ok, od int64, ov, oprev uint32) {
	geo := g.geo
	op = g.h.load(offDBOp)
	ok, od, ov, oprev = g.dbIntent()
	if op > dbOpFlush || (op != dbOpNone && (ok < 0 || ok >= geo.frames || od < 0 || od >= geo.dbPages || ov == 0)) ||
		(op == dbOpLoad && (int64(oprev) > geo.dbPages || int64(oprev) == od+1)) {
		r.add(0, "header", "a buffer-pool intent naming a frame, a db page and a version", fmt.Sprintf("op %d frame %d page %d version %d prev %d", op, ok, od, ov, oprev))
		op = dbOpNone
	}
	switch op {
	case dbOpLoad:
		r.Interrupted = append(r.Interrupted, fmt.Sprintf("load of db page %d version %d into frame %d", od, ov, ok))
	case dbOpModify:
		r.Interrupted = append(r.Interrupted, fmt.Sprintf("modification of db page %d to version %d in frame %d", od, ov, ok))
	case dbOpFlush:
		r.Interrupted = append(r.Interrupted, fmt.Sprintf("flush of db page %d version %d from frame %d", od, ov, ok))
	}
	return op, ok, od, ov, oprev
}

func (g *Guest) verifyDB(r *Report) error {
	geo := g.geo
	op, ok, od, ov, oprev := g.poolIntent(r)
	is := func(o uint64, k int64) bool { return op == o && k == ok }

	// Frames: content, back pointer, dirty versus version on disk.
	var effSum uint64
	for k := range geo.frames {
		pg, v, dirty := int64(g.descPage(k).Load()), g.descVer(k).Load(), g.descDirty(k).Load()
		if pad := g.u32(g.geo.descStart*PageSize + descSize*k + 12).Load(); pad != 0 {
			r.add(g.descPageOf(k), "desc", fmt.Sprintf("frame %d descriptor's unused word 0", k), fmt.Sprint(pad))
		}
		if pg == 0 {
			if is(dbOpLoad, k) {
				continue // mid-read: any mix of old and new content
			}
			for i := range 4 {
				if n := g.piecePage(k, i); !pageIs(g.page(n), 0, 0, 0) {
					r.add(n, "pool", fmt.Sprintf("zeros (frame %d piece %d is free)", k, i), describe(g.page(n), 0, 0, 0))
				}
			}
			continue
		}
		d := pg - 1
		if d >= geo.dbPages || dirty > 1 || v == 0 {
			r.add(g.descPageOf(k), "desc", fmt.Sprintf("frame %d descriptor with a db page < %d", k, geo.dbPages), fmt.Sprintf("page %d version %d dirty %d", d, v, dirty))
			continue
		}
		g.verifyFrame(r, k, d, v, is(dbOpModify, k), ov)
		if f := int64(g.frameOf(d).Load()); f != k+1 && !(is(dbOpLoad, k) && d == od && f == 0) {
			r.add(g.dbtPageOf(d), "dbtable", fmt.Sprintf("db page %d in frame %d (its descriptor says)", d, k), fmt.Sprintf("frame %d", f-1))
		}
		dv := g.diskVer(d).Load()
		switch {
		case dirty == 1 && v > dv, dirty == 0 && v == dv:
		case dirty == 1 && v == dv && is(dbOpFlush, k):
		case dirty == 0 && v == dv+1 && is(dbOpModify, k):
		default:
			r.add(g.descPageOf(k), "desc", fmt.Sprintf("frame %d (db page %d version %d, dirty %d) consistent with version %d on disk", k, d, v, dirty, dv), "a stale or future descriptor or db table")
		}
	}

	// Db pages: residency, disk content, modification sum. The file is
	// read 1 MiB at a time: it may be many GiB.
	const chunk = 64
	chunkBuf := make([]byte, chunk*DBPageSize)
	for d := range geo.dbPages {
		if d%chunk == 0 {
			n := min(chunk, geo.dbPages-d)
			if _, err := g.db.ReadAt(chunkBuf[:n*DBPageSize], d*DBPageSize); err != nil {
				return fmt.Errorf("read db pages %d-%d of %s: %w", d, d+n-1, g.p.DB.File, err)
			}
		}
		buf := chunkBuf[d%chunk*DBPageSize : (d%chunk+1)*DBPageSize]
		dv, f := g.diskVer(d).Load(), int64(g.frameOf(d).Load())
		eff := dv
		if f != 0 {
			switch {
			case f > geo.frames:
				r.add(g.dbtPageOf(d), "dbtable", fmt.Sprintf("db page %d in a frame < %d", d, geo.frames), fmt.Sprint(f-1))
			case int64(g.descPage(f-1).Load()) == d+1:
				eff = g.descVer(f - 1).Load()
			case op == dbOpLoad && f-1 == ok && d+1 == int64(oprev):
				// Being evicted: the frame was freed, the back pointer not yet.
			default:
				r.add(g.dbtPageOf(d), "dbtable", fmt.Sprintf("db page %d in frame %d", d, f-1), fmt.Sprintf("frame %d holding db page %d", f-1, int64(g.descPage(f-1).Load())-1))
			}
		}
		if dv == 0 {
			r.add(g.dbtPageOf(d), "dbtable", fmt.Sprintf("db page %d with a version on disk", d), "version 0")
			continue
		}
		effSum += uint64(eff - 1)
		r.DBFilePages++
		for i := range 4 {
			piece, id := buf[i*PageSize:(i+1)*PageSize], uint64(d*4+int64(i))
			if op == dbOpFlush && d == od && dv != ov {
				if !pageIsEither(piece, dbTag, id, dv, ov) {
					r.add(d, "disk", fmt.Sprintf("piece %d at version %d or %d (flush interrupted)", i, dv, ov), describe(piece, dbTag, id, dv))
				}
				continue
			}
			if !pageIs(piece, dbTag, id, dv) {
				r.add(d, "disk", fmt.Sprintf("piece %d at version %d (db table page %d)", i, dv, g.dbtPageOf(d)), describe(piece, dbTag, id, dv))
			}
		}
	}

	wantSum := r.Modifies
	if op == dbOpModify {
		c := g.h.load(offDBCnt)
		wantSum = c
		if g.descVer(ok).Load() == ov {
			wantSum = c + 1
		}
		if r.Modifies != c && r.Modifies != c+1 {
			r.add(0, "header", fmt.Sprintf("modification counter %d or %d (as the intent says)", c, c+1), fmt.Sprint(r.Modifies))
		}
	}
	if effSum != wantSum {
		r.add(0, "header", fmt.Sprintf("modification counter equal to the sum of db page versions - 1 = %d", effSum),
			fmt.Sprintf("%d (a descriptor or db table page is stale or from the future)", r.Modifies))
	}
	for off := geo.descStart*PageSize + descSize*geo.frames; off < (geo.descStart+geo.descPages)*PageSize; off += 4 {
		if g.u32(off).Load() != 0 {
			r.add(off/PageSize, "desc", "zero past the last frame", fmt.Sprintf("%d at byte %d", g.u32(off).Load(), off))
			break
		}
	}
	for off := geo.dbtStart*PageSize + dbtSize*geo.dbPages; off < (geo.dbtStart+geo.dbtPages)*PageSize; off += 4 {
		if g.u32(off).Load() != 0 {
			r.add(off/PageSize, "dbtable", "zero past the last db page", fmt.Sprintf("%d at byte %d", g.u32(off).Load(), off))
			break
		}
	}
	return nil
}

// verifyFrame checks frame k's four pieces hold db page d at version v, or,
// while a modification to version nv is interrupted, a mix of v and nv.
func (g *Guest) verifyFrame(r *Report, k, d int64, v uint32, modifying bool, nv uint32) {
	for i := range 4 {
		n, id := g.piecePage(k, i), uint64(d*4+int64(i))
		page := g.page(n)
		if modifying && v+1 == nv {
			if !pageIsEither(page, dbTag, id, v, nv) {
				r.add(n, "pool", fmt.Sprintf("frame %d piece %d = db page %d at version %d or %d (modification interrupted)", k, i, d, v, nv), describe(page, dbTag, id, v))
			}
			continue
		}
		if !pageIs(page, dbTag, id, v) {
			r.add(n, "pool", fmt.Sprintf("frame %d piece %d = db page %d version %d (descriptor page %d)", k, i, d, v, g.descPageOf(k)), describe(page, dbTag, id, v))
		}
	}
}
