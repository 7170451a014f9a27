package layout

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"sort"
)

// PageSize is the unit of a layout: one guest page, one 4 KiB block on disk.
const PageSize = 4096

// DiskID indexes Layout.Disks.
type DiskID uint16

// Disk names one disk of the layout. Name is the identity the host maps to a
// path (see ParseDiskFlag): a guest device name such as "vda", or
// "serial:XYZ" for a disk with a serial number.
type Disk struct {
	ID   DiskID
	Name string
}

// Run maps Pages consecutive guest pages, starting at guest-physical page
// number GuestPage (address / PageSize), to consecutive 4 KiB blocks on Disk
// starting at byte Offset.
type Run struct {
	GuestPage uint64
	Pages     uint32
	Disk      DiskID
	Offset    uint64
}

// End returns the guest page just past the run.
func (r Run) End() uint64 { return r.GuestPage + uint64(r.Pages) }

// Ref is one guest page of a layout and where its copy lives.
type Ref struct {
	GuestPage uint64
	Disk      DiskID
	Offset    uint64 // byte offset on Disk
}

// Layout is the storage layout of a guest: which guest pages have an
// identical copy on which disk, at which offset. Generation orders layouts
// taken from the same guest (larger is newer).
type Layout struct {
	Generation uint64
	Disks      []Disk
	Runs       []Run
}

// Pages returns the number of guest pages the layout names.
func (l *Layout) Pages() uint64 {
	var n uint64
	for _, r := range l.Runs {
		n += uint64(r.Pages)
	}
	return n
}

// Each calls fn for every page of the layout in guest-page order until fn
// returns false.
func (l *Layout) Each(fn func(Ref) bool) {
	for _, r := range l.Runs {
		for i := uint64(0); i < uint64(r.Pages); i++ {
			if !fn(Ref{GuestPage: r.GuestPage + i, Disk: r.Disk, Offset: r.Offset + i*PageSize}) {
				return
			}
		}
	}
}

// Lookup returns the reference for a guest page, if the layout names it.
// Runs must be sorted (as every valid layout's are).
func (l *Layout) Lookup(guestPage uint64) (Ref, bool) {
	i := sort.Search(len(l.Runs), func(i int) bool { return l.Runs[i].End() > guestPage })
	if i == len(l.Runs) || l.Runs[i].GuestPage > guestPage {
		return Ref{}, false
	}
	r := l.Runs[i]
	return Ref{GuestPage: guestPage, Disk: r.Disk, Offset: r.Offset + (guestPage-r.GuestPage)*PageSize}, true
}

// Disk returns the disk with the given id.
func (l *Layout) Disk(id DiskID) (Disk, bool) {
	if int(id) >= len(l.Disks) {
		return Disk{}, false
	}
	return l.Disks[id], true
}

// Validate checks the layout's invariants (see the package doc) and that
// every run lies below guestPages. Errors wrap ErrOutOfRange, ErrOverlap,
// ErrUnsorted, ErrEmptyRun, ErrUnknownDisk or ErrDisk.
func (l *Layout) Validate(guestPages uint64) error {
	if err := l.check(); err != nil {
		return err
	}
	if n := len(l.Runs); n > 0 && l.Runs[n-1].End() > guestPages {
		r := l.Runs[n-1]
		return fmt.Errorf("run at guest page %#x+%d: %w (guest has %d pages)", r.GuestPage, r.Pages, ErrOutOfRange, guestPages)
	}
	return nil
}

// check verifies everything Validate does except the guest size.
func (l *Layout) check() error {
	if len(l.Disks) > math.MaxUint16+1 {
		return fmt.Errorf("%d disks: %w", len(l.Disks), ErrDisk)
	}
	names := make(map[string]struct{}, len(l.Disks))
	for i, d := range l.Disks {
		if int(d.ID) != i {
			return fmt.Errorf("disk %d has id %d: %w", i, d.ID, ErrDisk)
		}
		if d.Name == "" {
			return fmt.Errorf("disk %d has no name: %w", i, ErrDisk)
		}
		if _, dup := names[d.Name]; dup {
			return fmt.Errorf("disk name %q used twice: %w", d.Name, ErrDisk)
		}
		names[d.Name] = struct{}{}
	}
	var end uint64
	for i, r := range l.Runs {
		if r.Pages == 0 {
			return fmt.Errorf("run %d at guest page %#x: %w", i, r.GuestPage, ErrEmptyRun)
		}
		if int(r.Disk) >= len(l.Disks) {
			return fmt.Errorf("run %d at guest page %#x names disk %d: %w", i, r.GuestPage, r.Disk, ErrUnknownDisk)
		}
		if r.GuestPage > math.MaxUint64-uint64(r.Pages) || r.Offset > math.MaxUint64-uint64(r.Pages)*PageSize {
			return fmt.Errorf("run %d at guest page %#x: %w (overflows)", i, r.GuestPage, ErrOutOfRange)
		}
		if i > 0 {
			switch prev := l.Runs[i-1]; {
			case r.GuestPage < prev.GuestPage:
				return fmt.Errorf("run %d at guest page %#x after %#x: %w", i, r.GuestPage, prev.GuestPage, ErrUnsorted)
			case r.GuestPage < end:
				return fmt.Errorf("run %d at guest page %#x overlaps run ending at %#x: %w", i, r.GuestPage, end, ErrOverlap)
			}
		}
		end = r.End()
	}
	return nil
}

// Build coalesces per-page references into sorted runs: consecutive guest
// pages on the same disk at consecutive 4 KiB offsets become one run. The
// result has no Disks and Generation 0: the caller sets them. Two refs for
// the same guest page are an error (ErrOverlap). Build does not modify refs.
func Build(refs []Ref) (*Layout, error) {
	byPage := func(a, b Ref) int { return cmp.Compare(a.GuestPage, b.GuestPage) }
	if !slices.IsSortedFunc(refs, byPage) {
		refs = slices.Clone(refs)
		slices.SortFunc(refs, byPage)
	}
	l := &Layout{}
	for i, ref := range refs {
		if i > 0 && refs[i-1].GuestPage == ref.GuestPage {
			return nil, fmt.Errorf("guest page %#x named twice: %w", ref.GuestPage, ErrOverlap)
		}
		if n := len(l.Runs); n > 0 {
			last := &l.Runs[n-1]
			if last.End() == ref.GuestPage && last.Disk == ref.Disk &&
				last.Offset+uint64(last.Pages)*PageSize == ref.Offset && last.Pages < math.MaxUint32 {
				last.Pages++
				continue
			}
		}
		l.Runs = append(l.Runs, Run{GuestPage: ref.GuestPage, Pages: 1, Disk: ref.Disk, Offset: ref.Offset})
	}
	return l, nil
}
