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
// needs. Held for up to holdMax per piece, a push during a storm of faults
// still moves about pushPiece per holdMax and connection; between faults it
// runs at full speed.
const (
	// pushPiece is how much of a push frame goes to the socket at a time,
	// between looks at the gate.
	pushPiece = 64 << 10
	// pushLowat caps the push's bytes the kernel holds unsent
	// (TCP_NOTSENT_LOWAT), so that holding the writer back holds the
	// bytes back.
	pushLowat = 128 << 10
	// faultHold is how long after a request the push stays held, and
	// holdMax how long one piece may be held however many requests come:
	// the push still moves during a storm of faults.
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
// gate is busy (up to holdMax), then asks the bandwidth cap's pacer.
type gatedPacer struct {
	g     *faultGate
	inner wire.Pacer
}

func (p gatedPacer) Pace(ctx context.Context, n int) (int, error) {
	n = min(n, pushPiece)
	if p.g.busy() {
		t := time.NewTimer(holdPoll)
		defer t.Stop()
		for deadline := time.Now().Add(holdMax); p.g.busy() && time.Now().Before(deadline); {
			select {
			case <-t.C:
				t.Reset(holdPoll)
			case <-ctx.Done():
				return 0, fmt.Errorf("push held for a fault reply: %w", ctx.Err())
			}
		}
	}
	return p.inner.Pace(ctx, n)
}
