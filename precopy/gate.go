package precopy

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/dmig/dmig/wire"
)

// The post-copy push backs off while faults are being answered: on a
// shaped link the push and the replies share one queue (the shaper's, and
// TCP puts about a millisecond of each connection's pacing rate into it),
// so every byte of push ahead of a reply delays the faulting guest thread;
// on two shared cores the push's senders also take the CPU the page server
// needs. Held for at most as long as its last piece took to write, a push
// during a storm of faults still moves at about half its speed; between
// faults it runs at full speed.
const (
	// pushPiece is how much of a push frame goes to the socket at a time,
	// between looks at the gate.
	pushPiece = 64 << 10
	// pushLowat caps the push's bytes the kernel holds unsent
	// (TCP_NOTSENT_LOWAT), so that holding the writer back holds the
	// bytes back.
	pushLowat = 128 << 10
	// faultHold is how long after a request the push stays held, and
	// holdMax the longest one piece may be held however many requests
	// come.
	faultHold = 500 * time.Microsecond
	holdMax   = 2 * time.Millisecond
	holdPoll  = 100 * time.Microsecond
)

// faultGate tells the push whether a fault reply is pending: a request
// was served within faultHold, or the urgent connection still has bytes
// the destination has not acknowledged.
type faultGate struct {
	urgent *wire.Conn
	last   atomic.Int64 // time.Now().UnixNano() of the last request
}

// served records that a request was just answered.
func (g *faultGate) served() { g.last.Store(time.Now().UnixNano()) }

func (g *faultGate) busy() bool {
	if time.Since(time.Unix(0, g.last.Load())) < faultHold {
		return true
	}
	if g.urgent == nil {
		return false
	}
	n, err := g.urgent.Unacked()
	return err == nil && n > 0
}

// gatedPacer is a push connection's pacer: it holds each piece while the
// gate is busy, then asks the bandwidth cap's pacer. A piece is held no
// longer than the previous one took to write (and never past holdMax), so
// during a storm of faults the push still gets half of its connection's
// time: a guest that faults without pause would otherwise keep the push
// (and so itself, for every page the push has not reached) at a crawl.
type gatedPacer struct {
	g     *faultGate
	inner wire.Pacer
	// granted is when the last piece went to its writer (UnixNano; 0:
	// none yet): the time from it to the next request is that piece's.
	granted atomic.Int64
}

func (p *gatedPacer) Pace(ctx context.Context, n int) (int, error) {
	n = min(n, pushPiece)
	if err := ctx.Err(); err != nil {
		// Whatever the hold: one shorter than a timer tick would
		// otherwise let an ended push write one more piece.
		return 0, fmt.Errorf("push held for a fault reply: %w", err)
	}
	if p.g.busy() {
		hold := p.hold(time.Now())
		t := time.NewTimer(min(holdPoll, hold))
		defer t.Stop()
		for deadline := time.Now().Add(hold); p.g.busy() && time.Now().Before(deadline); {
			select {
			case <-t.C:
				t.Reset(min(holdPoll, time.Until(deadline)))
			case <-ctx.Done():
				return 0, fmt.Errorf("push held for a fault reply: %w", ctx.Err())
			}
		}
	}
	k, err := p.inner.Pace(ctx, n)
	p.granted.Store(time.Now().UnixNano())
	return k, err
}

// hold is the longest the piece asked for at now may be held.
func (p *gatedPacer) hold(now time.Time) time.Duration {
	g := p.granted.Load()
	if g == 0 {
		return holdMax
	}
	return max(0, min(holdMax, now.Sub(time.Unix(0, g))))
}
