package ctl

import (
	"errors"
	"sync"
	"testing"
)

// TestGate races cancels against Go: exactly one wins each time, and a
// winning cancel is what Pass returns.
func TestGate(t *testing.T) {
	reason := errors.New("operator")
	for i := 0; i < 1000; i++ {
		var g Gate
		var wg sync.WaitGroup
		var cerr, perr error
		wg.Add(2)
		go func() { defer wg.Done(); cerr = g.Cancel(reason) }()
		go func() { defer wg.Done(); perr = g.Pass() }()
		wg.Wait()
		switch {
		case cerr == nil && errors.Is(perr, reason) && !g.Passed():
		case errors.Is(cerr, ErrPastGo) && perr == nil && g.Passed():
		default:
			t.Fatalf("cancel %v, pass %v, passed %v", cerr, perr, g.Passed())
		}
	}
}
