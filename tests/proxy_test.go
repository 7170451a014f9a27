package tests

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// proxy forwards TCP connections to a target, optionally throttling the
// forward direction, and can cut every connection at once: a link that
// drops in the middle of a migration. A link that comes back
// (faultproxy_test.go) resets its connections and refuses new ones for a
// while (down), or holds every byte for a while (hold).
type proxy struct {
	ln     net.Listener
	target string
	rate   int64 // bytes/s forward, 0 = unlimited
	fwd    atomic.Int64

	mu    sync.Mutex
	conns []net.Conn
	cut_  bool
	down  bool          // connections accepted now are reset at once
	hold  chan struct{} // non-nil: no byte passes until it is closed
}

func startProxy(t testing.TB, target string, rate int64) *proxy {
	t.Helper()
	return startProxyOn(t, "127.0.0.1", target, rate)
}

// startProxyOn is startProxy listening on host, a loopback address of the
// caller's own: a port it frees (a cut) can then only be taken again on
// that address, never by a proxy or serve of a test running beside it.
func startProxyOn(t testing.TB, host, target string, rate int64) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, rate: rate}
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

// forwarded is the number of bytes passed towards the target so far.
func (p *proxy) forwarded() int64 { return p.fwd.Load() }

func (p *proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		cut := p.cut_
		p.mu.Unlock()
		if cut {
			reset(c)
			continue
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.cut_ || p.down {
			p.mu.Unlock()
			reset(c)
			reset(u)
			continue
		}
		p.conns = append(p.conns, c, u)
		p.mu.Unlock()
		go p.pipe(u, c, true)
		go p.pipe(c, u, false)
	}
}

func (p *proxy) pipe(dst, src net.Conn, forward bool) {
	buf := make([]byte, 64<<10)
	start := time.Now()
	var sent int64
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			hold := p.hold
			p.mu.Unlock()
			if hold != nil {
				<-hold
			}
			if forward && p.rate > 0 {
				sent += int64(n)
				if ahead := time.Duration(float64(sent)/float64(p.rate)*float64(time.Second)) - time.Since(start); ahead > 0 {
					time.Sleep(ahead)
				}
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
			if forward {
				p.fwd.Add(int64(n))
			}
		}
		if err != nil {
			break
		}
	}
	if err := closeWrite(dst); err != nil {
		dst.Close()
	}
}

func closeWrite(c net.Conn) error {
	if tc, ok := c.(*net.TCPConn); ok {
		return tc.CloseWrite()
	}
	return io.ErrClosedPipe
}

// cut drops every connection (with a reset, as a dead link or host would
// look after its timeout) and resets every new one until restore. The
// proxy keeps its port meanwhile, so no other listener can take it and
// receive connections meant for this link.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut_ = true
	p.resetAll()
	if p.hold != nil {
		close(p.hold)
		p.hold = nil
	}
}

// close cuts the link and frees the proxy's port.
func (p *proxy) close() {
	p.cut()
	p.ln.Close()
}

// resetAll resets every connection; the caller holds p.mu.
func (p *proxy) resetAll() {
	for _, c := range p.conns {
		reset(c)
	}
	p.conns = nil
}

// reset closes c with a RST, as a dead link or host looks after its timeout.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// restore forwards again after a cut: the link is back, and new
// connections go through.
func (p *proxy) restore() {
	p.mu.Lock()
	p.cut_ = false
	p.mu.Unlock()
}
