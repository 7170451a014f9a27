package uffd

import (
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The sizes the kernel's uapi headers give; an ioctl number encodes its
// struct's size, so a wrong size is a wrong ioctl.
func TestABISizes(t *testing.T) {
	for _, c := range []struct {
		name string
		got  uintptr
		want uintptr
		nr   uintptr // ioctl whose size field must match, 0 if none
	}{
		{"uffdio_api", unsafe.Sizeof(uffdioAPI{}), 24, ioctlAPI},
		{"uffdio_range", unsafe.Sizeof(uffdioRange{}), 16, ioctlWake},
		{"uffdio_register", unsafe.Sizeof(uffdioRegister{}), 32, ioctlRegister},
		{"uffdio_copy", unsafe.Sizeof(uffdioCopy{}), 40, ioctlCopy},
		{"uffdio_zeropage", unsafe.Sizeof(uffdioZeropage{}), 32, ioctlZeropage},
		{"uffdio_writeprotect", unsafe.Sizeof(uffdioWriteProtect{}), 24, ioctlWriteProtect},
		{"uffd_msg", unsafe.Sizeof(uffdMsg{}), 32, 0},
		{"pm_scan_arg", unsafe.Sizeof(pmScanArg{}), 96, ioctlPagemapScan},
		{"page_region", unsafe.Sizeof(pageRegion{}), 24, 0},
	} {
		if c.got != c.want {
			t.Errorf("sizeof(%s) = %d, want %d", c.name, c.got, c.want)
		}
		if c.nr != 0 {
			if size := (c.nr >> 16) & 0x3fff; size != c.want {
				t.Errorf("ioctl %#x for %s encodes size %d, want %d", c.nr, c.name, size, c.want)
			}
		}
	}
	if ioctlUnregister>>16&0x3fff != 16 {
		t.Errorf("UFFDIO_UNREGISTER encodes size %d, want 16", ioctlUnregister>>16&0x3fff)
	}
}

func TestDecodeMsg(t *testing.T) {
	m := decodeMsg(&uffdMsg{Event: eventPagefault, Arg: [3]uint64{pagefaultFlagWrite | pagefaultFlagWP, 0x7f0000001234, 42}})
	if m.Kind != EventPagefault || m.Addr != 0x7f0000001234 || !m.Write || !m.WP || m.Minor || m.TID != 42 {
		t.Errorf("pagefault decoded as %+v", m)
	}
	m = decodeMsg(&uffdMsg{Event: eventRemap, Arg: [3]uint64{0x1000, 0x5000, 0x2000}})
	if m.Kind != EventRemap || m.From != 0x1000 || m.To != 0x5000 || m.Len != 0x2000 {
		t.Errorf("remap decoded as %+v", m)
	}
	for _, ev := range []uint8{eventRemove, eventUnmap} {
		m = decodeMsg(&uffdMsg{Event: ev, Arg: [3]uint64{0x1000, 0x3000}})
		if m.Start != 0x1000 || m.End != 0x3000 {
			t.Errorf("%v decoded as %+v", m.Kind, m)
		}
	}
	m = decodeMsg(&uffdMsg{Event: eventFork, Arg: [3]uint64{7}})
	if m.Kind != EventFork || m.ForkFD != 7 {
		t.Errorf("fork decoded as %+v", m)
	}
	if s := (FeatureWPAsync | FeatureMissingShmem).String(); s != "MISSING_SHMEM|WP_ASYNC" {
		t.Errorf("feature string %q", s)
	}
}

func TestSyscallNumbers(t *testing.T) {
	if sysUserfaultfd != unix.SYS_USERFAULTFD {
		t.Errorf("sysUserfaultfd = %d, x/sys/unix says %d for this GOARCH", sysUserfaultfd, unix.SYS_USERFAULTFD)
	}
}
