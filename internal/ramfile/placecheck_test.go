package ramfile

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func TestPlaceCheck(t *testing.T) {
	dir := t.TempDir()
	src := make([]byte, 4*DiffPage)
	for i := range src {
		src[i] = byte(i / DiffPage) // page 0 is zero, pages 1-3 are not
	}
	a := filepath.Join(dir, "a")
	if err := os.WriteFile(a, src, 0o600); err != nil {
		t.Fatal(err)
	}
	c := NewPlaceCheck([]string{a})
	var wg sync.WaitGroup
	for p := uint64(0); p < 4; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			switch p {
			case 0:
				c.Placed(0, p, nil) // a zero page, placed as one
			case 2:
				wrong := make([]byte, DiffPage)
				c.Placed(0, p, wrong)
			default:
				c.Placed(0, p, src[p*DiffPage:(p+1)*DiffPage])
			}
		}()
	}
	wg.Wait()
	r, err := c.Result()
	if err != nil {
		t.Fatal(err)
	}
	if r.Checked != 4 || r.Differ != 1 || r.First != 2*DiffPage || r.FirstBlock != 0 {
		t.Fatalf("got %+v, want 4 checked, 1 differing at page 2", r)
	}
	// A Diff that compared pages 1-2 and 4-5 (past the source's end)
	// counted pages 1 and 2 too, page 2 differing.
	if c, d := c.Overlap(0, []Extent{{Off: DiffPage, Len: 2 * DiffPage}, {Off: 4 * DiffPage, Len: 2 * DiffPage}}); c != 2 || d != 1 {
		t.Fatalf("overlap with pages 1-2: %d checked, %d differing; want 2, 1", c, d)
	}
	if c, d := c.Overlap(1, []Extent{{Off: 0, Len: DiffPage}}); c != 0 || d != 0 {
		t.Fatalf("overlap in a block it does not have: %d, %d", c, d)
	}
}

func TestPlaceCheckErrors(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a")
	if err := os.WriteFile(a, make([]byte, DiffPage), 0o600); err != nil {
		t.Fatal(err)
	}
	c := NewPlaceCheck([]string{a})
	c.Placed(1, 0, nil) // no such block
	c.Placed(0, 5, nil) // past the file's end
	r, err := c.Result()
	if err == nil || r.Checked != 0 {
		t.Fatalf("got %+v, %v: want nothing checked and an error", r, err)
	}
	missing := NewPlaceCheck([]string{filepath.Join(dir, "gone")})
	missing.Placed(0, 0, nil)
	if _, err := missing.Result(); err == nil {
		t.Fatal("a missing source file reported no error")
	}
}
