package uffd

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// EventKind is the kind of a userfaultfd message.
type EventKind uint8

const (
	EventPagefault EventKind = eventPagefault
	EventFork      EventKind = eventFork
	EventRemap     EventKind = eventRemap
	EventRemove    EventKind = eventRemove
	EventUnmap     EventKind = eventUnmap
)

func (k EventKind) String() string {
	switch k {
	case EventPagefault:
		return "pagefault"
	case EventFork:
		return "fork"
	case EventRemap:
		return "remap"
	case EventRemove:
		return "remove"
	case EventUnmap:
		return "unmap"
	}
	return fmt.Sprintf("event(%#x)", uint8(k))
}

// Msg is one decoded userfaultfd message. Which fields are set depends on
// Kind: Addr/Write/WP/Minor/TID for a page fault (TID needs
// FeatureThreadID); From/To/Len for remap; Start/End for remove and unmap;
// ForkFD for fork (a new uffd now owned by the receiver: close it).
type Msg struct {
	Kind  EventKind
	Addr  uintptr
	Write bool
	WP    bool
	Minor bool
	TID   uint32

	From, To uintptr
	Len      uint64

	Start, End uintptr

	ForkFD int
}

func decodeMsg(m *uffdMsg) Msg {
	out := Msg{Kind: EventKind(m.Event)}
	switch out.Kind {
	case EventPagefault:
		flags := m.Arg[0]
		out.Addr = uintptr(m.Arg[1])
		out.Write = flags&pagefaultFlagWrite != 0
		out.WP = flags&pagefaultFlagWP != 0
		out.Minor = flags&pagefaultFlagMinor != 0
		out.TID = uint32(m.Arg[2])
	case EventRemap:
		out.From, out.To, out.Len = uintptr(m.Arg[0]), uintptr(m.Arg[1]), m.Arg[2]
	case EventRemove, EventUnmap:
		out.Start, out.End = uintptr(m.Arg[0]), uintptr(m.Arg[1])
	case EventFork:
		out.ForkFD = int(uint32(m.Arg[0]))
	}
	return out
}

// maxReadMsgs bounds one read(2) of the uffd.
const maxReadMsgs = 64

// ReadMsgs reads messages queued on the uffd without blocking, decoding up
// to len(dst) (at most 64 per call). It returns 0 and no error when none is
// queued.
func (u *FD) ReadMsgs(dst []Msg) (int, error) {
	if len(dst) == 0 {
		return 0, nil
	}
	var raw [maxReadMsgs]uffdMsg
	want := min(len(dst), maxReadMsgs)
	buf := unsafe.Slice((*byte)(unsafe.Pointer(&raw[0])), want*msgSize)
	n, err := u.read(buf)
	if err != nil {
		return 0, err
	}
	if n%msgSize != 0 {
		return 0, fmt.Errorf("read userfaultfd of pid %d: %d bytes is not a whole number of messages", u.pid, n)
	}
	for i := range n / msgSize {
		dst[i] = decodeMsg(&raw[i])
	}
	return n / msgSize, nil
}

func (u *FD) read(buf []byte) (int, error) {
	u.mu.RLock()
	defer u.mu.RUnlock()
	if u.closed {
		return 0, ErrClosed
	}
	for {
		n, err := unix.Read(u.fd, buf)
		switch {
		case err == nil:
			return n, nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return 0, nil
		default:
			return 0, fmt.Errorf("read userfaultfd of pid %d: %w", u.pid, err)
		}
	}
}
