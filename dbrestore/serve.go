package dbrestore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dmig/dmig/internal/keeper"
	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/wire"
)

// Result is the outcome of one migration received by Serve.
type Result struct {
	Guest   string
	Session wire.SessionID
	Figures *report.Dest
	Err     error
}

// Serve accepts migrations on l until ctx ends, each in its own goroutine,
// and refuses a second migration of a guest (by name) while one runs. A
// source reconnecting a session after a lost link (wire.FlagRecover) is
// handed to that session. With cfg.Dir set, Serve first reclaims the
// session directories a dead serve left there and adopts its guests in
// post-copy (package keeper). Each finished migration is passed to done,
// if not nil. With once, Serve returns after the first accepted migration
// ends, with its error.
func Serve(ctx context.Context, l *wire.Listener, cfg Config, once bool, done func(Result)) error {
	cfg.defaults()
	s := &server{cfg: cfg, byGuest: map[string]*session{}, byID: map[wire.SessionID]*session{}}
	defer s.wg.Wait()
	l.Rejected = func(a net.Addr, err error) {
		cfg.Logger.Warn("connection refused", "from", a, "error", err)
	}
	l.Dropped = s.dropped
	if cfg.Dir != "" {
		found, err := keeper.Reclaim(cfg.Dir, cfg.Logger.Named("reclaim"))
		if err != nil {
			cfg.Logger.Warn("reclaim session directories", "error", err)
		}
		for _, j := range found.Completed {
			// The serve that died may have been killed between its
			// journal's "completed" and the Complete reaching the
			// source: a reconnection learns the guest runs here.
			s.completedAt(j.Session, j.Updated)
		}
		for _, o := range found.Orphans {
			s.adoptOrphan(ctx, o, done)
		}
	}
	// With once, Accept goes on while the migration runs (its source may
	// reconnect) and ends with it.
	actx, stopAccept := context.WithCancel(ctx)
	defer stopAccept()
	res := make(chan error, 1)
	for {
		var pending *session
		sess, err := l.Accept(actx, func(h *wire.Hello) wire.HelloAck {
			if once && h.Flags&wire.FlagRecover == 0 && s.started.Load() {
				return wire.HelloAck{Code: wire.RefuseBusy, Message: "this dmig serve --once already runs its migration"}
			}
			ack, p := s.decide(h)
			pending = p
			return ack
		})
		if err != nil {
			if once && s.started.Load() && ctx.Err() == nil && actx.Err() != nil {
				return <-res
			}
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			cfg.Logger.Warn("session refused or failed to open", "error", err)
			continue
		}
		if sess.Hello.Flags&wire.FlagRecover != 0 {
			cfg.Logger.Info("source reconnected", "guest", sess.Hello.Guest, "session", sess.ID())
			s.deliver(pending, sess)
			continue
		}
		cfg.Logger.Info("migration accepted", "guest", sess.Hello.Guest, "mode", sess.Hello.Mode, "session", sess.ID())
		s.started.Store(true)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			fig, err := receive(ctx, sess, pending.guest, cfg, pending.recovered)
			s.end(pending, err == nil)
			if done != nil {
				done(Result{Guest: sess.Hello.Guest, Session: sess.ID(), Figures: fig, Err: err})
			}
			if once {
				res <- err
				stopAccept()
			}
		}()
	}
}

// server is Serve's state: the sessions running, by guest and by ID.
type server struct {
	cfg     Config
	wg      sync.WaitGroup
	started atomic.Bool // a migration was accepted (Serve's once)

	mu      sync.Mutex
	byGuest map[string]*session
	byID    map[wire.SessionID]*session
	// completed: sessions that completed here lately, by when, so that a
	// source whose link failed as the Complete went out learns, when it
	// reconnects, that the guest runs here (RefuseCompleted).
	completed map[wire.SessionID]time.Time
}

// completedKeep is how long a completed session is remembered for its
// source's reconnection: past any --recover-timeout an operator sets.
const completedKeep = time.Hour

// completedAt records that session id completed at t, and forgets those
// completed more than completedKeep before.
func (s *server) completedAt(id wire.SessionID, t time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.completed == nil {
		s.completed = map[wire.SessionID]time.Time{}
	}
	for k, at := range s.completed {
		if t.Sub(at) > completedKeep {
			delete(s.completed, k)
		}
	}
	s.completed[id] = t
}

// session is one migration Serve runs.
type session struct {
	id    wire.SessionID
	name  string
	guest Guest
	// recovered hands the source's reconnections to the session; claimed
	// says one is on its way (between decide and Accept's return).
	recovered chan *wire.Session
	claimed   bool
	ended     bool // end ran: nothing takes reconnections any more
}

// decide answers a Hello: a new migration, or a reconnection of one this
// server runs.
func (s *server) decide(h *wire.Hello) (wire.HelloAck, *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if h.Flags&wire.FlagRecover != 0 {
		p := s.byID[h.Session]
		switch {
		case p == nil && !s.completed[h.Session].IsZero() && time.Since(s.completed[h.Session]) <= completedKeep:
			return wire.HelloAck{Code: wire.RefuseCompleted, Message: fmt.Sprintf("session %s of guest %s completed on this host at %s", h.Session, h.Guest, s.completed[h.Session].UTC().Format(time.RFC3339Nano))}, nil
		case p == nil:
			return wire.HelloAck{Code: wire.RefuseOther, Message: fmt.Sprintf("no session %s of guest %s to reconnect on this host", h.Session, h.Guest)}, nil
		case p.claimed || len(p.recovered) > 0:
			return wire.HelloAck{Code: wire.RefuseBusy, Message: fmt.Sprintf("session %s is already reconnecting", h.Session)}, nil
		}
		p.claimed = true
		return wire.HelloAck{Accepted: true}, p
	}
	if s.byGuest[h.Guest] != nil {
		return wire.HelloAck{Code: wire.RefuseBusy, Message: fmt.Sprintf("guest %s is already migrating to this host", h.Guest)}, nil
	}
	if s.byID[h.Session] != nil {
		return wire.HelloAck{Code: wire.RefuseBusy, Message: fmt.Sprintf("session %s already runs on this host", h.Session)}, nil
	}
	g, err := s.cfg.NewGuest(h)
	if err != nil {
		return wire.HelloAck{Code: wire.RefuseUnsupported, Message: err.Error()}, nil
	}
	p := &session{id: h.Session, name: h.Guest, guest: g, recovered: make(chan *wire.Session, 1)}
	s.byGuest[h.Guest] = p
	s.byID[h.Session] = p
	return wire.HelloAck{Accepted: true}, p
}

// dropped releases what decide reserved for a Hello whose session never
// opened.
func (s *server) dropped(h *wire.Hello) {
	s.mu.Lock()
	p := s.byID[h.Session]
	if p == nil {
		s.mu.Unlock()
		return
	}
	if h.Flags&wire.FlagRecover != 0 {
		p.claimed = false
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	s.end(p, false)
	// The guest was never started; what NewGuest made goes.
	err := p.guest.Kill()
	if s.cfg.Dir != "" {
		err = errors.Join(err, os.RemoveAll(SessionDir(s.cfg.Dir, h.Session)))
	}
	if err != nil {
		s.cfg.Logger.Warn("clean up after a dropped session", "session", h.Session, "error", err)
	}
}

// end forgets a session, remembering it as completed if it did, at once:
// a reconnection in between would be told no such session ran here. A
// reconnection handed to it that it never took is closed: its source
// redials and learns how the session ended.
func (s *server) end(p *session, completed bool) {
	if completed {
		s.completedAt(p.id, time.Now())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byGuest[p.name] == p {
		delete(s.byGuest, p.name)
	}
	if s.byID[p.id] == p {
		delete(s.byID, p.id)
	}
	p.ended = true
	select {
	case late := <-p.recovered:
		late.Close()
	default:
	}
}

// deliver hands a reconnection to its session, or closes it if the
// session ended since decide accepted it.
func (s *server) deliver(p *session, sess *wire.Session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p.claimed = false
	if p.ended {
		sess.Close()
		return
	}
	p.recovered <- sess // buffered, and claimed by decide: never blocks
}

// adoptOrphan runs a session a dead serve left in post-copy (Reclaim).
func (s *server) adoptOrphan(ctx context.Context, o keeper.Orphan, done func(Result)) {
	j := o.Journal
	p := &session{id: j.Session, name: j.Guest, recovered: make(chan *wire.Session, 1)}
	s.mu.Lock()
	s.byGuest[p.name] = p
	s.byID[p.id] = p
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		fig, err := adopt(ctx, o, s.cfg, p.recovered)
		s.end(p, err == nil)
		if done != nil {
			done(Result{Guest: j.Guest, Session: j.Session, Figures: fig, Err: err})
		}
	}()
}
