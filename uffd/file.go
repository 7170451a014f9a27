package uffd

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// MapShared maps length bytes of f at offset off MAP_SHARED, read-write if
// writable. dmig maps guest RAM files this way for bulk reads (source) and
// bulk writes before resume (destination). Unmap it with Unmap.
func MapShared(f *os.File, off int64, length int, writable bool) ([]byte, error) {
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

// Unmap unmaps a mapping made by MapShared.
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
