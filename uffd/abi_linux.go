package uffd

// The userfaultfd and PAGEMAP_SCAN ABI (include/uapi/linux/userfaultfd.h,
// include/uapi/linux/fs.h), x86-64. Every kernel struct and ioctl number of
// the package lives in this file; abi_linux_test.go checks their sizes.

import "unsafe"

// Feature is a UFFD_FEATURE_* bit negotiated by the UFFDIO_API handshake.
type Feature uint64

const (
	FeaturePagefaultFlagWP  Feature = 1 << 0
	FeatureEventFork        Feature = 1 << 1
	FeatureEventRemap       Feature = 1 << 2
	FeatureEventRemove      Feature = 1 << 3
	FeatureMissingHugetlbfs Feature = 1 << 4
	FeatureMissingShmem     Feature = 1 << 5
	FeatureEventUnmap       Feature = 1 << 6
	FeatureSigbus           Feature = 1 << 7
	FeatureThreadID         Feature = 1 << 8
	FeatureMinorHugetlbfs   Feature = 1 << 9
	FeatureMinorShmem       Feature = 1 << 10
	FeatureExactAddress     Feature = 1 << 11
	FeatureWPHugetlbfsShmem Feature = 1 << 12
	FeatureWPUnpopulated    Feature = 1 << 13
	FeaturePoison           Feature = 1 << 14
	FeatureWPAsync          Feature = 1 << 15
	FeatureMove             Feature = 1 << 16
)

const (
	uffdAPI = 0xAA

	// ioctl numbers: _IOWR(0xAA, nr, struct) = 3<<30 | size<<16 | 0xAA<<8 | nr;
	// _IOR = 2<<30 | ....
	ioctlAPI          = 0xc018aa3f // _IOWR(0xAA, 0x3F, uffdioAPI)
	ioctlRegister     = 0xc020aa00 // _IOWR(0xAA, 0x00, uffdioRegister)
	ioctlUnregister   = 0x8010aa01 // _IOR(0xAA, 0x01, uffdioRange)
	ioctlWake         = 0x8010aa02 // _IOR(0xAA, 0x02, uffdioRange)
	ioctlCopy         = 0xc028aa03 // _IOWR(0xAA, 0x03, uffdioCopy)
	ioctlZeropage     = 0xc020aa04 // _IOWR(0xAA, 0x04, uffdioZeropage)
	ioctlWriteProtect = 0xc018aa06 // _IOWR(0xAA, 0x06, uffdioWriteProtect)

	ioctlPagemapScan = 0xc0606610 // _IOWR('f', 16, pmScanArg)

	// Bits of uffdioRegister.ioctls / uffdioAPI.ioctls: which ioctls the
	// kernel allows on a registered range (bit = _IOC_NR).
	ioctlBitCopy         = 1 << 0x03
	ioctlBitZeropage     = 1 << 0x04
	ioctlBitWriteProtect = 1 << 0x06

	registerModeMissing = 1 << 0
	registerModeWP      = 1 << 1
	registerModeMinor   = 1 << 2

	copyModeDontWake = 1 << 0
	copyModeWP       = 1 << 1

	zeropageModeDontWake = 1 << 0

	wpModeWP       = 1 << 0
	wpModeDontWake = 1 << 1

	userModeOnly = 1 // UFFD_USER_MODE_ONLY, flag of userfaultfd(2)

	eventPagefault = 0x12
	eventFork      = 0x13
	eventRemap     = 0x14
	eventRemove    = 0x15
	eventUnmap     = 0x16

	pagefaultFlagWrite = 1 << 0
	pagefaultFlagWP    = 1 << 1
	pagefaultFlagMinor = 1 << 2

	// PAGEMAP_SCAN flags and page categories.
	pmScanWPMatching   = 1 << 0
	pmScanCheckWPAsync = 1 << 1

	pageIsWPAllowed = 1 << 0
	pageIsWritten   = 1 << 1
	pageIsFile      = 1 << 2
	pageIsPresent   = 1 << 3
)

// uffdioAPI is struct uffdio_api.
type uffdioAPI struct {
	API      uint64
	Features uint64
	Ioctls   uint64
}

// uffdioRange is struct uffdio_range.
type uffdioRange struct {
	Start uint64
	Len   uint64
}

// uffdioRegister is struct uffdio_register.
type uffdioRegister struct {
	Range  uffdioRange
	Mode   uint64
	Ioctls uint64
}

// uffdioCopy is struct uffdio_copy. Copy is written by the kernel: bytes
// copied, or a negative errno.
type uffdioCopy struct {
	Dst  uint64
	Src  uint64
	Len  uint64
	Mode uint64
	Copy int64
}

// uffdioZeropage is struct uffdio_zeropage.
type uffdioZeropage struct {
	Range    uffdioRange
	Mode     uint64
	Zeropage int64
}

// uffdioWriteProtect is struct uffdio_writeprotect.
type uffdioWriteProtect struct {
	Range uffdioRange
	Mode  uint64
}

// uffdMsg is struct uffd_msg: an event byte, padding, and a 24-byte union
// whose layout depends on the event.
type uffdMsg struct {
	Event uint8
	_     [7]byte
	// pagefault: flags, address, ptid (low 32 bits); remap: from, to, len;
	// remove/unmap: start, end; fork: ufd (low 32 bits).
	Arg [3]uint64
}

const msgSize = int(unsafe.Sizeof(uffdMsg{}))

// pmScanArg is struct pm_scan_arg.
type pmScanArg struct {
	Size              uint64
	Flags             uint64
	Start             uint64
	End               uint64
	WalkEnd           uint64
	Vec               uint64
	VecLen            uint64
	MaxPages          uint64
	CategoryInverted  uint64
	CategoryMask      uint64
	CategoryAnyofMask uint64
	ReturnMask        uint64
}

// pageRegion is struct page_region.
type pageRegion struct {
	Start      uint64
	End        uint64
	Categories uint64
}
