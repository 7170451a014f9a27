package layout

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// willNeed asks the kernel to start reading [off, off+n) of f into the page
// cache now (posix_fadvise POSIX_FADV_WILLNEED) and returns without
// waiting for it. A hint: an error only means no read ahead.
func willNeed(f *os.File, off, n int64) error {
	return unix.Fadvise(int(f.Fd()), off, n, unix.FADV_WILLNEED)
}

// cached reports whether the page of f at off is in the page cache: a
// read of it that must not wait for the device (preadv2 RWF_NOWAIT) into
// scratch. It errs to false: a kernel or file system without RWF_NOWAIT
// reads as not cached, so the caller hints, which is always correct.
func cached(f *os.File, off int64, scratch []byte) bool {
	n, err := unix.Preadv2(int(f.Fd()), [][]byte{scratch}, off, unix.RWF_NOWAIT)
	if errors.Is(err, unix.EAGAIN) {
		return false
	}
	return err == nil && n == len(scratch)
}
