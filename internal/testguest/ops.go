package testguest

import "fmt"

// Every state change is a short sequence of atomic stores around one bulk
// write, announced by an intent record in page 0. Stopped after any store,
// the RAM is consistent under verify's rules, and redo finishes the change
// by repeating it (each step sets, never adds, so repeating is harmless).
//
// The step counts below let tests stop an operation after each step; the
// workload always runs all of them.
const (
	writeSteps  = 5
	loadSteps   = 7
	modifySteps = 5
	flushSteps  = 4
)

// writeData writes a new version of data page i: intent, content, version
// table, counter, intent cleared.
func (g *Guest) writeData(i int64, steps int) {
	v := g.ver(i).Load() + 1
	c := g.h.load(offCounter)
	g.h.store(offIntentPage, uint64(i))
	g.h.store(offIntentVer, uint64(v))
	g.h.store(offIntentCnt, c)
	g.h.store(offIntent, 1)
	if steps > 1 {
		g.finishWrite(i, v, c, steps-1)
	}
}

func (g *Guest) finishWrite(i int64, v uint32, c uint64, steps int) {
	for s := range steps {
		switch s {
		case 0:
			fillPage(g.dataPage(i), dataTag, uint64(g.geo.dataStart+i), v)
		case 1:
			g.ver(i).Store(v)
		case 2:
			g.h.store(offCounter, c+1)
		case 3:
			g.h.store(offIntent, 0)
		}
	}
}

// readData checks data page i against its version, as a guest reading its
// memory after a migration would notice wrong data.
func (g *Guest) readData(i int64) error {
	v := g.ver(i).Load()
	n := g.geo.dataStart + i
	if pageIs(g.page(n), dataTag, uint64(n), v) {
		return nil
	}
	return &MismatchError{Report: Report{Mismatches: []Mismatch{{
		Page: n, Region: "data",
		Want: fmt.Sprintf("version %d", v),
		Got:  describe(g.page(n), dataTag, uint64(n), v),
	}}}}
}

// loadFrame reads db page d from the data file into frame k, which must be
// free or clean. The frame is marked free first, so a stop during the read
// never leaves a descriptor claiming half-read content.
func (g *Guest) loadFrame(k, d int64, steps int) error {
	g.h.store(offDBFrame, uint64(k))
	g.h.store(offDBPage, uint64(d))
	g.h.store(offDBVer, uint64(g.diskVer(d).Load()))
	g.h.store(offDBPrev, uint64(g.descPage(k).Load()))
	g.h.store(offDBOp, dbOpLoad)
	return g.finishLoad(steps - 1)
}

func (g *Guest) finishLoad(steps int) error {
	k, d, v, prev := g.dbIntent()
	for s := range steps {
		switch s {
		case 0:
			g.descPage(k).Store(0)
		case 1:
			if prev != 0 {
				g.frameOf(int64(prev - 1)).Store(0)
			}
		case 2:
			if err := preadFull(g.db, g.pieces(k), d*DBPageSize); err != nil {
				return err
			}
			if !g.frameIs(k, d, v) {
				return g.frameMismatch("db page read from "+g.p.DB.File, k, d, v)
			}
		case 3:
			g.descVer(k).Store(v)
			g.descDirty(k).Store(0)
			g.descPage(k).Store(uint32(d + 1))
		case 4:
			g.frameOf(d).Store(uint32(k + 1))
			g.h.store(offLoadCount, g.h.load(offLoadCount)+1)
		case 5:
			g.h.store(offDBOp, dbOpNone)
		}
	}
	return nil
}

// modifyFrame gives resident db page d in frame k a new in-memory version.
func (g *Guest) modifyFrame(k, d int64, steps int) {
	g.h.store(offDBFrame, uint64(k))
	g.h.store(offDBPage, uint64(d))
	g.h.store(offDBVer, uint64(g.descVer(k).Load()+1))
	g.h.store(offDBCnt, g.h.load(offModCount))
	g.h.store(offDBOp, dbOpModify)
	g.finishModify(steps - 1)
}

func (g *Guest) finishModify(steps int) {
	k, d, v, _ := g.dbIntent()
	c := g.h.load(offDBCnt)
	for s := range steps {
		switch s {
		case 0:
			g.fillFrame(k, d, v)
		case 1:
			g.descVer(k).Store(v)
			g.descDirty(k).Store(1)
		case 2:
			g.h.store(offModCount, c+1)
		case 3:
			g.h.store(offDBOp, dbOpNone)
		}
	}
}

// flushFrame writes dirty frame k back to the data file.
func (g *Guest) flushFrame(k int64, steps int) error {
	g.h.store(offDBFrame, uint64(k))
	g.h.store(offDBPage, uint64(g.descPage(k).Load()-1))
	g.h.store(offDBVer, uint64(g.descVer(k).Load()))
	g.h.store(offDBOp, dbOpFlush)
	return g.finishFlush(steps - 1)
}

func (g *Guest) finishFlush(steps int) error {
	k, d, v, _ := g.dbIntent()
	for s := range steps {
		switch s {
		case 0:
			if err := pwriteFull(g.db, g.pieces(k), d*DBPageSize); err != nil {
				return err
			}
		case 1:
			g.diskVer(d).Store(v)
			g.descDirty(k).Store(0)
			g.h.store(offFlushCount, g.h.load(offFlushCount)+1)
		case 2:
			g.h.store(offDBOp, dbOpNone)
		}
	}
	return nil
}

func (g *Guest) dbIntent() (k, d int64, v uint32, prev uint32) {
	return int64(g.h.load(offDBFrame)), int64(g.h.load(offDBPage)), uint32(g.h.load(offDBVer)), uint32(g.h.load(offDBPrev))
}

// readDB reads db page d as the database would: from its frame if resident
// (checking the frame), else into a frame, evicting (and first flushing) a
// victim. It returns the frame.
func (g *Guest) readDB(d int64, victim func() int64) (int64, error) {
	if f := int64(g.frameOf(d).Load()); f != 0 {
		k := f - 1
		v := g.descVer(k).Load()
		if !g.frameIs(k, d, v) {
			return 0, g.frameMismatch("frame", k, d, v)
		}
		return k, nil
	}
	k := victim()
	if g.descDirty(k).Load() != 0 {
		if err := g.flushFrame(k, flushSteps); err != nil {
			return 0, err
		}
	}
	return k, g.loadFrame(k, d, loadSteps)
}

func (g *Guest) frameMismatch(what string, k, d int64, v uint32) error {
	var r Report
	for i := range 4 {
		n := g.piecePage(k, i)
		id := uint64(d*4 + int64(i))
		if !pageIs(g.page(n), dbTag, id, v) {
			r.Mismatches = append(r.Mismatches, Mismatch{
				Page: n, Region: "pool",
				Want: fmt.Sprintf("%s: frame %d piece %d = db page %d version %d", what, k, i, d, v),
				Got:  describe(g.page(n), dbTag, id, v),
			})
		}
	}
	return &MismatchError{Report: r}
}

// redo finishes the operations a stop interrupted. Call it only after
// verify found the RAM consistent.
func (g *Guest) redo() error {
	if g.h.load(offIntent) != 0 {
		i := int64(g.h.load(offIntentPage))
		g.finishWrite(i, uint32(g.h.load(offIntentVer)), g.h.load(offIntentCnt), writeSteps-1)
	}
	switch g.h.load(offDBOp) {
	case dbOpLoad:
		return g.finishLoad(loadSteps - 1)
	case dbOpModify:
		g.finishModify(modifySteps - 1)
	case dbOpFlush:
		return g.finishFlush(flushSteps - 1)
	}
	return nil
}
