package cause

import (
	"context"
	"errors"
	"testing"
)

func TestOf(t *testing.T) {
	blocked := errors.New("read: use of closed network connection")
	if got := Of(context.Background(), blocked); got != blocked {
		t.Fatalf("live context: %v, want the error itself", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if got := Of(ctx, blocked); got != blocked {
		t.Fatalf("plain cancel: %v, want the error itself", got)
	}
	reason := errors.New("bulk connection 0: reset")
	ctx, cancelCause := context.WithCancelCause(context.Background())
	cancelCause(reason)
	got := Of(ctx, blocked)
	if !errors.Is(got, reason) || errors.Is(got, blocked) || got.Error() != "bulk connection 0: reset (read: use of closed network connection)" {
		t.Fatalf("cancelled with a cause: %q, want the cause wrapped and the error as detail", got)
	}
}
