//go:build faultinject

package tests

import "time"

// flap resets every connection and refuses new ones (each accepted
// connection is reset at once) for d, then forwards again: a link that
// drops and comes back, or a peer rebooting behind it.
func (p *proxy) flap(d time.Duration) {
	p.mu.Lock()
	p.down = true
	p.resetAll()
	p.mu.Unlock()
	time.AfterFunc(d, func() {
		p.mu.Lock()
		p.down = false
		p.mu.Unlock()
	})
}

// stall passes no byte in either direction for d, then forwards again with
// the connections intact: packets lost for a while, TCP retransmitting.
func (p *proxy) stall(d time.Duration) {
	p.mu.Lock()
	if p.hold == nil && !p.cut_ {
		hold := make(chan struct{})
		p.hold = hold
		time.AfterFunc(d, func() {
			p.mu.Lock()
			if p.hold == hold {
				close(hold)
				p.hold = nil
			}
			p.mu.Unlock()
		})
	}
	p.mu.Unlock()
}
