package dbrestore

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dmig/dmig/internal/keeper"
	"github.com/dmig/dmig/wire"
)

// fakeGuest is a guest that cannot be created: enough for Serve's
// bookkeeping, which is all these tests look at.
type fakeGuest struct{ kills *atomic.Int32 }

func (g fakeGuest) Create(context.Context, []wire.Block) ([]string, error) {
	return nil, errors.New("fake guest")
}
func (g fakeGuest) Start(context.Context) (int, error) { return 0, errors.New("fake guest") }
func (g fakeGuest) Resume(context.Context) error       { return nil }
func (g fakeGuest) Kill() error                        { g.kills.Add(1); return nil }

// firstOnly forwards the first connection to target and resets every
// other: a source that dies right after its Hello was accepted.
func firstOnly(t *testing.T, target string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for n := 0; ; n++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if n > 0 {
				c.Close()
				continue
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			go func() { _, _ = io.Copy(u, c); u.Close() }()
			go func() { _, _ = io.Copy(c, u); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

// TestServeDroppedSessionNotBusy: a session accepted by its Hello whose
// other connections never arrive is dropped, and its guest is not left
// "already migrating": the next migration of that guest is accepted.
func TestServeDroppedSessionNotBusy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := wire.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.HandshakeTimeout = 300 * time.Millisecond
	var kills atomic.Int32
	cfg := Config{NewGuest: func(*wire.Hello) (Guest, error) { return fakeGuest{&kills}, nil }}
	go func() { _ = Serve(ctx, l, cfg, false, nil) }()

	h := wire.Hello{Mode: "precopy", Guest: "g1", BulkConns: 1, Blocks: []wire.Block{{Name: "ram0", Size: 1 << 20}}}
	if s, err := wire.Dial(ctx, firstOnly(t, l.Addr().String()), h); err == nil {
		s.Close()
		t.Fatal("dial through a proxy that drops all but the control connection succeeded")
	}
	// The listener drops the half-open session after its handshake timeout.
	deadline := time.Now().Add(5 * time.Second)
	for kills.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the dropped session's guest was never released")
		}
		time.Sleep(10 * time.Millisecond)
	}
	s, err := wire.Dial(ctx, l.Addr().String(), h)
	if err != nil {
		t.Fatalf("second migration of guest g1 after a dropped session: %v", err)
	}
	s.Close()
}

// A reconnection to a session that completed here is told so
// (RefuseCompleted), for an hour; one to a session this host never ran is
// refused as unknown; and a completed session is no longer busy.
func TestServeRemembersCompletedSessions(t *testing.T) {
	s := &server{byGuest: map[string]*session{}, byID: map[wire.SessionID]*session{}}
	done, other := wire.NewSessionID(), wire.NewSessionID()
	now := time.Now()
	s.completedAt(done, now)
	recover := func(id wire.SessionID) wire.HelloAck {
		ack, p := s.decide(&wire.Hello{Guest: "g", Session: id, Flags: wire.FlagRecover})
		if p != nil {
			t.Fatalf("reconnection of %s accepted", id)
		}
		return ack
	}
	if ack := recover(done); ack.Code != wire.RefuseCompleted {
		t.Errorf("reconnection to a completed session: %+v, want RefuseCompleted", ack)
	}
	if ack := recover(other); ack.Code != wire.RefuseOther {
		t.Errorf("reconnection to an unknown session: %+v, want RefuseOther", ack)
	}
	// Past completedKeep it is forgotten, at the next completion.
	s.completedAt(other, now.Add(completedKeep+time.Minute))
	if _, ok := s.completed[done]; ok {
		t.Error("a session completed over an hour before is still remembered")
	}
}

// A serve that starts where a dead one left a completed session (killed
// between its journal's "completed" and the Complete reaching the source)
// tells the reconnecting source the session completed, so that the source
// learns its guest runs here rather than failing after resume.
func TestServeLearnsCompletedFromJournal(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	root := t.TempDir()
	g := exec.Command("sleep", "300")
	if err := g.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Process.Kill(); _ = g.Wait() })
	start, err := keeper.StartTime(g.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	h := wire.Hello{Mode: "hybrid", Guest: "g1", Session: wire.NewSessionID(), BulkConns: 1, Blocks: []wire.Block{{Name: "ram0", Size: 1 << 20}}}
	dir := SessionDir(root, h.Session)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	j := &keeper.Journal{Session: h.Session, Guest: h.Guest, State: keeper.Completed, Pid: g.Process.Pid, PidStart: start, UffdFD: -1, Hello: h}
	if err := j.Write(dir); err != nil {
		t.Fatal(err)
	}

	l, err := wire.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var kills atomic.Int32
	cfg := Config{Dir: root, NewGuest: func(*wire.Hello) (Guest, error) { return fakeGuest{&kills}, nil }}
	go func() { _ = Serve(ctx, l, cfg, false, nil) }()

	h.Flags |= wire.FlagRecover
	s, err := wire.Dial(ctx, l.Addr().String(), h)
	var refused *wire.RefusedError
	if !errors.As(err, &refused) || refused.Code != wire.RefuseCompleted {
		if s != nil {
			s.Close()
		}
		t.Fatalf("reconnection to a session whose journal says completed: %v, want RefuseCompleted", err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Errorf("the running guest's session directory: %v", err)
	}
	if kills.Load() != 0 || g.ProcessState != nil {
		t.Error("the completed guest was killed")
	}
}

// A reconnection accepted as its session ends (decide, then end, then
// deliver) is closed rather than left unread, so that its source redials
// and is told the session completed; a completed session is remembered
// before it is forgotten, so no reconnection finds it in neither.
func TestServeClosesReconnectionToEndedSession(t *testing.T) {
	s := &server{byGuest: map[string]*session{}, byID: map[wire.SessionID]*session{}}
	p := &session{id: wire.NewSessionID(), name: "g", recovered: make(chan *wire.Session, 1)}
	s.byGuest[p.name], s.byID[p.id] = p, p
	h := &wire.Hello{Guest: "g", Session: p.id, Flags: wire.FlagRecover}
	ack, got := s.decide(h)
	if !ack.Accepted || got != p {
		t.Fatalf("reconnection to a running session: %+v", ack)
	}
	s.end(p, true)
	a, b := net.Pipe()
	defer b.Close()
	s.deliver(p, &wire.Session{Control: wire.NewConn(a, wire.RoleControl, 0)})
	if len(p.recovered) != 0 {
		t.Fatal("a reconnection to an ended session was queued for nobody")
	}
	_ = b.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := b.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("the late reconnection's connection: %v, want it closed", err)
	}
	if ack, _ := s.decide(h); ack.Code != wire.RefuseCompleted {
		t.Fatalf("redial after the session completed: %+v, want RefuseCompleted", ack)
	}
}
