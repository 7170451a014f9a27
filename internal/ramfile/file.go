package ramfile

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Map maps length bytes of f at offset off MAP_SHARED, read-write if
// writable. dmig maps guest RAM files this way for bulk reads (source) and
// bulk writes before resume (destination). Unmap it with Unmap.
func Map(f *os.File, off int64, length int, writable bool) ([]byte, error) {
	prot := unix.PROT_READ
	if writable {
		prot |= unix.PROT_WRITE
	}
	b, err := unix.Mmap(int(f.Fd()), off, length, prot, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map %d bytes of %s at %d: %w", length, f.Name(), off, err)
	}
	return b, nil
}

// Unmap unmaps a mapping made by Map.
func Unmap(b []byte) error {
	if err := unix.Munmap(b); err != nil {
		return fmt.Errorf("unmap %d bytes: %w", len(b), err)
	}
	return nil
}

// PunchHole frees [off, off+length) of f, keeping its size. On shmem a
// MISSING fault fires only for holes, so this is how a page becomes missing.
func PunchHole(f *os.File, off, length int64) error {
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length); err != nil {
		return fmt.Errorf("punch hole [%d, %d) in %s: %w", off, off+length, f.Name(), err)
	}
	return nil
}

// Extent is a byte range of a file: [Off, Off+Len).
type Extent struct {
	Off, Len int64
}

// Data returns the extents of the first size bytes of f that are not holes,
// in order, found with SEEK_DATA/SEEK_HOLE: pages in a hole were never
// written (or were punched) and read as zero, so they need not be read. The
// last extent is cut at size. Data moves f's file offset.
func Data(f *os.File, size int64) ([]Extent, error) {
	var out []Extent
	for off := int64(0); off < size; {
		d, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // no data after off
		}
		if err != nil {
			return nil, fmt.Errorf("seek data of %s from %d: %w", f.Name(), off, err)
		}
		if d >= size {
			break
		}
		h, err := unix.Seek(int(f.Fd()), d, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("seek hole of %s from %d: %w", f.Name(), d, err)
		}
		out = append(out, Extent{Off: d, Len: min(h, size) - d})
		off = h
	}
	return out, nil
}

// Lock takes an exclusive lock on f without waiting: one migration of a
// guest at a time, since the RAM file is the guest's identity. The lock is
// flock(2)'s, so it belongs to f's open file description and ends when f is
// closed. If another process holds it, the error wraps ErrLocked and
// EWOULDBLOCK.
func Lock(f *os.File) error {
	err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return fmt.Errorf("lock %s: %w (%w)", f.Name(), ErrLocked, err)
	}
	if err != nil {
		return fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return nil
}
