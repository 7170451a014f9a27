package ctl

import "sync"

// Gate orders a cancel against Go. The migration calls Pass just before it
// sends Go; a cancel accepted before is returned by Pass (the migration then
// aborts), a cancel after Pass is refused with ErrPastGo. The zero Gate is
// open.
type Gate struct {
	mu        sync.Mutex
	cancelled error
	passed    bool
}

// Cancel asks for the migration to abort for reason; nil if it will (the
// caller then cancels the migration's context with reason), ErrPastGo if Go
// is already on its way.
func (g *Gate) Cancel(reason error) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.passed {
		return ErrPastGo
	}
	if g.cancelled == nil {
		g.cancelled = reason
	}
	return nil
}

// Pass closes the gate before Go, unless a cancel came first: then it
// returns that cancel's reason and Go must not be sent.
func (g *Gate) Pass() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cancelled != nil {
		return g.cancelled
	}
	g.passed = true
	return nil
}

// Passed reports whether Go went past the gate.
func (g *Gate) Passed() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.passed
}
