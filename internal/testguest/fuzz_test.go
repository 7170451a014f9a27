package testguest

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// FuzzVerify damages the metadata pages of a small database-mode guest
// (header, version table, descriptors, db table) with arbitrary bytes:
// verify must never panic, and must report the damage rather than accept
// it, unless the bytes written equal what was there.
func FuzzVerify(f *testing.F) {
	dir, err := os.MkdirTemp("/dev/shm", "testguest-fuzz-")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { os.RemoveAll(dir) })
	ram := filepath.Join(dir, "ram")
	p := Params{Size: 1 << 20, Seed: 5, Fill: 0.5, WriteRate: 1, ReadShare: 0.5,
		DB: DBParams{File: filepath.Join(dir, "data"), Pages: 64, Frames: 16, ReadRate: 1}}
	if err := Create(ram, p); err != nil {
		f.Fatal(err)
	}
	g, err := Open(ram)
	if err != nil {
		f.Fatal(err)
	}
	for d := range int64(20) {
		if _, err := g.readDB(d, func() int64 { return d % 16 }); err != nil {
			f.Fatal(err)
		}
		if d%3 == 0 {
			g.modifyFrame(d%16, d, modifySteps)
		}
	}
	meta := g.geo.dataStart * PageSize // header and tables
	g.Close()
	base, err := os.ReadFile(ram)
	if err != nil {
		f.Fatal(err)
	}
	if r, err := Verify(ram); err != nil || !r.OK() {
		f.Fatalf("base guest does not verify: %v %v", err, r.Mismatches)
	}
	f.Add(uint32(0), []byte{1})
	f.Add(uint32(2048), []byte{1, 0, 0, 0, 0, 0, 0, 0, 1})         // counter, intent
	f.Add(uint32(2112), []byte{1, 0, 0, 0, 0, 0, 0, 0, 200, 0, 0}) // db intent
	f.Add(uint32(144), []byte{0, 0, 0, 0, 0, 0, 0xf8, 0x7f})       // NaN hot share
	f.Add(uint32(PageSize+8), []byte{9})                           // a version
	tmp := filepath.Join(dir, "t")
	f.Fuzz(func(t *testing.T, off uint32, b []byte) {
		o := int64(off) % meta
		n := min(int64(len(b)), meta-o)
		c := append([]byte(nil), base...)
		copy(c[o:o+n], b)
		if err := os.WriteFile(tmp, c, 0o600); err != nil {
			t.Fatal(err)
		}
		r, err := Verify(tmp)
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return // the data file's path was damaged: it cannot be opened
		}
		if err != nil {
			t.Fatal(err)
		}
		if r.OK() && string(c) != string(base) && stateOnly(o, n) {
			t.Fatalf("%d bytes at %d changed and verify found nothing", n, o)
		}
	})
}

// stateOnly reports whether [o, o+n) lies in the guest's state proper: the
// write and modification counters and the tables. Any change there must be
// caught. Elsewhere in page 0 a change may be consistent (a workload
// parameter still in range; an intent marked active after its operation
// completed, as a stop just before the clear leaves it), so only the
// absence of panics is checked.
func stateOnly(o, n int64) bool {
	in := func(a, b int64) bool { return o >= a && o+n <= b }
	return in(offCounter, offCounter+8) || in(offModCount, offModCount+8) || in(PageSize, 1<<62)
}
