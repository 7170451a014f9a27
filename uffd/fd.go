package uffd

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// PageSize is the base page size dmig tracks and places (x86-64).
const PageSize = 4096

// Mode is a UFFDIO_REGISTER mode.
type Mode uint64

const (
	ModeMissing Mode = registerModeMissing
	ModeWP      Mode = registerModeWP
	ModeMinor   Mode = registerModeMinor
)

// CopyMode modifies UFFDIO_COPY.
type CopyMode uint64

const (
	// CopyDontWake places the page without waking faulting threads; a later
	// Wake does.
	CopyDontWake CopyMode = copyModeDontWake
	// CopyWP places the page write-protected, so later writes are still
	// tracked. Without it the kernel marks the placed page written.
	CopyWP CopyMode = copyModeWP
)

// Range is a page-aligned address range in the memory a userfaultfd is
// bound to: [Start, Start+Len).
type Range struct {
	Start uintptr
	Len   uintptr
}

// End is the first address past the range.
func (r Range) End() uintptr { return r.Start + r.Len }

func (r Range) String() string { return fmt.Sprintf("[%#x, %#x)", r.Start, r.End()) }

// FD is a userfaultfd bound to one process's memory: this process's (Open)
// or another's (Attach). Every ioctl is made from this process either way.
//
// The FD owns its file descriptor and nobody else may close it. Close it
// explicitly at a known point: closing releases every thread blocked on a
// missing page, and on shared memory those threads then see a zero page
// (see the package documentation). There is no finalizer.
type FD struct {
	fd       int
	pid      int
	target   int // the target's own copy (AttachKept), -1 if none
	features Feature

	mu     sync.RWMutex // Close takes it for writing; ioctls for reading.
	closed bool
}

// Open creates a userfaultfd for this process's memory and performs the API
// handshake asking for features. It fails with ErrNotSupported naming any
// feature the kernel does not offer.
func Open(features Feature) (*FD, error) {
	fd, _, errno := unix.Syscall(sysUserfaultfd, uintptr(unix.O_CLOEXEC|unix.O_NONBLOCK), 0, 0)
	if errno != 0 {
		return nil, fmt.Errorf("create userfaultfd: %w", translateCreate(errno))
	}
	u := &FD{fd: int(fd), pid: os.Getpid(), target: -1}
	if err := u.handshake(features); err != nil {
		u.Close()
		return nil, err
	}
	return u, nil
}

// Probe reports the features this kernel's userfaultfd offers. It uses a
// user-mode-only uffd, which any process may create.
func Probe() (Feature, error) {
	fd, _, errno := unix.Syscall(sysUserfaultfd, uintptr(unix.O_CLOEXEC|unix.O_NONBLOCK|userModeOnly), 0, 0)
	if errno != 0 {
		if errno == unix.ENOSYS {
			return 0, withErrno(ErrNotSupported, errno, "kernel built without CONFIG_USERFAULTFD")
		}
		return 0, fmt.Errorf("create userfaultfd: %w", errno)
	}
	defer unix.Close(int(fd))
	api := uffdioAPI{API: uffdAPI}
	if err := ioctl(int(fd), ioctlAPI, unsafe.Pointer(&api)); err != nil {
		return 0, fmt.Errorf("userfaultfd api handshake: %w", err)
	}
	return Feature(api.Features), nil
}

func translateCreate(errno unix.Errno) error {
	switch errno {
	case unix.EPERM:
		return withErrno(ErrPermission, errno,
			"the process may not create a userfaultfd that handles kernel faults: give it CAP_SYS_PTRACE or set the sysctl vm.unprivileged_userfaultfd=1")
	case unix.ENOSYS:
		return withErrno(ErrNotSupported, errno, "kernel built without CONFIG_USERFAULTFD")
	}
	return errno
}

// handshake performs UFFDIO_API. The kernel accepts it once per uffd.
func (u *FD) handshake(want Feature) error {
	api := uffdioAPI{API: uffdAPI, Features: uint64(want)}
	if err := ioctl(u.fd, ioctlAPI, unsafe.Pointer(&api)); err != nil {
		if errors.Is(err, unix.EINVAL) {
			// The kernel rejects unknown feature bits with EINVAL; say which.
			if have, perr := Probe(); perr == nil && want&^have != 0 {
				return fmt.Errorf("userfaultfd api handshake: features %v: %w", want&^have, withErrno(ErrNotSupported, unix.EINVAL, ""))
			}
		}
		return fmt.Errorf("userfaultfd api handshake with features %v: %w", want, err)
	}
	if missing := want &^ Feature(api.Features); missing != 0 {
		return fmt.Errorf("userfaultfd api handshake: features %v: %w", missing, ErrNotSupported)
	}
	// The kernel answers with every feature it offers but enables only
	// those asked for.
	u.features = want
	return nil
}

// Features are the features enabled at the handshake.
func (u *FD) Features() Feature { return u.features }

// Pid is the process whose memory the uffd is bound to.
func (u *FD) Pid() int { return u.pid }

// TargetFD is the number of the copy the target process holds (AttachKept,
// Reacquire), or -1 if it holds none.
func (u *FD) TargetFD() int { return u.target }

// Number is this process's file descriptor number of the uffd (a process
// that opened its own uffd and hands it to dmig names it so).
func (u *FD) Number() int { return u.fd }

// Close closes the userfaultfd. Threads of the target blocked on a missing
// page are released by the kernel (see the package documentation). Close is
// idempotent; ioctls after Close return ErrClosed.
func (u *FD) Close() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil
	}
	u.closed = true
	if err := unix.Close(u.fd); err != nil {
		return fmt.Errorf("close userfaultfd: %w", err)
	}
	return nil
}

// do runs an ioctl on the uffd unless it is closed. The read lock keeps the
// fd number from being closed and reused under a running ioctl.
func (u *FD) do(req uintptr, arg unsafe.Pointer) error {
	u.mu.RLock()
	defer u.mu.RUnlock()
	if u.closed {
		return ErrClosed
	}
	return ioctl(u.fd, req, arg)
}

func ioctl(fd int, req uintptr, arg unsafe.Pointer) error {
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return errno
		}
		return nil
	}
}

// Register registers r with the given modes (ModeMissing, ModeWP or both on
// one uffd: a second uffd on the same range gets EBUSY). It returns the
// ioctls the kernel allows on the range as a bit set.
func (u *FD) Register(r Range, mode Mode) (uint64, error) {
	reg := uffdioRegister{Range: uffdioRange{Start: uint64(r.Start), Len: uint64(r.Len)}, Mode: uint64(mode)}
	err := u.do(ioctlRegister, unsafe.Pointer(&reg))
	runtime.KeepAlive(&reg)
	if err != nil {
		return 0, fmt.Errorf("register %v of pid %d (mode %#x): %w", r, u.pid, uint64(mode), translateRegister(err))
	}
	if mode&ModeMissing != 0 && reg.Ioctls&ioctlBitCopy == 0 {
		return reg.Ioctls, fmt.Errorf("register %v of pid %d: UFFDIO_COPY not allowed on it: %w", r, u.pid, ErrNotSupported)
	}
	if mode&ModeWP != 0 && reg.Ioctls&ioctlBitWriteProtect == 0 {
		return reg.Ioctls, fmt.Errorf("register %v of pid %d: UFFDIO_WRITEPROTECT not allowed on it: %w", r, u.pid, ErrNotSupported)
	}
	return reg.Ioctls, nil
}

func translateRegister(err error) error {
	var errno unix.Errno
	if !errors.As(err, &errno) {
		return err
	}
	switch errno {
	case unix.EBUSY:
		return withErrno(ErrBusy, errno,
			"the range is registered with another userfaultfd: is another dmig migrating this VM? Stop it first")
	case unix.EPERM:
		return withErrno(ErrPermission, errno,
			"the mapping is not writable by the target, or write-protect mode is not allowed on it")
	case unix.EINVAL:
		return withErrno(ErrNotSupported, errno,
			"range not page-aligned, not fully mapped, or memory type/mode not supported (shmem needs FeatureMissingShmem; WP needs FeaturePagefaultFlagWP)")
	case unix.ENOMEM, unix.ESRCH:
		return withErrno(ErrTargetGone, errno, "")
	}
	return errno
}

// Unregister removes r from the uffd. Threads blocked on faults in r are woken.
func (u *FD) Unregister(r Range) error {
	rg := uffdioRange{Start: uint64(r.Start), Len: uint64(r.Len)}
	if err := u.do(ioctlUnregister, unsafe.Pointer(&rg)); err != nil {
		return fmt.Errorf("unregister %v of pid %d: %w", r, u.pid, translateMemErr(err))
	}
	return nil
}

// translatePlaceErr is translateMemErr for UFFDIO_COPY and ZEROPAGE,
// where ENOMEM is the page's allocation failing (shmem answers a full
// file system so) and a target that is gone answers ESRCH.
func translatePlaceErr(err error) error {
	var errno unix.Errno
	switch {
	case !errors.As(err, &errno):
		return err
	case errno == unix.ENOMEM || errno == unix.ENOSPC:
		return withErrno(ErrNoMemory, errno, "")
	case errno == unix.ESRCH:
		return withErrno(ErrTargetGone, errno, "")
	}
	return err
}

func translateMemErr(err error) error {
	var errno unix.Errno
	if errors.As(err, &errno) && (errno == unix.ESRCH || errno == unix.ENOMEM) {
		return withErrno(ErrTargetGone, errno, "")
	}
	return err
}

// Copy atomically places src at dst (both multiples of PageSize) and wakes
// threads waiting there (unless CopyDontWake). It returns the bytes placed.
// When a page in the range is already present it stops there and returns
// the bytes placed before it and an error matching ErrExists; CopyRange
// skips such pages instead. A transient EAGAIN (the target's mappings are
// changing) is retried, continuing after any partial copy.
func (u *FD) Copy(dst uintptr, src []byte, mode CopyMode) (int, error) {
	if len(src) == 0 {
		return 0, nil
	}
	done := 0
	for done < len(src) {
		c := uffdioCopy{
			Dst:  uint64(dst) + uint64(done),
			Src:  uint64(uintptr(unsafe.Pointer(&src[done]))),
			Len:  uint64(len(src) - done),
			Mode: uint64(mode),
		}
		err := u.do(ioctlCopy, unsafe.Pointer(&c))
		runtime.KeepAlive(src)
		if c.Copy > 0 {
			done += int(c.Copy)
		}
		if err == nil {
			continue
		}
		switch {
		case errors.Is(err, unix.EAGAIN):
			continue
		case errors.Is(err, unix.EEXIST):
			return done, fmt.Errorf("copy to %#x of pid %d: %w", dst+uintptr(done), u.pid, withErrno(ErrExists, unix.EEXIST, ""))
		default:
			return done, fmt.Errorf("copy %d bytes to %#x of pid %d: %w", len(src)-done, dst+uintptr(done), u.pid, translatePlaceErr(err))
		}
	}
	return done, nil
}

// CopyRange places src at dst like Copy but skips pages that are already
// present, returning how many bytes it placed and how many it found present.
// Threads waiting on a skipped page are woken: someone else placed it.
func (u *FD) CopyRange(dst uintptr, src []byte, mode CopyMode) (placed, present int, err error) {
	for off := 0; off < len(src); {
		n, err := u.Copy(dst+uintptr(off), src[off:], mode)
		placed += n
		off += n
		if err == nil {
			break
		}
		if !errors.Is(err, ErrExists) {
			return placed, present, err
		}
		if mode&CopyDontWake == 0 {
			if werr := u.Wake(Range{Start: dst + uintptr(off), Len: PageSize}); werr != nil {
				return placed, present, werr
			}
		}
		present += PageSize
		off += PageSize
	}
	return placed, present, nil
}

// ZeroPage maps zero pages over r (a shared zero page for anonymous memory,
// zero-filled pages for shmem). EEXIST is reported like Copy's.
func (u *FD) ZeroPage(r Range, dontWake bool) (int, error) {
	done := uintptr(0)
	for done < r.Len {
		z := uffdioZeropage{Range: uffdioRange{Start: uint64(r.Start + done), Len: uint64(r.Len - done)}}
		if dontWake {
			z.Mode = zeropageModeDontWake
		}
		err := u.do(ioctlZeropage, unsafe.Pointer(&z))
		if z.Zeropage > 0 {
			done += uintptr(z.Zeropage)
		}
		if err == nil {
			continue
		}
		switch {
		case errors.Is(err, unix.EAGAIN):
			continue
		case errors.Is(err, unix.EEXIST):
			return int(done), fmt.Errorf("zero page at %#x of pid %d: %w", r.Start+done, u.pid, withErrno(ErrExists, unix.EEXIST, ""))
		default:
			return int(done), fmt.Errorf("zero pages %v of pid %d: %w", r, u.pid, translatePlaceErr(err))
		}
	}
	return int(done), nil
}

// Wake wakes threads waiting on faults in r.
func (u *FD) Wake(r Range) error {
	rg := uffdioRange{Start: uint64(r.Start), Len: uint64(r.Len)}
	if err := u.do(ioctlWake, unsafe.Pointer(&rg)); err != nil {
		return fmt.Errorf("wake %v of pid %d: %w", r, u.pid, translateMemErr(err))
	}
	return nil
}

// WriteProtect sets (wp) or clears write protection on r, which must be
// registered with ModeWP. Clearing wakes threads blocked on a WP fault
// unless dontWake.
func (u *FD) WriteProtect(r Range, wp, dontWake bool) error {
	w := uffdioWriteProtect{Range: uffdioRange{Start: uint64(r.Start), Len: uint64(r.Len)}}
	if wp {
		w.Mode |= wpModeWP
	}
	if dontWake {
		w.Mode |= wpModeDontWake
	}
	if err := u.do(ioctlWriteProtect, unsafe.Pointer(&w)); err != nil {
		return fmt.Errorf("write-protect %v of pid %d (wp=%v): %w", r, u.pid, wp, translateMemErr(err))
	}
	return nil
}
