package layout

import (
	"encoding/binary"
	"fmt"
	"time"
)

// Info is what a layout server says about the layout it answers with, and
// about the buffer pool as it is when it answers: enough for the host to
// judge a cached layout (Judge) without knowing the database's internals.
// Durations are measured by the server's clock, as ages, so the two hosts'
// clocks need not agree. Zero figures are unknown.
type Info struct {
	// Cached: the layout is one taken earlier, not for this request.
	Cached bool
	// Age is how long before the answer the layout's walk started.
	Age time.Duration
	// PoolPages and DirtyPages are the buffer pool's data and dirty frames
	// at the answer, in 4 KiB pages, from the server's own counters: the
	// pool's clean pages are the difference.
	PoolPages, DirtyPages uint64
	// LoadAge is how long before the answer the pool last finished loading
	// (from the server's load at start-up or a later load); Loading: a load
	// is under way.
	LoadAge time.Duration
	Loading bool
}

// CleanPages is the pool's clean pages at the answer, as its counters
// give them.
func (i Info) CleanPages() uint64 {
	if i.DirtyPages > i.PoolPages {
		return 0
	}
	return i.PoolPages - i.DirtyPages
}

// farLess: a layout naming less than this share of the pool's clean pages
// covers "far less" than the pool: a walk names every clean frame of a
// tablespace on a disk the host knows, so a fresh one comes close.
const farLess = 0.5

// Judge says why a layout naming named pages, described by i, should not
// be used as it is (a fresh one is likely to name many more pages), or ""
// if it may: it was taken before the pool's last load finished, the pool
// is loading, or it names far less than the pool's clean pages.
func Judge(i Info, named uint64) string {
	switch {
	case i.Loading:
		return fmt.Sprintf("the buffer pool is loading (layout taken %s ago)", age(i.Age))
	case i.LoadAge > 0 && i.LoadAge < i.Age:
		return fmt.Sprintf("the layout was taken %s ago, before the buffer pool's last load finished %s ago",
			age(i.Age), age(i.LoadAge))
	case i.CleanPages() > 0 && float64(named) < farLess*float64(i.CleanPages()):
		return fmt.Sprintf("the layout names %d pages, the buffer pool holds %d clean ones (layout taken %s ago)",
			named, i.CleanPages(), age(i.Age))
	}
	return ""
}

// age rounds d for a message: to the second, to the millisecond below one.
func age(d time.Duration) time.Duration {
	if d < time.Second {
		return d.Round(time.Millisecond)
	}
	return d.Round(time.Second)
}

// The info encoding, a response payload's prefix under statusInfo (all
// varints): version(1 byte), flags uvarint (bit 0 cached, bit 1 loading),
// age µs, pool pages, dirty pages, load age µs. A decoder ignores what
// follows the fields it knows, so later versions may add fields.
const infoVersion = 1

func (i Info) marshal() []byte {
	var flags uint64
	if i.Cached {
		flags |= 1
	}
	if i.Loading {
		flags |= 2
	}
	b := []byte{infoVersion}
	for _, v := range []uint64{flags, uint64(max(i.Age, 0).Microseconds()), i.PoolPages, i.DirtyPages, uint64(max(i.LoadAge, 0).Microseconds())} {
		b = binary.AppendUvarint(b, v)
	}
	return b
}

// maxInfoAge bounds decoded ages (a century), so they fit a Duration.
const maxInfoAge = uint64(100 * 365 * 24 * time.Hour / time.Microsecond)

func unmarshalInfo(b []byte) (Info, error) {
	if len(b) == 0 || b[0] < infoVersion {
		return Info{}, fmt.Errorf("layout info: %w", ErrVersion)
	}
	var v [5]uint64
	rest := b[1:]
	for k := range v {
		x, n := binary.Uvarint(rest)
		if n <= 0 {
			return Info{}, fmt.Errorf("layout info field %d: %w", k, ErrMalformed)
		}
		v[k], rest = x, rest[n:]
	}
	if v[1] > maxInfoAge || v[4] > maxInfoAge {
		return Info{}, fmt.Errorf("layout info: age out of range: %w", ErrMalformed)
	}
	return Info{Cached: v[0]&1 != 0, Loading: v[0]&2 != 0, Age: time.Duration(v[1]) * time.Microsecond,
		PoolPages: v[2], DirtyPages: v[3], LoadAge: time.Duration(v[4]) * time.Microsecond}, nil
}
