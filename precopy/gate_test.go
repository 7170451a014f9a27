package precopy

import (
	"context"
	"errors"
	"testing"
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
	p := gatedPacer{g: &faultGate{}, inner: inner}
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
	if len(inner.asked) != 3 {
		t.Fatalf("bandwidth pacer asked %v, want three pieces", inner.asked)
	}
}
