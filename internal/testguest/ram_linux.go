package testguest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mapFiles maps RAM files MAP_SHARED back to back in one reserved range, so
// the guest addresses them as one RAM (its page n is page n of their
// concatenation), without touching any page: an incoming guest maps its RAM
// before dmig has placed a single page, and a touched hole would be
// allocated (shmem allocates on read faults too).
func mapFiles(paths []string, writable bool) (files []*os.File, mem []byte, err error) {
	flag, prot := os.O_RDONLY, unix.PROT_READ
	if writable {
		flag, prot = os.O_RDWR, unix.PROT_READ|unix.PROT_WRITE
	}
	defer func() {
		if err != nil {
			for _, f := range files {
				f.Close()
			}
		}
	}()
	var sizes []int64
	var total int64
	for _, p := range paths {
		f, err := os.OpenFile(p, flag, 0)
		if err != nil {
			return files, nil, fmt.Errorf("open RAM file: %w", err)
		}
		files = append(files, f)
		fi, err := f.Stat()
		if err != nil {
			return files, nil, fmt.Errorf("stat RAM file %s: %w", p, err)
		}
		if fi.Size() < PageSize || fi.Size()%PageSize != 0 {
			return files, nil, fmt.Errorf("%w: %s is %d bytes, not a positive multiple of %d", ErrNotGuest, p, fi.Size(), PageSize)
		}
		sizes = append(sizes, fi.Size())
		total += fi.Size()
	}
	if len(files) == 0 {
		return nil, nil, fmt.Errorf("%w: no RAM file", ErrParams)
	}
	// Reserve the whole range, then put each file in its place: Munmap of
	// the reservation later unmaps them all.
	mem, err = unix.Mmap(-1, 0, int(total), unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return files, nil, fmt.Errorf("reserve %d bytes for RAM: %w", total, err)
	}
	flags := unix.MAP_SHARED | unix.MAP_FIXED
	if !writable {
		// An offline verify reads every page: populating the mapping up
		// front costs a fraction of one fault per page. Reading a shmem
		// hole allocates it either way (as the guest's own verify at
		// resume does).
		flags |= unix.MAP_POPULATE
	}
	var off int64
	for i, f := range files {
		if _, err := unix.MmapPtr(int(f.Fd()), 0, unsafe.Pointer(&mem[off]), uintptr(sizes[i]), prot, flags); err != nil {
			unix.Munmap(mem)
			return files, nil, fmt.Errorf("map RAM file %s: %w", paths[i], err)
		}
		off += sizes[i]
	}
	return files, mem, nil
}

func unmapFiles(files []*os.File, mem []byte) error {
	err := unix.Munmap(mem)
	for _, f := range files {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return fmt.Errorf("unmap RAM: %w", err)
	}
	return nil
}

// stopSelf stops the whole process until SIGCONT. The signal is sent to the
// calling thread, not the process: a process-directed SIGSTOP may be taken
// by another thread, and this one could run on (and touch RAM) before the
// group stop reaches it. A thread-directed one is handled before the tgkill
// syscall returns, so nothing after this call runs before SIGCONT.
func stopSelf() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := unix.Tgkill(unix.Getpid(), unix.Gettid(), unix.SIGSTOP); err != nil {
		return fmt.Errorf("stop self: %w", err)
	}
	return nil
}

// preadFull and pwriteFull move one 16 KiB database page between the data
// file and the four scattered guest pages of a frame in one system call.
func preadFull(f *os.File, pieces [][]byte, off int64) error {
	n, err := unix.Preadv(int(f.Fd()), pieces, off)
	if err != nil {
		return fmt.Errorf("read db page at %d of %s: %w", off, f.Name(), err)
	}
	if n != DBPageSize {
		return fmt.Errorf("read db page at %d of %s: short read of %d bytes", off, f.Name(), n)
	}
	return nil
}

func pwriteFull(f *os.File, pieces [][]byte, off int64) error {
	n, err := unix.Pwritev(int(f.Fd()), pieces, off)
	if err != nil {
		return fmt.Errorf("write db page at %d of %s: %w", off, f.Name(), err)
	}
	if n != DBPageSize {
		return fmt.Errorf("write db page at %d of %s: short write of %d bytes", off, f.Name(), n)
	}
	return nil
}

// WaitStopped waits until every thread of process pid is stopped (state T in
// /proc), which is when a SIGSTOP has fully taken effect.
func WaitStopped(ctx context.Context, pid int) error {
	for {
		stopped, err := isStopped(pid)
		if err != nil {
			return err
		}
		if stopped {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for process %d to stop: %w", pid, ctx.Err())
		case <-time.After(200 * time.Microsecond):
		}
	}
}

func isStopped(pid int) (bool, error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	if err != nil || len(tasks) == 0 {
		return false, fmt.Errorf("list threads of process %d: %w", pid, os.ErrNotExist)
	}
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			return false, fmt.Errorf("read %s: %w", t, err)
		}
		// The state follows the command name, which is in parentheses
		// and may itself contain spaces or parentheses.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || i+2 >= len(s) {
			return false, fmt.Errorf("parse %s: %q", t, s)
		}
		switch s[i+2] {
		case 'T', 't':
		case 'Z', 'X':
			return false, fmt.Errorf("wait for process %d to stop: it exited", pid)
		default:
			return false, nil
		}
	}
	return true, nil
}
