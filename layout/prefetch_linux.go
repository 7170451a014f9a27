package layout

import (
	"errors"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// willNeed asks the kernel to start reading [off, off+n) of f into the page
// cache now (posix_fadvise POSIX_FADV_WILLNEED) and returns without
// waiting for it. A hint: an error only means no read ahead.
func willNeed(f *os.File, off, n int64) error {
	return unix.Fadvise(int(f.Fd()), off, n, unix.FADV_WILLNEED)
}

// cached reports whether the n bytes of f at off are all in the page cache
// (cachestat, Linux 6.5). Unlike a read that must not wait (RWF_NOWAIT),
// which starts the read ahead of a page it does not find, it leaves the
// cache as it was: a batch found outside it is then read past it. It errs
// to false (a kernel without cachestat): the caller then reads the batch
// as one outside the cache, which is always correct.
func cached(f *os.File, off, n int64) bool {
	var st unix.Cachestat_t
	if err := unix.Cachestat(uint(f.Fd()), &unix.CachestatRange{Off: uint64(off), Len: uint64(n)}, &st, 0); err != nil {
		return false
	}
	return st.Cache*PageSize >= uint64(n)
}

// openDirect opens path a second time for reads that bypass the page cache
// (O_DIRECT), or returns nil where the file system refuses them. Such a
// read must start at, and fill, a directAlign-aligned buffer at an aligned
// offset.
func openDirect(path string) *os.File {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return nil
	}
	return f
}

// directAlign is the alignment O_DIRECT reads keep: the largest logical
// block size of the devices dmig reads, and the page size.
const directAlign = PageSize

// alignedBuffer returns n bytes starting at a directAlign boundary.
func alignedBuffer(n int) []byte {
	b := make([]byte, n+directAlign)
	skip := (directAlign - int(uintptr(unsafe.Pointer(&b[0]))%directAlign)) % directAlign
	return b[skip : skip+n : skip+n]
}

// directRefused reports whether err is an O_DIRECT read refused for its
// alignment or by the file system (EINVAL), not a failure of the disk.
func directRefused(err error) bool { return errors.Is(err, unix.EINVAL) }
