package guest

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.org/x/term"
)

func addrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }

func TestABISizes(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"struct fiemap", unsafe.Sizeof(fiemapHdr{}), 32},
		{"struct fiemap_extent", unsafe.Sizeof(fiemapExtent{}), 56},
		{"fiemap request", unsafe.Sizeof(fiemapReq{}), 32 + 56*fiemapBatch},
		{"fiemap_extent.fe_flags offset", unsafe.Offsetof(fiemapExtent{}.flags), 40},
	} {
		if c.got != c.want {
			t.Errorf("%s: %d bytes, want %d", c.name, c.got, c.want)
		}
	}
	// _IOWR('f', 11, struct fiemap)
	if want := uintptr(3<<30 | 32<<16 | 'f'<<8 | 11); ioctlFiemap != want {
		t.Errorf("FS_IOC_FIEMAP = %#x, want %#x", ioctlFiemap, want)
	}
}

// TestFileExtents writes a file on an ext4 loop image, maps it with FIEMAP
// and checks that the image holds the file's bytes at the physical offsets;
// a preallocated range is reported unwritten and not usable.
func TestFileExtents(t *testing.T) {
	fs := newLoopFS(t, t.TempDir(), 64<<20)
	path := filepath.Join(fs.dir, "data")
	want := make([]byte, 3<<20)
	rand.Read(want)
	if err := os.WriteFile(path, want, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil { // allocate: no delayed extents
		t.Fatal(err)
	}
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, 3<<20, 1<<20); err != nil {
		t.Fatal(err)
	}
	exts, err := FileExtents(f)
	if err != nil {
		t.Fatal(err)
	}
	img, err := os.Open(fs.image)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	var covered uint64
	unwritten := false
	for _, e := range exts {
		if !e.Usable() {
			unwritten = unwritten || e.Flags&fiemapExtentUnwritten != 0
			if e.Logical < uint64(len(want)) {
				t.Errorf("extent %+v of written data not usable", e)
			}
			continue
		}
		got := make([]byte, e.Length)
		if _, err := img.ReadAt(got, int64(e.Physical)); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want[e.Logical:e.Logical+e.Length]) {
			t.Errorf("extent %+v: image bytes differ from the file", e)
		}
		covered += e.Length
	}
	if covered != uint64(len(want)) || !unwritten {
		t.Errorf("extents %+v: cover %d of %d bytes, unwritten seen %v", exts, covered, len(want), unwritten)
	}

	// The file system check and the device lookup for the same file.
	if name, err := fileSystem(f); err != nil || name != "ext4" {
		t.Errorf("fileSystem = %q, %v", name, err)
	}
	dev, err := deviceOf(f)
	if err != nil {
		t.Fatal(err)
	}
	b, err := blockDevice("/sys", dev)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Base(fs.dev); b.Name != want || b.Disk != want || b.Start != 0 || b.ID() != want {
		t.Errorf("blockDevice = %+v, want the whole disk %s", b, want)
	}

	// FIEMAP where it does not exist: /proc.
	p, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := FileExtents(p); !errors.Is(err, ErrNotSupported) {
		t.Errorf("FileExtents on procfs = %v, want ErrNotSupported", err)
	}
	if _, err := fileSystem(p); !errors.Is(err, ErrUnsupportedFS) {
		t.Errorf("fileSystem on procfs = %v, want ErrUnsupportedFS", err)
	}
}

// TestBlockDeviceSysfs reads a fake sysfs: a partition, a serial, device
// mapper.
func TestBlockDeviceSysfs(t *testing.T) {
	root := t.TempDir()
	mk := func(path, content string) {
		p := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	link := func(dev, target string) {
		p := filepath.Join(root, "dev/block", dev)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.Symlink(filepath.Join(root, target), p); err != nil {
			t.Fatal(err)
		}
	}
	mk("devices/pci0/virtio2/block/vda/serial", "QM00007\n")
	mk("devices/pci0/virtio2/block/vda/vda2/partition", "2\n")
	mk("devices/pci0/virtio2/block/vda/vda2/start", "2099200\n")
	link("253:2", "devices/pci0/virtio2/block/vda/vda2")
	mk("devices/pci0/virtio3/block/vdb/size", "100\n")
	link("253:16", "devices/pci0/virtio3/block/vdb")
	mk("devices/virtual/block/dm-0/dm/name", "vg-root\n")
	link("254:0", "devices/virtual/block/dm-0")

	b, err := blockDevice(root, unix.Mkdev(253, 2))
	if want := (BlockDev{Name: "vda2", Disk: "vda", Start: 2099200 * 512, Serial: "QM00007"}); err != nil || b != want {
		t.Errorf("partition: %+v, %v; want %+v", b, err, want)
	}
	if b.ID() != "serial:QM00007" {
		t.Errorf("ID of a disk with a serial = %q", b.ID())
	}
	b, err = blockDevice(root, unix.Mkdev(253, 16))
	if want := (BlockDev{Name: "vdb", Disk: "vdb"}); err != nil || b != want || b.ID() != "vdb" {
		t.Errorf("whole disk: %+v, %v; want %+v", b, err, want)
	}
	if _, err := blockDevice(root, unix.Mkdev(254, 0)); !errors.Is(err, ErrUnsupportedDevice) {
		t.Errorf("device mapper: %v, want ErrUnsupportedDevice", err)
	}
	if _, err := blockDevice(root, unix.Mkdev(8, 0)); err == nil {
		t.Errorf("unknown device: no error")
	}
}

// TestPagemapAndMem reads this process's own pagemap and memory.
func TestPagemapAndMem(t *testing.T) {
	const n = 16
	mem, err := unix.Mmap(-1, 0, n*pageSize4K, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	for i := 0; i < n/2; i++ { // touch the first half only
		copy(mem[i*pageSize4K:], fmt.Sprintf("page %d", i))
	}
	pm, err := OpenPagemap(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	entries := make([]uint64, n)
	if err := pm.Read(uint64(addrOf(mem)), entries); err != nil {
		t.Fatal(err)
	}
	pfns := make(map[uint64]bool)
	for i, e := range entries {
		pfn, present := PFN(e)
		switch {
		case i < n/2 && (!present || pfn == 0):
			t.Errorf("touched page %d: present %v pfn %#x (running as root?)", i, present, pfn)
		case i < n/2 && pfns[pfn]:
			t.Errorf("touched page %d: pfn %#x seen twice", i, pfn)
		case i >= n/2 && present:
			t.Errorf("untouched page %d present", i)
		}
		pfns[pfn] = true
	}

	m, err := OpenMem(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	got := make([]byte, 2*pageSize4K)
	if k, err := m.ReadAt(got, uint64(addrOf(mem))+pageSize4K); err != nil || k != len(got) || !bytes.Equal(got, mem[pageSize4K:3*pageSize4K]) {
		t.Errorf("ReadAt own memory: %d, %v", k, err)
	}
	if _, err := m.ReadAt(got, 0); err == nil {
		t.Errorf("ReadAt address 0: no error")
	}
}

// TestPFNHiddenIsAnError: with every present page's frame number 0 (the
// pagemap of a reader without CAP_SYS_ADMIN), the scan fails clearly
// instead of producing a layout of page 0.
func TestPFNHiddenIsAnError(t *testing.T) {
	sp := &Space{ID: 5, Path: "/nonexistent", FullCRC32: true}
	s := &scanner{srv: &Server{PageSize: 16384, Spaces: map[uint32]*Space{5: sp}}}
	s.cands = []candidate{{space: sp, page: 1, pfns: 0}}
	s.entries = []uint64{pagemapPresent, pagemapPresent, pagemapPresent, pagemapPresent}
	dm := newDiskMap("/sys")
	dm.files[5] = &fileMap{size: 1 << 20, extents: []Extent{{Logical: 0, Physical: 1 << 20, Length: 1 << 20}}}
	if _, err := s.refs(dm, 0); !errors.Is(err, ErrNoPFN) {
		t.Errorf("refs with hidden frame numbers = %v, want ErrNoPFN", err)
	}
	s.entries = []uint64{pagemapPresent | 7, pagemapPresent | 8, 0, pagemapPresent | 7}
	refs, err := s.refs(dm, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Frame 7 is named twice (pieces 0 and 3): both dropped; piece 2 absent.
	if len(refs) != 1 || refs[0].GuestPage != 8 || refs[0].Offset != 1<<20+16384+4096 {
		t.Errorf("refs = %+v, want frame 8 at disk %#x", refs, 1<<20+16384+4096)
	}
	if s.stats.SharedPFN != 2 || s.stats.NotPresent != 1 {
		t.Errorf("stats %+v", s.stats)
	}
	// A page changed at or after the checkpoint may still be in flight.
	s.cands[0].lsn = 100
	if refs, err := s.refs(dm, 100); err != nil || len(refs) != 0 || s.stats.Unsettled != 1 {
		t.Errorf("page at the checkpoint: refs %+v, %v, unsettled %d", refs, err, s.stats.Unsettled)
	}
	if refs, err := s.refs(dm, 101); err != nil || len(refs) != 1 {
		t.Errorf("page below the checkpoint: refs %+v, %v", refs, err)
	}
}

// openPTY makes a pseudo-terminal in raw mode: a stand-in for a
// virtio-serial port. It returns the master and the slave's path.
func openPTY(t *testing.T) (*os.File, string) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { master.Close() })
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	path := fmt.Sprintf("/dev/pts/%d", n)
	slave, err := os.OpenFile(path, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { slave.Close() })
	if _, err := term.MakeRaw(int(slave.Fd())); err != nil {
		t.Fatal(err)
	}
	return master, path
}
