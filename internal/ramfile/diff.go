package ramfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
)

// DiffPage is the unit Diff compares: the guest's page size.
const DiffPage = 4096

// DiffResult is what Diff found.
type DiffResult struct {
	// Checked pages were compared; Differ of them differ.
	Checked, Differ uint64
	// Unchecked pages were holes in the second file, not compared (Diff's
	// placedOnly).
	Unchecked uint64
	// First is the offset of the first page that differs (Differ > 0).
	First int64
	// Compared are the extents of the second file that were compared:
	// with placedOnly its data, else all of it.
	Compared []Extent
}

// Diff compares the first size bytes of the RAM files a and b page for
// page. With placedOnly, pages that are holes in b (never written there:
// not placed yet) are counted as Unchecked instead of compared with zeros.
// Both files should be quiescent: nothing writes them meanwhile.
func Diff(a, b string, size int64, placedOnly bool) (DiffResult, error) {
	var r DiffResult
	af, err := os.Open(a)
	if err != nil {
		return r, fmt.Errorf("open ram file: %w", err)
	}
	defer af.Close()
	bf, err := os.Open(b)
	if err != nil {
		return r, fmt.Errorf("open ram file: %w", err)
	}
	defer bf.Close()
	// data: b's extents, when only those are compared.
	var data []Extent
	if placedOnly {
		if data, err = Data(bf, size); err != nil {
			return r, err
		}
		r.Compared = slices.Clone(data)
	} else {
		r.Compared = []Extent{{Off: 0, Len: size}}
	}
	const chunk = 1 << 20
	ab, bb := make([]byte, chunk), make([]byte, chunk)
	for off := int64(0); off < size; off += chunk {
		n := min(chunk, size-off)
		if _, err := af.ReadAt(ab[:n], off); err != nil && !errors.Is(err, io.EOF) {
			return r, fmt.Errorf("read %s at %#x: %w", a, off, err)
		}
		if _, err := bf.ReadAt(bb[:n], off); err != nil && !errors.Is(err, io.EOF) {
			return r, fmt.Errorf("read %s at %#x: %w", b, off, err)
		}
		for p := int64(0); p < n; p += DiffPage {
			at := off + p
			if placedOnly {
				for len(data) > 0 && data[0].Off+data[0].Len <= at {
					data = data[1:]
				}
				if len(data) == 0 || at < data[0].Off {
					r.Unchecked++
					continue
				}
			}
			r.Checked++
			if !bytes.Equal(ab[p:p+DiffPage], bb[p:p+DiffPage]) {
				if r.Differ == 0 {
					r.First = at
				}
				r.Differ++
			}
		}
	}
	return r, nil
}
