package wire

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// Session is the set of connections of one migration.
type Session struct {
	Hello   Hello // as the source sent it and the destination accepted it
	Control *Conn
	Bulk    []*Conn // Bulk[i].Index() == i
	Urgent  *Conn
}

// ID is the session's ID.
func (s *Session) ID() SessionID { return s.Hello.Session }

// Close closes every connection of the session.
func (s *Session) Close() error {
	var errs []error
	for _, c := range s.conns() {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

func (s *Session) conns() []*Conn {
	var cs []*Conn
	if s.Control != nil {
		cs = append(cs, s.Control)
	}
	for _, c := range s.Bulk {
		if c != nil {
			cs = append(cs, c)
		}
	}
	if s.Urgent != nil {
		cs = append(cs, s.Urgent)
	}
	return cs
}

// setup applies what Hello agreed to every connection: the geometry, and
// compression of the bulk connections' batches.
func (s *Session) setup() {
	for _, c := range s.conns() {
		c.SetGeometry(&s.Hello)
		c.codec = CodecNone
		if c.role == RoleBulk {
			c.codec = s.Hello.Codec()
		}
	}
}

// Dial opens a session to the destination at addr (source side): the
// control connection, Hello/HelloAck, then h.BulkConns bulk connections and
// the urgent one. Dial fills in h's Version and PageSize, and a random
// Session if h has none. A refusal is a *RefusedError. WithTLS secures
// every connection.
func Dial(ctx context.Context, addr string, h Hello, opts ...DialOption) (*Session, error) {
	return dial(ctx, addr, h, Version, opts...)
}

func dial(ctx context.Context, addr string, h Hello, version uint16, opts ...DialOption) (*Session, error) {
	var o dialOptions
	for _, opt := range opts {
		opt(&o)
	}
	if o.timeout <= 0 {
		return dialSession(ctx, addr, h, version, o)
	}
	// The session's connections keep nothing of this context: it bounds
	// the set-up only.
	limit := time.Now().Add(o.timeout)
	tctx, cancel := context.WithDeadline(ctx, limit)
	defer cancel()
	s, err := dialSession(tctx, addr, h, version, o)
	// The socket deadline may fire before the context's timer: judge by
	// the clock, and only if this bound (not the caller's) was the first.
	pd, bounded := ctx.Deadline()
	if err != nil && ctx.Err() == nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded)) &&
		!time.Now().Before(limit) && (!bounded || pd.After(limit)) {
		err = fmt.Errorf("%w: no session within %v: %w", ErrTimeout, o.timeout, err)
	}
	return s, err
}

func dialSession(ctx context.Context, addr string, h Hello, version uint16, o dialOptions) (*Session, error) {
	h.Version = version
	if h.PageSize == 0 {
		h.PageSize = PageSize
	}
	if h.Session == (SessionID{}) {
		h.Session = NewSessionID()
	}
	if err := h.validate(); err != nil {
		return nil, fmt.Errorf("dial session %s: %w", h.Session, err)
	}
	ctrl, err := dialConnWith(ctx, addr, h.Session, RoleControl, 0, version, o)
	if err != nil {
		return nil, err
	}
	s := &Session{Hello: h, Control: ctrl}
	if err := s.hello(ctx); err != nil {
		s.Close()
		return nil, err
	}
	for i := range int(h.BulkConns) {
		c, err := dialConnWith(ctx, addr, h.Session, RoleBulk, i, version, o)
		if err != nil {
			s.Close()
			return nil, err
		}
		s.Bulk = append(s.Bulk, c)
	}
	if s.Urgent, err = dialConnWith(ctx, addr, h.Session, RoleUrgent, 0, version, o); err != nil {
		s.Close()
		return nil, err
	}
	s.setup()
	return s, nil
}

func (s *Session) hello(ctx context.Context) error {
	if err := s.Control.WriteFrame(ctx, &s.Hello); err != nil {
		return err
	}
	m, err := s.Control.ReadFrame(ctx)
	if err != nil {
		return fmt.Errorf("await hello ack: %w", err)
	}
	switch m := m.(type) {
	case *HelloAck:
		if !m.Accepted {
			return &RefusedError{Code: m.Code, Message: m.Message}
		}
		return nil
	case *Error:
		return fmt.Errorf("await hello ack: peer error %d: %s", m.Code, m.Message)
	}
	return fmt.Errorf("await hello ack: %w: got %s", ErrUnexpected, m.Type())
}

// Listener accepts sessions (destination side).
type Listener struct {
	ln *net.TCPListener

	// Rejected, if set, hears about every connection Accept turned away
	// (garbage, other versions, strays, refused Hellos); Accept itself goes on.
	// It is called from Accept's goroutine.
	Rejected func(remote net.Addr, err error)
	// Dropped, if set, hears about every Hello that decide accepted but
	// whose session Accept then gave up on (its HelloAck could not be
	// written, its connections did not all arrive, ctx ended): whatever
	// decide reserved for it must be released. Called from Accept's
	// goroutine.
	Dropped func(h *Hello)
	// HandshakeTimeout bounds each new connection's preamble and the Hello;
	// zero means 10 s.
	HandshakeTimeout time.Duration
	// LinkTimeout is each accepted connection's WithLinkTimeout (zero:
	// DefaultLinkTimeout). Set it before the first Accept.
	LinkTimeout time.Duration
	// TLS, if set, is run on every accepted connection before its preamble
	// is read: a peer whose handshake fails (no or wrong certificate when
	// TLS.ClientAuth requires one, plain bytes) is rejected before any of
	// its bytes are taken as protocol. Set it before the first Accept.
	TLS *tls.Config
}

// Listen listens on a TCP address for sessions.
func Listen(ctx context.Context, addr string) (*Listener, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return &Listener{ln: ln.(*net.TCPListener)}, nil
}

// Addr is the address listened on.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Close stops listening; an Accept in progress returns.
func (l *Listener) Close() error { return l.ln.Close() }

// arrival is a connection that sent a preamble.
type arrival struct {
	nc    net.Conn
	pre   preamble
	err   error // bad preamble: already answered and closed
	fatal error // the listener failed
}

// Accept waits for the next session: a control connection whose Hello
// decide accepts (nil decide accepts every valid Hello), then every bulk
// connection and the urgent one. Connections of other sessions, a second
// control connection, garbage and other versions are answered with an error
// status, closed and reported to Rejected; Accept returns only a complete
// session, or an error when ctx ends or the listener fails. A session whose
// connections do not all arrive within HandshakeTimeout of its Hello is
// dropped (and reported). One Accept at a time per Listener.
func (l *Listener) Accept(ctx context.Context, decide func(*Hello) HelloAck) (*Session, error) {
	timeout := l.HandshakeTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithCancel(ctx)
	arrivals := make(chan arrival)
	var wg sync.WaitGroup
	var lw watch
	var ldl time.Time
	if err := arm(ctx, &lw, &ldl, l.ln.SetDeadline); err != nil {
		cancel()
		return nil, fmt.Errorf("accept session: %w", err)
	}
	defer func() {
		cancel()
		l.drain(arrivals, &wg)
		disarm(&lw, &ldl)
		_ = l.ln.SetDeadline(time.Time{})
	}()
	wg.Add(1)
	go l.acceptConns(ctx, &wg, arrivals, timeout)
	return l.assemble(ctx, arrivals, timeout, decide)
}

// acceptConns accepts connections until the listener fails (ctx ending
// makes it fail) and hands each that completes its handshake, or fails it,
// to arrivals; wg counts it and its handshakes.
func (l *Listener) acceptConns(ctx context.Context, wg *sync.WaitGroup, arrivals chan<- arrival, timeout time.Duration) {
	defer wg.Done()
	for {
		nc, err := l.ln.Accept()
		if err != nil {
			select {
			case arrivals <- arrival{fatal: err}:
			case <-ctx.Done():
			}
			return
		}
		if err := setLinkTimeout(nc, l.LinkTimeout); err != nil {
			l.reject(nc, err)
			nc.Close()
			continue
		}
		wg.Add(1)
		go l.handshake(ctx, wg, nc, arrivals, timeout)
	}
}

// handshake runs TLS (if configured) and reads the preamble of one new
// connection, each bounded by timeout, and hands the result to arrivals.
func (l *Listener) handshake(ctx context.Context, wg *sync.WaitGroup, nc net.Conn, arrivals chan<- arrival, timeout time.Duration) {
	defer wg.Done()
	var p preamble
	var err error
	if l.TLS != nil {
		var tc net.Conn
		if tc, err = serverTLS(ctx, nc, l.TLS, timeout); err == nil {
			nc = tc
		}
	}
	if err == nil {
		if p, err = greet(ctx, nc, timeout); err != nil {
			nc.Close()
		}
	}
	if err != nil {
		// A refusal is always reported: its peer has already read the
		// answer and may have opened the next session before this
		// goroutine ran, so Accept's drain receives it if assemble has
		// returned.
		arrivals <- arrival{nc: nc, err: err}
		return
	}
	select {
	case arrivals <- arrival{nc: nc, pre: p}:
	case <-ctx.Done():
		nc.Close()
	}
}

// drain runs as Accept returns, after its context ended: it reports the
// refusals that handshakes still hand over and closes whatever else
// arrives, until every handshake and the accept loop are gone.
func (l *Listener) drain(arrivals <-chan arrival, wg *sync.WaitGroup) {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	for {
		select {
		case a := <-arrivals:
			switch {
			case a.err != nil:
				l.reject(a.nc, a.err)
			case a.nc != nil:
				a.nc.Close()
			}
		case <-done:
			return
		}
	}
}

// hangUpCheck is how often a session being set up has its control
// connection checked for a hang-up.
const hangUpCheck = 100 * time.Millisecond

// assemble builds one session from arrivals: a control connection whose
// Hello decide accepts opens it, then its other connections join it. The
// source dials those right after HelloAck; if they do not all come within
// timeout it has gone, and the half-open session is dropped so that the
// next one can be served.
func (l *Listener) assemble(ctx context.Context, arrivals <-chan arrival, timeout time.Duration, decide func(*Hello) HelloAck) (*Session, error) {
	var s *Session
	fail := func(err error) (*Session, error) {
		if s != nil {
			l.dropped(&s.Hello)
			s.Close()
		}
		return nil, err
	}
	var setup *time.Timer
	var setupC <-chan time.Time
	defer func() {
		if setup != nil {
			setup.Stop()
		}
	}()
	// While a session is set up, its control connection is watched: a
	// source that gives up mid-setup (its link failed before all its
	// connections were made) closes it, and would otherwise hold the
	// listener for the rest of timeout, turning the same source's new
	// attempt away as busy.
	watch := time.NewTicker(hangUpCheck)
	defer watch.Stop()
	for {
		var a arrival
		select {
		case a = <-arrivals:
		case <-watch.C:
			if s != nil && hungUp(s.Control.NetConn()) {
				l.reject(s.Control.NetConn(), fmt.Errorf("drop session %s: %w, before its other connections arrived", s.ID(), ErrAbandoned))
				l.dropped(&s.Hello)
				s.Close()
				s, setupC = nil, nil
			}
			continue
		case <-setupC:
			l.reject(s.Control.NetConn(), fmt.Errorf("drop session %s: %w: its connections did not all arrive within %v",
				s.ID(), os.ErrDeadlineExceeded, timeout))
			// Dropped before the close that the source (and a test) sees.
			l.dropped(&s.Hello)
			s.Close()
			s, setupC = nil, nil
			continue
		case <-ctx.Done():
			return fail(fmt.Errorf("accept session: %w", ctx.Err()))
		}
		switch {
		case a.fatal != nil:
			return fail(fmt.Errorf("accept session: %w", ctxError(ctx, a.fatal)))
		case a.err != nil:
			l.reject(a.nc, a.err)
			continue
		}
		if s == nil {
			if s = l.open(ctx, a, timeout, decide); s != nil {
				setup = time.NewTimer(timeout)
				setupC = setup.C
			}
			continue
		}
		if l.join(s, a) && s.complete() {
			s.setup()
			return s, nil
		}
	}
}

// join adds a bulk or urgent connection to the session being set up, or
// turns it away (another session's, a second control connection, a role
// already taken); it reports whether the connection joined.
func (l *Listener) join(s *Session, a arrival) bool {
	p := a.pre
	var status uint8 = statusOK
	switch {
	case p.session != s.Hello.Session && p.role == RoleControl:
		status = statusBusy
	case p.session != s.Hello.Session:
		status = statusSession
	case p.role == RoleControl,
		p.role == RoleBulk && (int(p.index) >= len(s.Bulk) || s.Bulk[p.index] != nil),
		p.role == RoleUrgent && s.Urgent != nil:
		status = statusRole
	}
	if err := answer(a.nc, p, status); err != nil {
		l.reject(a.nc, err)
		return false
	}
	if status != statusOK {
		l.reject(a.nc, fmt.Errorf("turn away %s conn %d of session %s: %w", p.role, p.index, p.session, statusError(status)))
		return false
	}
	c := NewConn(a.nc, p.role, int(p.index))
	if p.role == RoleBulk {
		s.Bulk[p.index] = c
	} else {
		s.Urgent = c
	}
	return true
}

func (s *Session) complete() bool {
	for _, c := range s.Bulk {
		if c == nil {
			return false
		}
	}
	return s.Urgent != nil
}

// open handles a connection arriving while no session is being set up: it
// must be a control connection with an acceptable Hello. It returns the new
// session, or nil after turning the connection away.
func (l *Listener) open(ctx context.Context, a arrival, timeout time.Duration, decide func(*Hello) HelloAck) *Session {
	if a.pre.role != RoleControl {
		err := answer(a.nc, a.pre, statusSession)
		if err == nil {
			err = fmt.Errorf("turn away %s conn of session %s: %w", a.pre.role, a.pre.session, ErrSession)
		}
		l.reject(a.nc, err)
		return nil
	}
	if err := answer(a.nc, a.pre, statusOK); err != nil {
		l.reject(a.nc, err)
		return nil
	}
	ctrl := NewConn(a.nc, RoleControl, 0)
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	m, err := ctrl.ReadFrame(hctx)
	if err != nil {
		ctrl.Close()
		l.reject(a.nc, fmt.Errorf("await hello: %w", err))
		return nil
	}
	h, ok := m.(*Hello)
	if !ok {
		ctrl.Close()
		l.reject(a.nc, fmt.Errorf("await hello: %w: got %s", ErrUnexpected, m.Type()))
		return nil
	}
	var ack HelloAck
	switch {
	case h.Version != Version:
		ack = HelloAck{Code: RefuseVersion, Message: versionError(h.Version, Version).Error()}
	case h.Session != a.pre.session:
		ack = HelloAck{Code: RefuseOther, Message: fmt.Sprintf("hello names session %s on a connection of session %s", h.Session, a.pre.session)}
	case decide != nil:
		ack = decide(h)
	default:
		ack = HelloAck{Accepted: true}
	}
	if err := ctrl.WriteFrame(hctx, &ack); err != nil {
		ctrl.Close()
		l.reject(a.nc, fmt.Errorf("answer hello: %w", err))
		if ack.Accepted {
			l.dropped(h)
		}
		return nil
	}
	if !ack.Accepted {
		ctrl.Close()
		l.reject(a.nc, &RefusedError{Code: ack.Code, Message: ack.Message})
		return nil
	}
	return &Session{Hello: *h, Control: ctrl, Bulk: make([]*Conn, h.BulkConns)}
}

func (l *Listener) dropped(h *Hello) {
	if l.Dropped != nil {
		l.Dropped(h)
	}
}

func (l *Listener) reject(nc net.Conn, err error) {
	if l.Rejected != nil {
		l.Rejected(nc.RemoteAddr(), err)
	}
}
