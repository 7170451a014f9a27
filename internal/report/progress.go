package report

import "time"

// Phase is the stage a migration is in, for progress displays.
type Phase string

const (
	// PhasePrecopy: pre-copy passes run while the guest runs on the source.
	PhasePrecopy Phase = "precopy"
	// PhasePostcopy: the destination runs the guest; the source pushes and
	// serves the pages it still owes.
	PhasePostcopy Phase = "postcopy"
	// PhaseDone: the destination reported completion.
	PhaseDone Phase = "done"
)

// Progress is a snapshot of a running migration, as the source sees it. The
// engine sends one after each pre-copy pass and periodically during
// post-copy; it is for display, not for decisions.
type Progress struct {
	Phase      Phase
	Iteration  int
	Elapsed    time.Duration
	GuestPages uint64 // pages of guest RAM in all
	Remaining  uint64 // pages still to send (dirty, or owed to post-copy)
	DataPages  uint64 // data pages sent so far
	ZeroPages  uint64 // zero pages sent so far (as flags)
	BytesSent  uint64
	Rate       float64 // bytes/s over the last interval
	// MaxBandwidth is the bandwidth cap at the time, bytes/s (0: none).
	MaxBandwidth uint64
}

// ETA estimates the time to send what remains at the current rate; zero
// when unknown.
func (p Progress) ETA() time.Duration {
	if p.Rate <= 0 {
		return 0
	}
	return time.Duration(float64(p.Remaining*4096) / p.Rate * float64(time.Second))
}

// Phases a live view (Live) also shows, besides those of Progress.
const (
	// PhaseConnecting: the session to the destination is being set up.
	PhaseConnecting Phase = "connecting"
	// PhaseSwitchover: the guest is paused (or being paused) and the last
	// of pre-copy, the device state and Switchover go out; Go not yet.
	PhaseSwitchover Phase = "switchover"
	// PhaseReady (destination): Ready sent, waiting for Go.
	PhaseReady Phase = "ready"
)

// Roles of a Live view.
const (
	RoleSource      = "source"
	RoleDestination = "destination"
)

// Live is a running migration's raw figures at one instant, as its engine
// sees them: what dmig status derives its rate, progress and ETA from
// (internal/ctl). Counters only grow, except Left.
type Live struct {
	Role    string
	Guest   string
	Session string // hex session ID; empty while connecting
	Mode    string
	Phase   Phase
	Pass    int // the pre-copy pass running, or the last one
	// GoSent: the source sent Go (or tried to): the destination may run
	// the guest and the source can no longer take it back.
	GoSent        bool
	BytesSent     uint64
	BytesReceived uint64
	GuestPages    uint64
	// PagesDone counts pages sent (source: data, zero and storage
	// references) or placed (destination) so far; a page sent again counts
	// again.
	PagesDone uint64
	Left      PagesLeft
	Downtime  time.Duration // the downtime budget (source)
	Started   time.Time
}

// PagesLeft are the pages still to move, by the route they are expected to
// take.
type PagesLeft struct {
	// Data: pages to send as data or zero (source: pending, less those the
	// current layout names).
	Data uint64 `json:"data"`
	// StorageRefs: pages to go (source) or being read and checked
	// (destination) as storage references.
	StorageRefs uint64 `json:"storage_refs"`
	// PostcopyMissing: after switchover, pages the destination still lacks
	// (source: still owes).
	PostcopyMissing uint64 `json:"postcopy_missing"`
}

// Total is every page left.
func (l PagesLeft) Total() uint64 { return l.Data + l.StorageRefs + l.PostcopyMissing }
