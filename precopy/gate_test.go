package precopy

import (
	"context"
	"errors"
	"testing"
	"time"
)

type grantAll struct{ asked []int }

func (g *grantAll) Pace(_ context.Context, n int) (int, error) {
	g.asked = append(g.asked, n)
	return n, nil
}

// The push goes in pieces through the bandwidth pacer, and a held piece
// gives way to the context's end.
func TestGatedPacer(t *testing.T) {
	inner := &grantAll{}
	p := &gatedPacer{g: &faultGate{}, inner: inner}
	if k, err := p.Pace(context.Background(), 4<<20); err != nil || k != pushPiece {
		t.Fatalf("idle gate: granted %d, %v; want %d", k, err, pushPiece)
	}
	if k, err := p.Pace(context.Background(), 100); err != nil || k != 100 {
		t.Fatalf("small frame: granted %d, %v; want 100", k, err)
	}
	// Held (a request just served), then released after holdMax at most.
	p.g.served()
	if k, err := p.Pace(context.Background(), 100); err != nil || k != 100 {
		t.Fatalf("held piece: granted %d, %v; want 100 once the hold ends", k, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p.g.served()
	if _, err := p.Pace(ctx, 100); !errors.Is(err, context.Canceled) {
		t.Fatalf("held piece with its context ended: %v, want context.Canceled", err)
	}
	// A piece is held no longer than the last one took to write.
	g := time.Unix(0, p.granted.Load())
	for _, c := range []struct{ wrote, want time.Duration }{{0, 0}, {300 * time.Microsecond, 300 * time.Microsecond}, {time.Second, holdMax}} {
		if got := p.hold(g.Add(c.wrote)); got != c.want {
			t.Errorf("hold after a piece that took %v: %v, want %v", c.wrote, got, c.want)
		}
	}
	if got := (&gatedPacer{}).hold(g); got != holdMax {
		t.Errorf("hold of a first piece: %v, want %v", got, holdMax)
	}
	if len(inner.asked) != 3 {
		t.Fatalf("bandwidth pacer asked %v, want three pieces", inner.asked)
	}
}
