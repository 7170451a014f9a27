package wire

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// rejections collects what a Listener turned away.
type rejections struct {
	mu   sync.Mutex
	errs []error
}

func (r *rejections) add(_ net.Addr, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, err)
}

// has waits up to 5 s for a rejection matching target: the listener reports
// a refusal after writing it, so the refused peer may see it first.
func (r *rejections) has(target error) bool {
	deadline := time.Now().Add(5 * time.Second)
	for {
		r.mu.Lock()
		found := slices.ContainsFunc(r.errs, func(e error) bool { return errors.Is(e, target) })
		r.mu.Unlock()
		if found || time.Now().After(deadline) {
			return found
		}
		time.Sleep(time.Millisecond)
	}
}

func listen(t *testing.T) (*Listener, *rejections) {
	t.Helper()
	l, err := Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	r := new(rejections)
	l.Rejected = r.add
	return l, r
}

type accepted struct {
	s   *Session
	err error
}

func acceptAsync(ctx context.Context, l *Listener, decide func(*Hello) HelloAck) chan accepted {
	ch := make(chan accepted, 1)
	go func() {
		s, err := l.Accept(ctx, decide)
		ch <- accepted{s, err}
	}()
	return ch
}

func sessionHello() Hello {
	return Hello{Mode: "precopy", Guest: "g", Blocks: []Block{{Name: "ram", Size: 64 << 20}}, BulkConns: 3,
		Command: []string{"dmig", "testguest", "run"}}
}

func TestSessionHandshake(t *testing.T) {
	ctx := testCtx(t)
	l, rej := listen(t)
	addr := l.Addr().String()
	stray := make(chan error, 2)
	var seen *Hello
	acc := acceptAsync(ctx, l, func(h *Hello) HelloAck {
		seen = h
		// While the session is being set up: a connection of another session
		// and a second control connection must both be turned away.
		go func() {
			_, err := dialConn(ctx, addr, NewSessionID(), RoleBulk, 0, Version)
			stray <- err
		}()
		go func() {
			_, err := dialConn(ctx, addr, NewSessionID(), RoleControl, 0, Version)
			stray <- err
		}()
		time.Sleep(50 * time.Millisecond) // let both arrive before the real ones
		return HelloAck{Accepted: true}
	})
	src, err := Dial(ctx, addr, sessionHello())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer src.Close()
	a := <-acc
	if a.err != nil {
		t.Fatalf("accept: %v", a.err)
	}
	dst := a.s
	defer dst.Close()

	if seen == nil || seen.Session != src.ID() || dst.ID() != src.ID() || src.ID() == (SessionID{}) {
		t.Fatalf("session ids: hello %v, source %s, destination %s", seen, src.ID(), dst.ID())
	}
	if !reflect.DeepEqual(dst.Hello.Command, []string{"dmig", "testguest", "run"}) {
		t.Fatalf("destination got command %q", dst.Hello.Command)
	}
	if dst.Hello.BulkConns != 3 || len(dst.Bulk) != 3 || dst.Hello.Version != Version || dst.Hello.PageSize != PageSize {
		t.Fatalf("destination hello %+v with %d bulk conns", dst.Hello, len(dst.Bulk))
	}
	for i, c := range dst.Bulk {
		if c.Role() != RoleBulk || c.Index() != i || src.Bulk[i].Index() != i {
			t.Fatalf("bulk conn %d: role %s index %d", i, c.Role(), c.Index())
		}
	}
	var strayErrs []error
	for range 2 {
		strayErrs = append(strayErrs, <-stray)
	}
	if !(errors.Is(strayErrs[0], ErrSession) && errors.Is(strayErrs[1], ErrBusy) ||
		errors.Is(strayErrs[1], ErrSession) && errors.Is(strayErrs[0], ErrBusy)) {
		t.Fatalf("strays: got %v, want one ErrSession and one ErrBusy", strayErrs)
	}
	if !rej.has(ErrSession) || !rej.has(ErrBusy) {
		t.Fatalf("listener did not report the strays: %v", rej.errs)
	}

	// Each bulk connection carries its own batches to its own peer.
	for i := range 3 {
		var b PageBatch
		b.Reset(0, uint32(i))
		b.AddData(uint64(i), page(uint64(i)))
		go src.Bulk[i].WriteFrame(ctx, &b)
	}
	for i := range 3 {
		m, err := dst.Bulk[i].ReadFrame(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if b := m.(*PageBatch); b.Iteration != uint32(i) || b.Entries[0].Page != uint64(i) {
			t.Fatalf("bulk conn %d got iteration %d page %d", i, b.Iteration, b.Entries[0].Page)
		}
	}
	// Urgent: request from the destination, reply from the source.
	go dst.Urgent.WriteFrame(ctx, &PageRequest{Page: 9, Count: 1})
	if m, err := src.Urgent.ReadFrame(ctx); err != nil || m.(*PageRequest).Page != 9 {
		t.Fatalf("urgent request: %v %v", m, err)
	}
	// The geometry from Hello is enforced on both sides.
	go dst.Urgent.WriteFrame(ctx, &PageRequest{Page: 16384, Count: 1})
	if _, err := src.Urgent.ReadFrame(ctx); !errors.Is(err, ErrRange) {
		t.Fatalf("request beyond the guest: got %v, want ErrRange", err)
	}
	go src.Control.WriteFrame(ctx, &IterationEnd{Iteration: 1, Batches: []uint64{1, 1, 1}})
	if m, err := dst.Control.ReadFrame(ctx); err != nil || m.(*IterationEnd).Iteration != 1 {
		t.Fatalf("control: %v %v", m, err)
	}
}

func TestHandshakeVersionMismatch(t *testing.T) {
	ctx := testCtx(t)
	l, rej := listen(t)
	acc := acceptAsync(ctx, l, nil)
	_, err := dial(ctx, l.Addr().String(), sessionHello(), Version+1)
	if !errors.Is(err, ErrVersion) {
		t.Fatalf("dial with version %d: got %v, want ErrVersion", Version+1, err)
	}
	for _, v := range []uint16{Version, Version + 1} {
		if !strings.Contains(err.Error(), fmt.Sprintf("version %d", v)) {
			t.Fatalf("error %q does not name version %d", err, v)
		}
	}
	// The listener reports it and goes on to accept a good session.
	s, err := Dial(ctx, l.Addr().String(), sessionHello())
	if err != nil {
		t.Fatalf("dial after mismatch: %v", err)
	}
	defer s.Close()
	mustAccept(t, acc)
	if !rej.has(ErrVersion) {
		t.Fatalf("listener did not report the version mismatch: %v", rej.errs)
	}
}

func TestHandshakeGarbage(t *testing.T) {
	ctx := testCtx(t)
	l, rej := listen(t)
	acc := acceptAsync(ctx, l, nil)

	// A peer speaking another protocol is closed on.
	nc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	// Closed with unread input, the kernel may answer with a reset.
	if n, err := nc.Read(make([]byte, 64)); err != io.EOF && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("garbage peer got %d bytes, err %v; want the connection closed", n, err)
	}
	// A connection that sends a preamble and then garbage instead of Hello.
	c, err := dialConn(ctx, l.Addr().String(), NewSessionID(), RoleControl, 0, Version)
	if err != nil {
		t.Fatal(err)
	}
	c.NetConn().Write([]byte{byte(TypeHello), 0, 0, 0, 3, 0, 0, 0, 1, 2, 3})
	if _, err := c.ReadFrame(ctx); !errors.Is(err, io.EOF) {
		t.Fatalf("after a garbage hello: got %v, want the connection closed", err)
	}
	c.Close()
	// A server that is not dmig.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte("SSH-2.0-OpenSSH_9.2p1 Debian\r\n"))
			c.Close()
		}
	}()
	if _, err := Dial(ctx, ln.Addr().String(), sessionHello()); !errors.Is(err, ErrMagic) {
		t.Fatalf("dial a non-dmig server: got %v, want ErrMagic", err)
	}

	s, err := Dial(ctx, l.Addr().String(), sessionHello())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mustAccept(t, acc).Close()
	if !rej.has(ErrMagic) || !rej.has(ErrTruncated) {
		t.Fatalf("listener reports: %v; want ErrMagic and ErrTruncated", rej.errs)
	}
}

func TestHelloRefused(t *testing.T) {
	ctx := testCtx(t)
	l, rej := listen(t)
	acc := acceptAsync(ctx, l, func(h *Hello) HelloAck {
		if h.Blocks[0].Size != 128<<20 {
			return HelloAck{Code: RefuseGeometry, Message: "ram is 134217728 bytes here"}
		}
		return HelloAck{Accepted: true}
	})
	_, err := Dial(ctx, l.Addr().String(), sessionHello())
	var re *RefusedError
	if !errors.Is(err, ErrRefused) || !errors.As(err, &re) || re.Code != RefuseGeometry || !strings.Contains(err.Error(), "134217728") {
		t.Fatalf("got %v, want a geometry refusal", err)
	}
	if !rej.has(ErrRefused) {
		t.Fatalf("listener did not report the refusal: %v", rej.errs)
	}
	h := sessionHello()
	h.Blocks[0].Size = 128 << 20
	s, err := Dial(ctx, l.Addr().String(), h)
	if err != nil {
		t.Fatalf("dial with the right geometry: %v", err)
	}
	s.Close()
	mustAccept(t, acc).Close()
}

func TestAcceptStrayBeforeSessionAndCancel(t *testing.T) {
	l, rej := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	acc := acceptAsync(ctx, l, nil)
	_, err := dialConn(testCtx(t), l.Addr().String(), NewSessionID(), RoleBulk, 1, Version)
	if !errors.Is(err, ErrSession) {
		t.Fatalf("bulk conn with no session: got %v, want ErrSession", err)
	}
	// A silent peer must not hold Accept up once ctx is cancelled.
	nc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	cancel()
	select {
	case a := <-acc:
		if !errors.Is(a.err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", a.err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("Accept took %v to return", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept still blocked 5 s after cancel")
	}
	if !rej.has(ErrSession) {
		t.Fatalf("listener did not report the stray: %v", rej.errs)
	}
	// The listener is still usable after a cancelled Accept.
	acc = acceptAsync(testCtx(t), l, nil)
	s, err := Dial(testCtx(t), l.Addr().String(), sessionHello())
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	mustAccept(t, acc).Close()
}

func TestHandshakeBadRole(t *testing.T) {
	ctx := testCtx(t)
	l, _ := listen(t)
	acc := acceptAsync(ctx, l, nil)
	defer func() {
		if a := <-acc; a.s != nil {
			a.s.Close()
		}
	}()
	if _, err := dialConn(ctx, l.Addr().String(), NewSessionID(), Role(9), 0, Version); !errors.Is(err, ErrRole) {
		t.Fatalf("role 9: got %v, want ErrRole", err)
	}
	if _, err := dialConn(ctx, l.Addr().String(), NewSessionID(), RoleUrgent, 2, Version); !errors.Is(err, ErrRole) {
		t.Fatalf("urgent index 2: got %v, want ErrRole", err)
	}
	s, err := Dial(ctx, l.Addr().String(), sessionHello())
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}

// A source that dies after its Hello was accepted, before opening its other
// connections, must not leave Accept waiting: the half-open session is
// dropped and the next one served.
func TestAcceptDropsHalfOpenSession(t *testing.T) {
	ctx := testCtx(t)
	l, rej := listen(t)
	l.HandshakeTimeout = 200 * time.Millisecond
	dropped := make(chan SessionID, 1)
	l.Dropped = func(h *Hello) { dropped <- h.Session }
	acc := acceptAsync(ctx, l, nil)
	h, ctrl := helloOnly(ctx, t, l)
	// The "dead" source opens nothing more. Its control connection is closed
	// by the destination once the timeout passes.
	if _, err := ctrl.ReadFrame(ctx); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("half-open control conn: got %v, want it closed", err)
	}
	if !rej.has(os.ErrDeadlineExceeded) {
		t.Fatalf("listener did not report the dropped session: %v", rej.errs)
	}
	// What decide reserved for the session must be released: Dropped says so.
	select {
	case id := <-dropped:
		if id != h.Session {
			t.Fatalf("Dropped named session %s, want %s", id, h.Session)
		}
	default:
		t.Fatal("the dropped session's Hello was not passed to Dropped")
	}
	s, err := Dial(ctx, l.Addr().String(), sessionHello())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := mustAccept(t, acc); got.ID() != s.ID() {
		t.Fatalf("accepted session %s, dialled %s", got.ID(), s.ID())
	}
}

// helloOnly opens a session's control connection to l and has its Hello
// accepted, opening no other connection: a source that goes no further.
func helloOnly(ctx context.Context, t *testing.T, l *Listener) (Hello, *Conn) {
	t.Helper()
	h := sessionHello()
	h.Version, h.PageSize, h.Session = Version, PageSize, NewSessionID()
	ctrl, err := dialConn(ctx, l.Addr().String(), h.Session, RoleControl, 0, Version)
	if err != nil {
		t.Fatal(err)
	}
	if err := ctrl.WriteFrame(ctx, &h); err != nil {
		t.Fatal(err)
	}
	if m, err := ctrl.ReadFrame(ctx); err != nil || !m.(*HelloAck).Accepted {
		t.Fatalf("hello ack: %v %v", m, err)
	}
	return h, ctrl
}

// mustAccept takes the next accepted session from acc, failing the test on
// an accept error; the session is closed when the test ends.
func mustAccept(t testing.TB, acc <-chan accepted) *Session {
	t.Helper()
	a := <-acc
	if a.err != nil {
		t.Fatalf("accept: %v", a.err)
	}
	t.Cleanup(func() { a.s.Close() })
	return a.s
}

// A source that gives up after its Hello was accepted (its link failed
// before its other connections were made) closes its control connection:
// the half-open session is dropped at once, long before the handshake
// timeout, so that the same source's next attempt is served rather than
// turned away as busy.
func TestAcceptDropsHungUpSession(t *testing.T) {
	ctx := testCtx(t)
	l, rej := listen(t)
	l.HandshakeTimeout = time.Minute
	dropped := make(chan SessionID, 1)
	l.Dropped = func(h *Hello) { dropped <- h.Session }
	acc := acceptAsync(ctx, l, nil)
	h, ctrl := helloOnly(ctx, t, l)
	t0 := time.Now()
	ctrl.Close()
	select {
	case id := <-dropped:
		if id != h.Session {
			t.Fatalf("Dropped named session %s, want %s", id, h.Session)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the hung-up session was not dropped within 10 s")
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("hung-up session dropped after %v", d)
	}
	if !rej.has(ErrAbandoned) {
		t.Errorf("listener did not report the dropped session: %v", rej.errs)
	}
	s, err := Dial(ctx, l.Addr().String(), sessionHello())
	if err != nil {
		t.Fatalf("the next session after a hung-up one: %v", err)
	}
	defer s.Close()
	if got := mustAccept(t, acc); got.ID() != s.ID() {
		t.Fatalf("accepted session %s, dialled %s", got.ID(), s.ID())
	}
}
