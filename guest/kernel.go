package guest

// Typed calls over abi_linux.go, and the sysfs lookups: the only code of the
// package that talks to the kernel. It does not log.

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const pageSize4K = 4096

// Extent is one range of a file and where it sits on its block device.
type Extent struct {
	Logical  uint64 // byte offset in the file
	Physical uint64 // byte offset on the device (the partition, if any)
	Length   uint64
	Flags    uint32
}

// Usable reports whether the file's bytes in the extent are the device's
// bytes at Physical: not unwritten (reads as zeros), delayed, encoded,
// encrypted, inline or packed.
func (e Extent) Usable() bool { return e.Flags&fiemapExtentUnusable == 0 }

// FileExtents returns the extents of f in file order, as FIEMAP reports
// them, without syncing the file first (that would write on the guest's
// behalf). A file system without FIEMAP gives ErrNotSupported.
func FileExtents(f *os.File) ([]Extent, error) {
	sc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var req fiemapReq
	var out []Extent
	for start := uint64(0); ; {
		var ferr error
		if err := sc.Control(func(fd uintptr) { ferr = fiemap(int(fd), start, math.MaxUint64-start, &req) }); err != nil {
			return nil, err
		}
		if ferr != nil {
			if errors.Is(ferr, unix.EOPNOTSUPP) || errors.Is(ferr, unix.ENOTTY) {
				ferr = fmt.Errorf("%w: %w", ErrNotSupported, ferr)
			}
			return nil, fmt.Errorf("map extents of %s: %w", f.Name(), ferr)
		}
		n := int(req.hdr.mappedExtents)
		if n == 0 {
			return out, nil
		}
		for _, e := range req.ext[:n] {
			out = append(out, Extent{Logical: e.logical, Physical: e.physical, Length: e.length, Flags: e.flags})
		}
		last := req.ext[n-1]
		if last.flags&fiemapExtentLast != 0 || last.logical+last.length <= start {
			return out, nil
		}
		start = last.logical + last.length
	}
}

// Pagemap reads a process's /proc/PID/pagemap. It owns its fd until Close.
type Pagemap struct{ f *os.File }

// OpenPagemap opens the pagemap of process pid.
func OpenPagemap(pid int) (*Pagemap, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", pid))
	if err != nil {
		return nil, fmt.Errorf("open pagemap: %w", permission(err))
	}
	return &Pagemap{f}, nil
}

// Read fills out with the entries of the 4 KiB pages from vaddr on.
func (p *Pagemap) Read(vaddr uint64, out []uint64) error {
	sc, err := p.f.SyscallConn()
	if err != nil {
		return err
	}
	var rerr error
	if err := sc.Control(func(fd uintptr) { rerr = pagemapRead(int(fd), vaddr, out) }); err != nil {
		return err
	}
	if rerr != nil {
		return fmt.Errorf("read pagemap at %#x: %w", vaddr, rerr)
	}
	return nil
}

// Close closes the pagemap.
func (p *Pagemap) Close() error { return p.f.Close() }

// PFN decodes a pagemap entry: the page frame number (the guest-physical
// page inside a VM), and whether the page is in RAM. A present page with
// PFN 0 means the reader lacks CAP_SYS_ADMIN: the kernel hides PFNs.
func PFN(entry uint64) (pfn uint64, present bool) {
	if entry&pagemapPresent == 0 || entry&pagemapSwapped != 0 {
		return 0, false
	}
	return entry & pagemapPFNMask, true
}

// Mem reads another process's memory through /proc/PID/mem. It owns its fd
// until Close.
type Mem struct{ f *os.File }

// OpenMem opens the memory of process pid for reading (ptrace access: root,
// or the same user and a permissive yama ptrace_scope).
func OpenMem(pid int) (*Mem, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return nil, fmt.Errorf("open memory of pid %d: %w", pid, permission(err))
	}
	return &Mem{f}, nil
}

// ReadAt reads len(b) bytes at vaddr with one pread (the kernel copies up
// to the first unmapped page). Fewer bytes than asked with a nil error
// means an unmapped page follows.
func (m *Mem) ReadAt(b []byte, vaddr uint64) (int, error) {
	sc, err := m.f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var rerr error
	if err := sc.Control(func(fd uintptr) { n, rerr = memRead(int(fd), b, vaddr) }); err != nil {
		return 0, err
	}
	if rerr != nil {
		return n, fmt.Errorf("read memory at %#x: %w", vaddr, permission(rerr))
	}
	return n, nil
}

// Close closes the memory file.
func (m *Mem) Close() error { return m.f.Close() }

// permission marks EACCES/EPERM as ErrPermission, keeping the errno.
func permission(err error) error {
	if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
		return fmt.Errorf("%w: %w", ErrPermission, err)
	}
	return err
}

// File systems whose FIEMAP physical offsets are offsets on the device. On
// btrfs they are addresses in its own logical space, not on a device.
var fsTypes = map[int64]string{
	0xef53:     "ext4", // ext2/3/4 share the magic
	0x58465342: "xfs",
}

// fileSystem names the file system f lives on, or returns ErrUnsupportedFS.
func fileSystem(f *os.File) (string, error) {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		return "", fmt.Errorf("statfs %s: %w", f.Name(), err)
	}
	if name, ok := fsTypes[int64(st.Type)]; ok {
		return name, nil
	}
	return "", fmt.Errorf("%s: file system type %#x: %w", f.Name(), st.Type, ErrUnsupportedFS)
}

// deviceOf returns the device number of the file system f lives on.
func deviceOf(f *os.File) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	return st.Dev, nil
}

// BlockDev is the block device a file system lives on, as sysfs describes
// it.
type BlockDev struct {
	Name   string // kernel name of the device: "vda1", "loop3"
	Disk   string // kernel name of the whole disk: "vda", "loop3"
	Start  uint64 // byte offset of the device on the whole disk (partition start)
	Serial string // the whole disk's serial number, if it has one (virtio-blk serial=)
}

// ID is the disk identity the agent puts in a layout: "serial:S" for a disk
// with a serial number (QEMU -drive ...,serial=S: stable and chosen by the
// host), else the guest's kernel name of the whole disk ("vda").
func (b BlockDev) ID() string {
	if b.Serial != "" {
		return "serial:" + b.Serial
	}
	return b.Disk
}

// blockDevice describes device dev from the sysfs tree at sysfs ("/sys").
// Stacked devices (device mapper, md) are ErrUnsupportedDevice: offsets on
// them are not offsets on one disk.
func blockDevice(sysfs string, dev uint64) (BlockDev, error) {
	link := filepath.Join(sysfs, "dev", "block", fmt.Sprintf("%d:%d", unix.Major(dev), unix.Minor(dev)))
	path, err := filepath.EvalSymlinks(link)
	if err != nil {
		return BlockDev{}, fmt.Errorf("find block device %d:%d: %w", unix.Major(dev), unix.Minor(dev), err)
	}
	b := BlockDev{Name: filepath.Base(path), Disk: filepath.Base(path)}
	disk := path
	if _, err := os.Stat(filepath.Join(path, "partition")); err == nil {
		sectors, err := readUint(filepath.Join(path, "start"))
		if err != nil {
			return BlockDev{}, fmt.Errorf("read start of partition %s: %w", b.Name, err)
		}
		b.Start = sectors * 512 // sysfs counts 512-byte sectors whatever the device's block size
		disk = filepath.Dir(path)
		b.Disk = filepath.Base(disk)
	}
	if _, err := os.Stat(filepath.Join(disk, "dm")); err == nil {
		return BlockDev{}, fmt.Errorf("%s is a device-mapper device: %w", b.Disk, ErrUnsupportedDevice)
	}
	if _, err := os.Stat(filepath.Join(disk, "md")); err == nil {
		return BlockDev{}, fmt.Errorf("%s is an md device: %w", b.Disk, ErrUnsupportedDevice)
	}
	for _, p := range []string{"serial", "device/serial"} {
		if s, err := os.ReadFile(filepath.Join(disk, p)); err == nil && strings.TrimSpace(string(s)) != "" {
			b.Serial = strings.TrimSpace(string(s))
			break
		}
	}
	return b, nil
}

func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}

// processCPU returns the user+system CPU time this process has used.
func processCPU() time.Duration {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
