package ramfile

import (
	"errors"
	"fmt"
	"os"
)

// PageSize is the unit dmig moves RAM in: RAM files are whole numbers of
// pages, and page p of a block is bytes [p*PageSize, (p+1)*PageSize).
const PageSize = 4096

// Block is one RAM block of a guest as both engines hold it: the RAM file
// the guest maps MAP_SHARED, dmig's own mapping of all of it, and the
// guest's mappings of it. The source maps it read-only and reads pages
// through Mem; the destination maps it writable and writes pages through
// Mem before the guest resumes, and through the guest's mappings (Maps,
// with userfaultfd) after. Block owns File and Mem until Close.
type Block struct {
	Name string // the block's name, in errors; both sides match blocks by it
	Path string
	File *os.File
	Mem  []byte    // dmig's mapping of the whole file
	Maps []Mapping // the guest's mappings of the file (FindMappings)
}

// OpenBlock opens the RAM file of block name at path, read-write if
// writable, checks that it holds size bytes (a whole number of pages), and
// maps all of it. With lock it first takes the file's lock (Lock), so a
// second migration of the guest fails with ErrLocked before anything is
// mapped.
func OpenBlock(name, path string, size uint64, writable, lock bool) (*Block, error) {
	flag := os.O_RDONLY
	if writable {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("open RAM block %s: %w", name, err)
	}
	b := &Block{Name: name, Path: path, File: f}
	if err := b.open(size, writable, lock); err != nil {
		f.Close()
		return nil, err
	}
	return b, nil
}

func (b *Block) open(size uint64, writable, lock bool) error {
	if lock {
		if err := Lock(b.File); err != nil {
			return fmt.Errorf("lock RAM block %s (%s): %w", b.Name, b.Path, err)
		}
	}
	st, err := b.File.Stat()
	if err != nil {
		return fmt.Errorf("stat RAM block %s: %w", b.Name, err)
	}
	if uint64(st.Size()) != size || size%PageSize != 0 || size == 0 {
		return fmt.Errorf("RAM block %s: file %s has %d bytes, want %d (a whole number of pages)", b.Name, b.Path, st.Size(), size)
	}
	if b.Mem, err = Map(b.File, 0, int(size), writable); err != nil {
		return fmt.Errorf("map RAM block %s: %w", b.Name, err)
	}
	return nil
}

// Pages is the block's size in pages.
func (b *Block) Pages() uint64 { return uint64(len(b.Mem)) / PageSize }

// Page is page p of dmig's mapping.
func (b *Block) Page(p uint64) []byte { return b.Mem[p*PageSize : (p+1)*PageSize] }

// FindMappings sets Maps to pid's mappings of the block's file, which must
// be at least one.
func (b *Block) FindMappings(pid int) error {
	ms, err := FileMappingsOf(pid, b.File)
	if err != nil {
		return fmt.Errorf("find guest mappings of RAM block %s: %w", b.Name, err)
	}
	if len(ms) == 0 {
		return fmt.Errorf("guest pid %d does not map RAM block %s (%s)", pid, b.Name, b.Path)
	}
	b.Maps = ms
	return nil
}

// Remapped says how pid's mappings of the file differ from Maps, or ""
// when they are the same: a guest that remapped its RAM after tracking
// began has writes dmig cannot see.
func (b *Block) Remapped(pid int) (string, error) {
	now, err := FileMappingsOf(pid, b.File)
	if err != nil {
		return "", fmt.Errorf("find guest mappings of RAM block %s: %w", b.Name, err)
	}
	if len(now) != len(b.Maps) {
		return fmt.Sprintf("guest pid %d now maps RAM block %s %d times, %d when tracking began", pid, b.Name, len(now), len(b.Maps)), nil
	}
	for i, m := range b.Maps {
		if now[i].Start != m.Start || now[i].End != m.End || now[i].Offset != m.Offset {
			return fmt.Sprintf("guest pid %d remapped RAM block %s (was %#x-%#x, now %#x-%#x)", pid, b.Name, m.Start, m.End, now[i].Start, now[i].End), nil
		}
	}
	return "", nil
}

// GuestAddr is the address of page p in the guest's first mapping that
// covers it.
func (b *Block) GuestAddr(p uint64) (uintptr, bool) {
	off := p * PageSize
	for _, m := range b.Maps {
		if off >= m.Offset && off+PageSize <= m.Offset+uint64(m.Len()) {
			return m.Start + uintptr(off-m.Offset), true
		}
	}
	return 0, false
}

// Locate is the page of the block at guest address addr, if a mapping of
// the block covers it.
func (b *Block) Locate(addr uintptr) (uint64, bool) {
	for _, m := range b.Maps {
		if addr >= m.Start && addr < m.End {
			return (uint64(addr-m.Start) + m.Offset) / PageSize, true
		}
	}
	return 0, false
}

// DataPages calls fn for each run of pages [first, first+count) that holds
// data (not holes, SEEK_DATA), in order.
func (b *Block) DataPages(fn func(first, count uint64)) error {
	ext, err := Data(b.File, int64(len(b.Mem)))
	if err != nil {
		return fmt.Errorf("find data of RAM block %s: %w", b.Name, err)
	}
	for _, e := range ext {
		first, last := uint64(e.Off)/PageSize, min((uint64(e.Off+e.Len)+PageSize-1)/PageSize, b.Pages())
		if last > first {
			fn(first, last-first)
		}
	}
	return nil
}

// PunchHoles frees pages [first, first+count) of the file: the guest's
// registered mappings fault on them again.
func (b *Block) PunchHoles(first, count uint64) error {
	if err := PunchHole(b.File, int64(first*PageSize), int64(count*PageSize)); err != nil {
		return fmt.Errorf("free pages [%d, +%d) of RAM block %s: %w", first, count, b.Name, err)
	}
	return nil
}

// Close unmaps the file and closes it, which also releases its lock.
// Closing a nil Block does nothing.
func (b *Block) Close() error {
	if b == nil {
		return nil
	}
	var errs []error
	if b.Mem != nil {
		errs = append(errs, Unmap(b.Mem))
		b.Mem = nil
	}
	if b.File != nil {
		errs = append(errs, b.File.Close())
		b.File = nil
	}
	return errors.Join(errs...)
}
