package bandwidth

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/dmig/dmig/internal/clock"
	"github.com/dmig/dmig/internal/report"
)

// The bucket's shape, as fractions of a second at the rate. Over any
// interval of length T a bucket grants at most rate×T + burst + budget:
// bulk takes tokens only when the bucket holds them (so it never goes
// below zero on their account), urgent writes may drive it down to
// -budget, and it holds at most burst. So, with L the level, the grants
// in [a, b] are L(a) - L(b) + rate×(b-a) ≤ burst + budget + rate×(b-a).
// At 2 % and 2 % a 1 s window stays within 4 % of the rate. The burst is
// two bulk quanta (1 % each), so that a writer woken late by its timer
// finds the tokens it earned meanwhile instead of losing them to the
// bucket's brim.
const (
	quantumShare = 100 // bulk write quantum = rate/100
	burstQuanta  = 2   // burst = 2 quanta
	budgetShare  = 50  // urgent budget = rate/50
	minQuantum   = 4096
	maxQuantum   = 1 << 20
	// maxSleep bounds one wait, so that a new rate (SetRate) or a lifted
	// cap takes effect within it.
	maxSleep = 100 * time.Millisecond
	// maxChanges bounds the changes a limiter remembers for its report: a
	// script setting the cap in a loop must not grow it without end.
	maxChanges = 256
)

// Limiter is a token bucket in bytes, shared by every connection of a
// migration that carries page data, and by every migration of a drain
// through a parent. The zero rate is no cap: writes pass at once and are
// only metered. Safe for concurrent use.
type Limiter struct {
	clk    clock.Clock
	parent *Limiter

	mu     sync.Mutex
	rate   float64 // bytes/s; 0: no cap
	tokens float64
	last   time.Time // tokens were computed at last
	meter  meter
	born   time.Time // New's time, which changes are timed from
	// changes are SetRate's, oldest first, the first maxChanges of them;
	// dropped counts the rest.
	changes []Change
	dropped int
}

// Change is one change of a limiter's cap (SetRate), for the report: the
// rate figures of a migration whose cap changed are read segment by
// segment, between changes.
type Change struct {
	At      time.Time
	Elapsed time.Duration // since the limiter was made
	From    uint64        // the cap before, bytes/s (0: none)
	To      uint64        // the cap after
	// Bytes: granted before the change, so that Bytes of two changes and
	// their times give the rate between them.
	Bytes uint64
}

// New returns a limiter at rate bytes/s (0: no cap) reading time from clk
// (nil: the wall clock), drawing also from parent's bucket if parent is
// not nil.
func New(rate uint64, clk clock.Clock, parent *Limiter) *Limiter {
	if clk == nil {
		clk = clock.Real{}
	}
	l := &Limiter{clk: clk, parent: parent}
	l.last = clk.Now()
	l.born = l.last
	l.setRate(rate)
	l.tokens = l.burst()
	return l
}

// SetRate changes the cap to rate bytes/s (0: none) from now on, and
// remembers the change for Stats. The bucket keeps its level clipped to
// the new shape: at most the new burst, and a debt of urgent writes at
// most the new budget, so that a cap lowered after faults ran up the old
// (larger) budget does not stall bulk for the seconds the old debt would
// take to pay at the new rate. The 1 s windows that start at the change
// then hold the new cap. Safe to call while writes wait; they see the new
// rate within maxSleep.
func (l *Limiter) SetRate(rate uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clk.Now()
	l.refill(now)
	from := uint64(l.rate)
	l.setRate(rate)
	l.tokens = min(l.tokens, l.burst())
	if l.rate > 0 {
		l.tokens = max(l.tokens, -l.budget())
	}
	if from == rate {
		return
	}
	if len(l.changes) == maxChanges {
		l.dropped++
		return
	}
	l.changes = append(l.changes, Change{At: now, Elapsed: now.Sub(l.born), From: from, To: rate, Bytes: l.meter.bytes})
}

func (l *Limiter) setRate(rate uint64) { l.rate = float64(rate) }

// Rate is the cap in bytes/s (0: none).
func (l *Limiter) Rate() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return uint64(l.rate)
}

// SharedRate is the tightest cap above l (a drain's destination or total,
// shared with other migrations), bytes/s; 0: none.
func (l *Limiter) SharedRate() uint64 {
	var r uint64
	for x := l.parent; x != nil; x = x.parent {
		if xr := x.Rate(); xr > 0 && (r == 0 || xr < r) {
			r = xr
		}
	}
	return r
}

func (l *Limiter) quantum() float64 {
	return min(max(l.rate/quantumShare, minQuantum), maxQuantum)
}

func (l *Limiter) burst() float64 {
	if l.rate == 0 {
		return 0
	}
	return burstQuanta * l.quantum()
}

func (l *Limiter) budget() float64 { return max(l.rate/budgetShare, minQuantum) }

// refill adds the tokens earned since last. Under mu.
func (l *Limiter) refill(now time.Time) {
	if dt := now.Sub(l.last); dt > 0 {
		l.tokens = min(l.tokens+l.rate*dt.Seconds(), l.burst())
	}
	l.last = now
}

// Pacer is how one connection draws from a Limiter: wire.Conn calls Pace
// before each piece of a frame it writes.
type Pacer struct {
	l      *Limiter
	urgent bool
}

// Bulk is the pacer of a connection carrying bulk pages (pre-copy passes,
// the post-copy push): each grant is at most one quantum, taken when the
// bucket holds it.
func (l *Limiter) Bulk() *Pacer { return &Pacer{l: l} }

// Urgent is the pacer of the connection answering post-copy faults: a
// frame is granted whole and at once, taking the bucket into debt, while
// the debt stays within the budget; beyond it (faults alone near the cap)
// it waits like bulk, but ahead of it.
func (l *Limiter) Urgent() *Pacer { return &Pacer{l: l, urgent: true} }

// Pace waits until n bytes, or the first part of them, may be written, and
// returns how many (at least 1, at most n). It fails only when ctx ends.
func (p *Pacer) Pace(ctx context.Context, n int) (int, error) {
	if n <= 0 {
		return 0, nil
	}
	for {
		k, wait := p.l.try(n, p.urgent)
		if k > 0 {
			return k, nil
		}
		if err := p.l.clk.Sleep(ctx, min(wait, maxSleep)); err != nil {
			return 0, fmt.Errorf("wait for bandwidth: %w", err)
		}
	}
}

// chain appends l and its parents to c, child first: the lock order.
func (l *Limiter) chain(c []*Limiter) []*Limiter {
	for x := l; x != nil; x = x.parent {
		c = append(c, x)
	}
	return c
}

// try takes tokens for the grant of n bytes from every bucket of the
// chain, or none: it returns the bytes granted, or 0 and how long until
// the emptiest bucket will hold them.
func (l *Limiter) try(n int, urgent bool) (int, time.Duration) {
	var buf [2]*Limiter // a migration's and a drain's: no allocation
	c := l.chain(buf[:0])
	for _, x := range c {
		x.mu.Lock()
	}
	defer func() {
		for i := len(c) - 1; i >= 0; i-- {
			c[i].mu.Unlock()
		}
	}()
	now := l.clk.Now()
	q := float64(n)
	for _, x := range c {
		x.refill(now)
		switch {
		case x.rate == 0:
		case urgent:
			// A frame larger than the debt allowed goes in parts.
			q = min(q, x.burst()+x.budget())
		default:
			q = min(q, x.quantum())
		}
	}
	var wait time.Duration
	for _, x := range c {
		if x.rate == 0 {
			continue
		}
		floor := 0.0
		if urgent {
			floor = -x.budget()
		}
		if short := q - (x.tokens - floor); short > 0 {
			wait = max(wait, time.Duration(short/x.rate*float64(time.Second))+time.Microsecond)
		}
	}
	if wait > 0 {
		return 0, wait
	}
	for _, x := range c {
		if x.rate > 0 {
			x.tokens -= q
		}
		x.meter.add(now, uint64(q), urgent)
	}
	return int(q), 0
}

// Stats are the figures of what a limiter let through.
type Stats struct {
	Rate  uint64 // the cap at the time (bytes/s; 0: none)
	Bytes uint64 // granted, bulk and urgent
	// Urgent: bytes granted to urgent writes (fault replies), part of Bytes.
	Urgent uint64
	// Mean: Bytes over the time from the first grant to the last (bytes/s).
	Mean float64
	// Peak: the most bytes granted in one second (1 s windows aligned on
	// 50 ms slots), bytes/s.
	Peak float64
	// Recent: bytes granted in the last second, for a progress display.
	Recent float64
	// Changes are the cap's changes (SetRate), oldest first; Dropped
	// counts those past the first maxChanges, not kept.
	Changes []Change
	Dropped int
}

// Report is the figures as a report carries them.
func (s Stats) Report() report.Bandwidth {
	var changes []report.BandwidthChange
	for _, c := range s.Changes {
		changes = append(changes, report.BandwidthChange{
			At: c.At.UTC(), ElapsedS: c.Elapsed.Seconds(), FromBytesPerS: c.From, ToBytesPerS: c.To, BytesBefore: c.Bytes,
		})
	}
	return report.Bandwidth{
		MaxBytesPerS: s.Rate, MeanBytesPerS: s.Mean, PeakBytesPerS: s.Peak,
		Bytes: s.Bytes, UrgentBytes: s.Urgent,
		Changes: changes, ChangesDropped: s.Dropped,
	}
}

// Stats returns the figures so far.
func (l *Limiter) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clk.Now()
	l.meter.advance(now)
	s := Stats{Rate: uint64(l.rate), Bytes: l.meter.bytes, Urgent: l.meter.urgent, Peak: float64(l.meter.peak), Recent: float64(l.meter.window),
		Changes: append([]Change(nil), l.changes...), Dropped: l.dropped}
	if span := l.meter.lastAt.Sub(l.meter.firstAt); span > 0 {
		s.Mean = float64(l.meter.bytes) / span.Seconds()
	}
	return s
}
