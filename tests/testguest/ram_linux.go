package testguest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// mapFile maps a whole RAM file MAP_SHARED without touching any page: an
// incoming guest maps its RAM before dmig has placed a single page, and a
// touched hole would be allocated (shmem allocates on read faults too).
func mapFile(path string, writable bool) (*os.File, []byte, error) {
	flag, prot := os.O_RDONLY, unix.PROT_READ
	if writable {
		flag, prot = os.O_RDWR, unix.PROT_READ|unix.PROT_WRITE
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open RAM file: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("stat RAM file %s: %w", path, err)
	}
	size := fi.Size()
	if size < PageSize || size%PageSize != 0 {
		f.Close()
		return nil, nil, fmt.Errorf("%w: %s is %d bytes, not a positive multiple of %d", ErrNotGuest, path, size, PageSize)
	}
	flags := unix.MAP_SHARED
	if !writable {
		// An offline verify reads every page: populating the mapping up
		// front costs a fraction of one fault per page.
		flags |= unix.MAP_POPULATE
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(size), prot, flags)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("map RAM file %s: %w", path, err)
	}
	return f, mem, nil
}

func unmapFile(f *os.File, mem []byte) error {
	err := unix.Munmap(mem)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("unmap RAM file: %w", err)
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
