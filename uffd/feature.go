package uffd

import (
	"math/bits"
	"strconv"
	"strings"
)

// featureNames lists UFFD_FEATURE_* names by bit number.
const featureNames = "PAGEFAULT_FLAG_WP EVENT_FORK EVENT_REMAP EVENT_REMOVE MISSING_HUGETLBFS " +
	"MISSING_SHMEM EVENT_UNMAP SIGBUS THREAD_ID MINOR_HUGETLBFS MINOR_SHMEM EXACT_ADDRESS " +
	"WP_HUGETLBFS_SHMEM WP_UNPOPULATED POISON WP_ASYNC MOVE"

// String names the feature bits, e.g. "WP_UNPOPULATED|WP_ASYNC".
func (f Feature) String() string {
	if f == 0 {
		return "none"
	}
	known := strings.Fields(featureNames)
	var names []string
	for f != 0 {
		b := bits.TrailingZeros64(uint64(f))
		f &^= 1 << b
		if b < len(known) {
			names = append(names, known[b])
		} else {
			names = append(names, "bit"+strconv.Itoa(b))
		}
	}
	return strings.Join(names, "|")
}

// Has reports whether every bit of want is in f.
func (f Feature) Has(want Feature) bool { return f&want == want }
