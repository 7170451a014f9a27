package guest

import (
	"fmt"
	"os"
	"sort"

	"github.com/dmig/dmig/layout"
)

// diskMap maps tablespace file offsets to (disk, byte offset on the whole
// disk), file by file on first use, for one scan.
type diskMap struct {
	sysfs string
	disks []layout.Disk
	byDev map[uint64]devDisk
	files map[uint32]*fileMap
}

type devDisk struct {
	id    layout.DiskID
	start uint64 // partition start on the disk
	err   error
}

// fileMap is one tablespace file's extents on its disk.
type fileMap struct {
	err     error
	disk    layout.DiskID
	start   uint64
	size    uint64
	extents []Extent // usable ones, sorted by Logical
}

func newDiskMap(sysfs string) *diskMap {
	return &diskMap{sysfs: sysfs, byDev: make(map[uint64]devDisk), files: make(map[uint32]*fileMap)}
}

// file returns the map of a space's file; fm.err says why it has none.
func (m *diskMap) file(sp *Space) *fileMap {
	if fm, ok := m.files[sp.ID]; ok {
		return fm
	}
	fm := m.load(sp.Path)
	m.files[sp.ID] = fm
	return fm
}

func (m *diskMap) load(path string) *fileMap {
	f, err := os.Open(path)
	if err != nil {
		return &fileMap{err: err}
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return &fileMap{err: err}
	}
	if _, err := fileSystem(f); err != nil {
		return &fileMap{err: err}
	}
	dev, err := deviceOf(f)
	if err != nil {
		return &fileMap{err: err}
	}
	d, ok := m.byDev[dev]
	if !ok {
		d = m.device(dev)
		m.byDev[dev] = d
	}
	if d.err != nil {
		return &fileMap{err: d.err}
	}
	exts, err := FileExtents(f)
	if err != nil {
		return &fileMap{err: err}
	}
	fm := &fileMap{disk: d.id, start: d.start, size: uint64(st.Size())}
	for _, e := range exts {
		if e.Usable() {
			fm.extents = append(fm.extents, e)
		}
	}
	return fm
}

// device assigns a layout disk to a device, one per whole disk.
func (m *diskMap) device(dev uint64) devDisk {
	b, err := blockDevice(m.sysfs, dev)
	if err != nil {
		return devDisk{err: err}
	}
	name := b.ID()
	for _, d := range m.disks {
		if d.Name == name {
			return devDisk{id: d.ID, start: b.Start}
		}
	}
	if len(m.disks) > 1<<16-1 {
		return devDisk{err: fmt.Errorf("disk %s: too many disks", name)}
	}
	id := layout.DiskID(len(m.disks))
	m.disks = append(m.disks, layout.Disk{ID: id, Name: name})
	return devDisk{id: id, start: b.Start}
}

// offset returns the byte offset on the whole disk of the 4 KiB at file
// offset off, if those 4 KiB lie within one usable extent.
func (fm *fileMap) offset(off uint64) (uint64, bool) {
	if fm.err != nil || off+pageSize4K > fm.size {
		return 0, false
	}
	i := sort.Search(len(fm.extents), func(i int) bool {
		e := fm.extents[i]
		return e.Logical+e.Length > off
	})
	if i == len(fm.extents) {
		return 0, false
	}
	e := fm.extents[i]
	if off < e.Logical || off+pageSize4K > e.Logical+e.Length {
		return 0, false
	}
	return fm.start + e.Physical + (off - e.Logical), true
}
