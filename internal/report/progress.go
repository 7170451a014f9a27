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
