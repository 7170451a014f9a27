package precopy

import "time"

// decision is what the policy says after an iteration.
type decision int

const (
	iterate  decision = iota // another pre-copy pass
	finish                   // pause and send the remainder during downtime
	postcopy                 // pause and leave the remainder to post-copy
)

// policy decides when to switch over, from the bandwidth and dirty rate
// measured in the passes so far against the downtime budget.
type policy struct {
	mode          Mode
	budget        time.Duration
	maxIterations int
	// switchCost is the part of downtime that does not depend on the
	// remainder (pause, final scan, resume); learnt estimates start here.
	switchCost time.Duration

	history []uint64 // remaining pages after each pass
}

// next decides after pass iter (1-based), which sent bytes in elapsed and
// left remaining pages dirty. owed is how many storage references the
// destination has yet to check are expected to fail: while there are any
// (a wrong layout, a restore lagging behind), passes go on to carry their
// pages as they are handed back, up to maxIterations.
func (p *policy) next(iter int, bytes uint64, elapsed time.Duration, remaining, owed uint64) decision {
	p.history = append(p.history, remaining)
	if p.mode == ModePostcopy {
		return postcopy
	}
	if owed > 0 && iter < p.maxIterations {
		return iterate
	}
	// Bandwidth as achieved by this pass; a pass too short to measure
	// counts as fast enough.
	var eta time.Duration
	if bytes > 0 && elapsed > 0 {
		rate := float64(bytes) / elapsed.Seconds()
		eta = time.Duration(float64(remaining*pageSize) / rate * float64(time.Second))
	}
	if remaining == 0 || eta+p.switchCost <= p.budget {
		return finish
	}
	if iter >= p.maxIterations {
		if p.mode == ModeHybrid {
			return postcopy
		}
		return finish
	}
	if p.mode == ModeHybrid && p.stalled() {
		return postcopy
	}
	return iterate
}

// stalled: the remainder stopped shrinking — two passes in a row each left at
// least 90 % of what the pass before left.
func (p *policy) stalled() bool {
	h := p.history
	if len(h) < 3 {
		return false
	}
	a, b, c := h[len(h)-3], h[len(h)-2], h[len(h)-1]
	return b*10 >= a*9 && c*10 >= b*9
}
