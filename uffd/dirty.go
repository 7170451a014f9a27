package uffd

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DirtyFeatures are the features a uffd needs for DirtyTracker.
const DirtyFeatures = FeaturePagefaultFlagWP | FeatureWPAsync | FeatureWPUnpopulated

// DirtyTracker learns which pages of a process were written, with async
// userfaultfd write protection and PAGEMAP_SCAN: the kernel resolves write
// faults itself (no messages, no stalls) and records them in the page table,
// and each Collect harvests and re-protects the written pages in one atomic
// walk, so no write between two Collects is ever missed.
//
// The tracker owns an fd of /proc/PID/pagemap; it does not own the uffd.
type DirtyTracker struct {
	u       *FD
	pagemap *os.File
	ranges  []Range
	vec     []pageRegion
}

// TrackDirty write-protects ranges (which must be registered with ModeWP on
// u, a uffd with DirtyFeatures) and returns a tracker whose first Collect
// reports the pages written from now on. Protect first, read after: a page
// read by the caller after TrackDirty and written later is always reported.
func (u *FD) TrackDirty(ranges ...Range) (*DirtyTracker, error) {
	if !u.features.Has(DirtyFeatures) {
		return nil, fmt.Errorf("track dirty pages of pid %d: uffd lacks features %v: %w", u.pid, DirtyFeatures&^u.features, ErrNotSupported)
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", u.pid))
	if err != nil {
		return nil, fmt.Errorf("track dirty pages of pid %d: open pagemap: %w", u.pid, err)
	}
	t := &DirtyTracker{u: u, pagemap: f, ranges: append([]Range(nil), ranges...), vec: make([]pageRegion, 4096)}
	for _, r := range ranges {
		if err := u.WriteProtect(r, true, false); err != nil {
			f.Close()
			return nil, fmt.Errorf("track dirty pages: %w", err)
		}
	}
	return t, nil
}

// Collect appends to dst the page-aligned runs written since the previous
// Collect (or TrackDirty) and write-protects them again, atomically per page.
// Runs are in address order; adjacent pages are merged.
func (t *DirtyTracker) Collect(dst []Range) ([]Range, error) {
	for _, r := range t.ranges {
		var err error
		if dst, err = t.scan(r, dst); err != nil {
			return dst, err
		}
	}
	return dst, nil
}

func (t *DirtyTracker) scan(r Range, dst []Range) ([]Range, error) {
	start, end := uint64(r.Start), uint64(r.End())
	for start < end {
		arg := pmScanArg{
			Size:         uint64(unsafe.Sizeof(pmScanArg{})),
			Flags:        pmScanWPMatching | pmScanCheckWPAsync,
			Start:        start,
			End:          end,
			Vec:          uint64(uintptr(unsafe.Pointer(&t.vec[0]))),
			VecLen:       uint64(len(t.vec)),
			CategoryMask: pageIsWritten,
			ReturnMask:   pageIsWritten,
		}
		n, _, errno := unix.Syscall(unix.SYS_IOCTL, t.pagemap.Fd(), ioctlPagemapScan, uintptr(unsafe.Pointer(&arg)))
		runtime.KeepAlive(t.vec)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return dst, fmt.Errorf("scan written pages in %v of pid %d: %w", r, t.u.pid, translateScan(errno))
		}
		for _, reg := range t.vec[:n] {
			s, e := uintptr(reg.Start), uintptr(reg.End)
			if k := len(dst); k > 0 && dst[k-1].End() == s {
				dst[k-1].Len += e - s
			} else {
				dst = append(dst, Range{Start: s, Len: e - s})
			}
		}
		if arg.WalkEnd <= start {
			return dst, fmt.Errorf("scan written pages in %v of pid %d: walk did not advance past %#x", r, t.u.pid, start)
		}
		start = arg.WalkEnd
	}
	return dst, nil
}

func translateScan(errno unix.Errno) error {
	switch errno {
	case unix.ENOTTY, unix.EINVAL:
		return withErrno(ErrNotSupported, errno, "PAGEMAP_SCAN needs Linux >= 6.7")
	case unix.EPERM:
		return withErrno(ErrNotSupported, errno, "the range is not async write-protected (uffd without WP_ASYNC, or not registered with ModeWP)")
	case unix.ESRCH:
		return withErrno(ErrTargetGone, errno, "")
	}
	return errno
}

// Close releases the pagemap fd. Write protection stays until the range is
// unregistered or the uffd closed.
func (t *DirtyTracker) Close() error {
	if err := t.pagemap.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("close pagemap of pid %d: %w", t.u.pid, err)
	}
	return nil
}
