package guest

// The kernel ABI the agent uses: FIEMAP (include/uapi/linux/fiemap.h,
// include/uapi/linux/fs.h), /proc/PID/pagemap entries
// (Documentation/admin-guide/mm/pagemap.rst) and reads of /proc/PID/mem.
// Every kernel struct and raw call of the package lives in this file;
// abi_linux_test.go checks the struct sizes. kernel.go wraps these in typed
// calls.

import (
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	ioctlFiemap = 0xc020660b // _IOWR('f', 11, struct fiemap)

	// fiemapExtent.flags
	fiemapExtentLast          = 0x0001
	fiemapExtentUnknown       = 0x0002
	fiemapExtentDelalloc      = 0x0004
	fiemapExtentEncoded       = 0x0008
	fiemapExtentDataEncrypted = 0x0080
	fiemapExtentNotAligned    = 0x0100
	fiemapExtentDataInline    = 0x0200
	fiemapExtentDataTail      = 0x0400
	fiemapExtentUnwritten     = 0x0800

	// fiemapExtentUnusable: the extent's bytes are not at fe_physical on
	// the device as the file reads them (not written yet, not allocated
	// yet, transformed, or packed with other data).
	fiemapExtentUnusable = fiemapExtentUnknown | fiemapExtentDelalloc | fiemapExtentEncoded |
		fiemapExtentDataEncrypted | fiemapExtentNotAligned | fiemapExtentDataInline |
		fiemapExtentDataTail | fiemapExtentUnwritten

	fiemapBatch = 256 // extents per FIEMAP call

	// pagemap entry bits
	pagemapPresent = 1 << 63
	pagemapSwapped = 1 << 62
	pagemapPFNMask = 1<<55 - 1
	pagemapEntry   = 8 // bytes per entry
)

// fiemapHdr is struct fiemap without its flexible array.
type fiemapHdr struct {
	start         uint64
	length        uint64
	flags         uint32
	mappedExtents uint32
	extentCount   uint32
	reserved      uint32
}

// fiemapExtent is struct fiemap_extent.
type fiemapExtent struct {
	logical    uint64
	physical   uint64
	length     uint64
	reserved64 [2]uint64
	flags      uint32
	reserved   [3]uint32
}

// fiemapReq is struct fiemap followed by room for fiemapBatch extents.
type fiemapReq struct {
	hdr fiemapHdr
	ext [fiemapBatch]fiemapExtent
}

// fiemap maps the file bytes [start, start+length) of fd; the extents are in
// req.ext[:req.hdr.mappedExtents]. It returns the raw errno.
func fiemap(fd int, start, length uint64, req *fiemapReq) error {
	req.hdr = fiemapHdr{start: start, length: length, extentCount: fiemapBatch}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), ioctlFiemap, uintptr(unsafe.Pointer(req)))
	runtime.KeepAlive(req)
	if errno != 0 {
		return errno
	}
	return nil
}

// pagemapRead reads the pagemap entries of the pages starting at virtual
// address vaddr, one per element of out, from a /proc/PID/pagemap fd.
func pagemapRead(fd int, vaddr uint64, out []uint64) error {
	if len(out) == 0 {
		return nil
	}
	b := unsafe.Slice((*byte)(unsafe.Pointer(&out[0])), len(out)*pagemapEntry)
	off := int64(vaddr / pageSize4K * pagemapEntry)
	for len(b) > 0 {
		n, err := unix.Pread(fd, b, off)
		if err != nil {
			return err
		}
		if n == 0 {
			return unix.EIO // past the end of the address space
		}
		b, off = b[n:], off+int64(n)
	}
	return nil
}

// memRead reads len(b) bytes of a process's memory at vaddr from a
// /proc/PID/mem fd. It returns how many bytes it got: fewer than asked at a
// page that is not mapped (the kernel stops there).
func memRead(fd int, b []byte, vaddr uint64) (int, error) {
	return unix.Pread(fd, b, int64(vaddr))
}
