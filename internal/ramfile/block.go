package ramfile

import (
	"errors"
	"fmt"
	"os"
)

// Block is one open RAM file and dmig's own MAP_SHARED mapping of all of it:
// what both engines hold per guest RAM block. The source maps it read-only
// and reads pages through Mem; the destination maps it writable and writes
// pages through Mem before the guest resumes. Block owns File and Mem until
// Close.
type Block struct {
	File *os.File
	Mem  []byte // dmig's mapping of the whole file
}

// OpenBlock opens the RAM file at path, read-write if writable, checks that
// it holds size bytes, and maps all of it. With lock it first takes the
// file's lock (Lock), so a second migration of the guest fails with
// ErrLocked before anything is mapped.
func OpenBlock(path string, size int64, writable, lock bool) (*Block, error) {
	flag := os.O_RDONLY
	if writable {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("open RAM file: %w", err)
	}
	b := &Block{File: f}
	if err := b.open(size, writable, lock); err != nil {
		f.Close()
		return nil, err
	}
	return b, nil
}

func (b *Block) open(size int64, writable, lock bool) error {
	if lock {
		if err := Lock(b.File); err != nil {
			return err
		}
	}
	st, err := b.File.Stat()
	if err != nil {
		return fmt.Errorf("stat RAM file: %w", err)
	}
	if st.Size() != size || size <= 0 {
		return fmt.Errorf("RAM file %s has %d bytes, want %d", b.File.Name(), st.Size(), size)
	}
	b.Mem, err = Map(b.File, 0, int(size), writable)
	return err
}

// Mappings returns pid's mappings of the block's file (FileMappingsOf).
func (b *Block) Mappings(pid int) ([]Mapping, error) { return FileMappingsOf(pid, b.File) }

// Data returns the extents of the file that are not holes (Data).
func (b *Block) Data() ([]Extent, error) { return Data(b.File, int64(len(b.Mem))) }

// PunchHole frees [off, off+length) of the file (PunchHole).
func (b *Block) PunchHole(off, length int64) error { return PunchHole(b.File, off, length) }

// Close unmaps the file and closes it, which also releases its lock.
func (b *Block) Close() error {
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
