package testguest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// run runs g's workload in this process for d.
func run(t *testing.T, g *Guest, d time.Duration) {
	t.Helper()
	if err := g.Run(context.Background(), RunOptions{Duration: d}); err != nil {
		t.Fatal(err)
	}
}

func mustVerify(t *testing.T, paths ...string) Report {
	t.Helper()
	r, err := Verify(paths...)
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK() {
		t.Fatalf("verify %s: %v", paths, (&MismatchError{Report: r}).Error())
	}
	return r
}

func mustMismatch(t *testing.T, paths ...string) Report {
	t.Helper()
	r, err := Verify(paths...)
	if err != nil {
		t.Fatal(err)
	}
	if r.OK() {
		t.Fatalf("verify %s found nothing wrong", paths)
	}
	t.Logf("%s", (&MismatchError{Report: r}).Error())
	return r
}

// readRAM opens a RAM file read-only for inspecting its tables.
func readRAM(t *testing.T, path string) *Guest {
	t.Helper()
	g, err := mapGuest([]string{path}, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.attach(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// withPage writes into dst a copy of base whose RAM page n comes from src.
func withPage(t *testing.T, dst string, base, src []byte, n int64) {
	t.Helper()
	b := append([]byte(nil), base...)
	copy(b[n*PageSize:(n+1)*PageSize], src[n*PageSize:(n+1)*PageSize])
	writeFile(t, dst, b)
}

func onlyMismatch(t *testing.T, r Report, page int64, region, got string) {
	t.Helper()
	if len(r.Mismatches) != 1 || r.More != 0 {
		t.Fatalf("want exactly one mismatch, got %d (+%d): %v", len(r.Mismatches), r.More, r.Mismatches)
	}
	m := r.Mismatches[0]
	if m.Page != page || m.Region != region || !strings.Contains(m.Got, got) {
		t.Fatalf("want %s page %d found %q, got %v", region, page, got, m)
	}
}

func TestVerifyCatchesLostStaleFutureAndCorruptPages(t *testing.T) {
	dir := shmDir(t)
	ram := filepath.Join(dir, "ram")
	p := Params{Size: 16 << 20, Seed: 3, Fill: 0.5, WriteRate: 100000, Hot: 0.2, HotShare: 0.8, ReadShare: 0.2}
	if err := Create(ram, p); err != nil {
		t.Fatal(err)
	}
	g, err := Open(ram)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	run(t, g, 100*time.Millisecond)
	a := readFile(t, ram)
	run(t, g, 100*time.Millisecond)
	b := readFile(t, ram)
	ra, rb := mustVerify(t, ram), Report{}
	writeFile(t, filepath.Join(dir, "a"), a)
	writeFile(t, filepath.Join(dir, "b"), b)
	mustVerify(t, filepath.Join(dir, "a"))
	rb = mustVerify(t, filepath.Join(dir, "b"))
	if rb.Counter <= 10000 || ra.Counter != rb.Counter {
		t.Fatalf("counter after runs: a %d, b %d (want > 10000 and equal to the live RAM's)", ra.Counter, rb.Counter)
	}

	ga, gb := readRAM(t, filepath.Join(dir, "a")), readRAM(t, filepath.Join(dir, "b"))
	geo := gb.geo
	// A data page written between the snapshots, at a version > 0 in both.
	changed := int64(-1)
	for i := range geo.dataPages {
		if va, vb := ga.ver(i).Load(), gb.ver(i).Load(); va > 0 && vb > va {
			changed = i
			break
		}
	}
	if changed < 0 {
		t.Fatal("no data page changed between the snapshots")
	}
	n := geo.dataStart + changed
	tmp := filepath.Join(dir, "t")

	t.Run("flipped byte", func(t *testing.T) {
		c := append([]byte(nil), b...)
		c[n*PageSize+777] ^= 0x10
		writeFile(t, tmp, c)
		onlyMismatch(t, mustMismatch(t, tmp), n, "data", "1 of 512 words corrupt")
	})
	t.Run("stale page", func(t *testing.T) {
		withPage(t, tmp, b, a, n)
		onlyMismatch(t, mustMismatch(t, tmp), n, "data", "(stale)")
	})
	t.Run("page from the future", func(t *testing.T) {
		withPage(t, tmp, a, b, n)
		onlyMismatch(t, mustMismatch(t, tmp), n, "data", "(from the future)")
	})
	t.Run("lost page", func(t *testing.T) {
		c := append([]byte(nil), b...)
		clear(c[n*PageSize : (n+1)*PageSize])
		writeFile(t, tmp, c)
		onlyMismatch(t, mustMismatch(t, tmp), n, "data", "zeros (version 0) (stale)")
	})
	t.Run("page from elsewhere", func(t *testing.T) {
		c := append([]byte(nil), b...)
		other := n + 1
		for gb.ver(other-geo.dataStart).Load() == 0 {
			other++
		}
		copy(c[n*PageSize:(n+1)*PageSize], c[other*PageSize:])
		writeFile(t, tmp, c)
		onlyMismatch(t, mustMismatch(t, tmp), n, "data", "a page from elsewhere")
	})
	t.Run("stale version-table page", func(t *testing.T) {
		tp := gb.tablePageOf(changed)
		withPage(t, tmp, b, a, tp)
		r := mustMismatch(t, tmp)
		var sum, future int
		for _, m := range r.Mismatches {
			switch {
			case m.Region == "header" && strings.Contains(m.Want, "sum of versions"):
				sum++
			case m.Region == "data" && strings.Contains(m.Got, "(from the future)") &&
				gb.tablePageOf(m.Page-geo.dataStart) == tp:
				future++
			default:
				t.Errorf("unexpected mismatch %v", m)
			}
		}
		if sum != 1 || future == 0 {
			t.Fatalf("want the counter check and pages from the future, got %d and %d", sum, future)
		}
	})
	t.Run("stale page 0", func(t *testing.T) {
		withPage(t, tmp, b, a, 0)
		r := mustMismatch(t, tmp)
		if r.Mismatches[0].Region != "header" {
			t.Fatalf("want a header mismatch, got %v", r.Mismatches)
		}
	})
	t.Run("lost page 0", func(t *testing.T) {
		c := append([]byte(nil), b...)
		clear(c[:PageSize])
		writeFile(t, tmp, c)
		r := mustMismatch(t, tmp)
		onlyMismatch(t, r, 0, "header", "bad magic")
	})
}

func TestVerifyCatchesPoolDescriptorAndDiskDamage(t *testing.T) {
	dir := shmDir(t)
	ram := filepath.Join(dir, "ram")
	p := smallDBParams(dir)
	// More frames than db pages: nothing is ever evicted, so without
	// flushes the data file stays as it is between the two snapshots.
	p.DB.Pages, p.DB.Frames = 512, 1024
	if err := Create(ram, p); err != nil {
		t.Fatal(err)
	}
	g, err := Open(ram)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	run(t, g, 200*time.Millisecond)
	g.p.DB.FlushRate = 0
	run(t, g, 100*time.Millisecond)
	a := readFile(t, ram)
	disk := readFile(t, p.DB.File)
	run(t, g, 100*time.Millisecond)
	b := readFile(t, ram)
	if d := readFile(t, p.DB.File); string(d) != string(disk) {
		t.Fatal("data file changed without flushes")
	}
	r := mustVerify(t, ram)
	if r.DBFilePages != p.DB.Pages || r.Modifies == 0 {
		t.Fatalf("report %+v: want %d db pages checked and modifications", r, p.DB.Pages)
	}
	tmp := filepath.Join(dir, "t")
	gb := func() *Guest { writeFile(t, tmp, b); return readRAM(t, tmp) }()

	t.Run("flipped byte in a frame", func(t *testing.T) {
		k := int64(-1)
		for f := range gb.geo.frames {
			if gb.descPage(f).Load() != 0 {
				k = f
				break
			}
		}
		n := gb.piecePage(k, 2)
		c := append([]byte(nil), b...)
		c[n*PageSize+100] ^= 1
		writeFile(t, tmp, c)
		onlyMismatch(t, mustMismatch(t, tmp), n, "pool", "corrupt")
	})
	t.Run("corrupt data file page", func(t *testing.T) {
		writeFile(t, tmp, b)
		bad := append([]byte(nil), disk...)
		bad[37*DBPageSize+3*PageSize+1000] ^= 1
		writeFile(t, p.DB.File, bad)
		defer writeFile(t, p.DB.File, disk)
		onlyMismatch(t, mustMismatch(t, tmp), 37, "disk", "with 1 of 512 words corrupt")
	})
	t.Run("stale descriptor page", func(t *testing.T) {
		var stale int64 = -1
		for n := gb.geo.descStart; n < gb.geo.descStart+gb.geo.descPages; n++ {
			if string(a[n*PageSize:(n+1)*PageSize]) != string(b[n*PageSize:(n+1)*PageSize]) {
				stale = n
				break
			}
		}
		if stale < 0 {
			t.Fatal("no descriptor page changed between the snapshots")
		}
		withPage(t, tmp, b, a, stale)
		r := mustMismatch(t, tmp)
		var sum bool
		for _, m := range r.Mismatches {
			sum = sum || (m.Region == "header" && strings.Contains(m.Want, "modification counter"))
		}
		if !sum {
			t.Fatalf("the modification sum did not catch a stale descriptor page: %v", r.Mismatches)
		}
	})
	t.Run("stale pool page", func(t *testing.T) {
		var stale int64 = -1
		for n := gb.geo.poolStart; n < gb.geo.pages; n++ {
			if string(a[n*PageSize:(n+1)*PageSize]) != string(b[n*PageSize:(n+1)*PageSize]) {
				stale = n
				break
			}
		}
		withPage(t, tmp, b, a, stale)
		onlyMismatch(t, mustMismatch(t, tmp), stale, "pool", "(stale)")
	})
}

func TestHashRAMMatchesTheMappedRAM(t *testing.T) {
	dir := shmDir(t)
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	p := DefaultParams()
	p.Size, p.Fill = 8<<20, 0.5
	if err := CreateFiles([]string{a, b}, p); err != nil {
		t.Fatal(err)
	}
	g, err := Open(a, b)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	h, err := HashRAM(a, b)
	if err != nil {
		t.Fatal(err)
	}
	if h != hashBytes(g.mem) {
		t.Fatalf("HashRAM %s, hash of the mapping %s", h, hashBytes(g.mem))
	}
	if h2, _ := HashRAM(b, a); h2 == h {
		t.Fatal("the digest does not depend on the files' order")
	}
	g.writeData(0, writeSteps)
	if h3, _ := HashRAM(a, b); h3 == h {
		t.Fatal("the digest did not change with a page")
	}
}
