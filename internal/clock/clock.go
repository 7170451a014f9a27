// Package clock holds the timing helpers several packages pace their work
// with (a restore rate, an agent's read rate, a bandwidth cap), and the
// Clock a pacer reads time through, so that its windows can be tested
// without waiting.
package clock

import (
	"context"
	"time"
)

// Sleep waits d, or until ctx ends (then it returns ctx's error). A d of
// zero or less returns at once.
func Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Clock is the time a pacer reads and waits on. Real is the wall clock; a
// test's fake advances its time when Sleep is called.
type Clock interface {
	Now() time.Time
	Sleep(ctx context.Context, d time.Duration) error
}

// Real is the wall clock (time.Now and Sleep).
type Real struct{}

// Now is time.Now.
func (Real) Now() time.Time { return time.Now() }

// Sleep is the package's Sleep.
func (Real) Sleep(ctx context.Context, d time.Duration) error { return Sleep(ctx, d) }
