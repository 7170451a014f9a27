// Package cause owns one rule both migration engines apply to errors of
// calls a context cut short: the reason the context was cancelled (a
// connection's failure, a remote error) is the error to report, and the
// blocked call's own error ("context canceled", "use of closed network
// connection") only its detail.
package cause

import (
	"context"
	"errors"
	"fmt"
)

// Of returns err with ctx's cancellation cause in front of it, wrapped, if
// ctx was cancelled with one (other than a plain cancel); else err.
func Of(ctx context.Context, err error) error {
	if c := context.Cause(ctx); c != nil && !errors.Is(c, context.Canceled) {
		return fmt.Errorf("%w (%v)", c, err)
	}
	return err
}
