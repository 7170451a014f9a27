package precopy

import (
	"testing"

	"github.com/dmig/dmig/layout"
)

// BenchmarkDiskOrder sorts a layout of 1.4 M one-page runs in random disk
// order (an 8 GiB guest's pool of scattered pages): the cost of a hybrid
// pass's disk order, paid once per layout fetched.
func BenchmarkDiskOrder(b *testing.B) {
	const n = 1400 << 10
	runs := make([]layout.Run, n)
	for i := range runs {
		runs[i] = layout.Run{GuestPage: uint64(2 * i), Pages: 1, Offset: (uint64(i) * 0x9e3779b97f4a7c15 >> 40) * pageSize}
	}
	byBlock := []*layout.Layout{{Runs: runs}}
	b.ResetTimer()
	for range b.N {
		if got := diskOrder(byBlock); len(got) != n {
			b.Fatal(len(got))
		}
	}
}
