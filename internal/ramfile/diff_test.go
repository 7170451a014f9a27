package ramfile

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestDiff(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	const size = 64 * DiffPage
	page := func(c byte) []byte {
		p := make([]byte, DiffPage)
		for i := range p {
			p[i] = c
		}
		return p
	}
	af, err := os.Create(a)
	if err != nil {
		t.Fatal(err)
	}
	bf, err := os.Create(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []*os.File{af, bf} {
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
	}
	// a: pages 1..9 hold data; b has pages 1..4 the same, 5 different, and
	// no pages 6..9 (holes).
	for i := int64(1); i <= 9; i++ {
		if _, err := af.WriteAt(page(byte(i)), i*DiffPage); err != nil {
			t.Fatal(err)
		}
		if i <= 4 {
			if _, err := bf.WriteAt(page(byte(i)), i*DiffPage); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := bf.WriteAt(page(0xff), 5*DiffPage); err != nil {
		t.Fatal(err)
	}
	af.Close()
	bf.Close()

	r, err := Diff(a, b, size, false)
	if err != nil {
		t.Fatal(err)
	}
	if r.Checked != 64 || r.Differ != 5 || r.First != 5*DiffPage || r.Unchecked != 0 || !slices.Equal(r.Compared, []Extent{{0, size}}) {
		t.Fatalf("whole files: %+v; want 64 checked, 5 differ from page 5", r)
	}
	r, err = Diff(a, b, size, true)
	if err != nil {
		t.Fatal(err)
	}
	// On a file system that allocates in blocks larger than a page, holes
	// are coarser: only check what must hold.
	if r.Differ != 1 || r.First != 5*DiffPage || r.Checked+r.Unchecked != 64 || r.Checked < 5 {
		t.Fatalf("placed only: %+v; want page 5 alone differing", r)
	}
	var compared int64
	for _, e := range r.Compared {
		compared += e.Len
	}
	if compared != int64(r.Checked)*DiffPage {
		t.Fatalf("placed only: extents %v cover %d bytes, %d pages checked", r.Compared, compared, r.Checked)
	}
	if r, err = Diff(a, a, size, false); err != nil || r.Differ != 0 {
		t.Fatalf("a file against itself: %+v, %v", r, err)
	}
}
