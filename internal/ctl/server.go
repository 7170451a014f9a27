package ctl

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/dmig/dmig/internal/bandwidth"
	"github.com/dmig/dmig/internal/report"
)

// DefaultDir is where the control sockets are: under /run/dmig, beside the
// drain's locks, and gone at reboot with the migrations they served.
const DefaultDir = "/run/dmig/ctl"

// sampleEvery is how often a server samples its migrations' figures, so
// that the smoothed rates do not depend on how often dmig status asks.
const sampleEvery = 500 * time.Millisecond

// ioTimeout bounds one request and its answer on a control connection.
const ioTimeout = 5 * time.Second

// maxRequest bounds a request's size.
const maxRequest = 64 << 10

// Registration is a migration as its process lists it.
type Registration struct {
	// Names are the other names dmig status and dmig cancel take for the
	// guest, besides Live's Guest and session ID (the drain entry's name,
	// pid:PID, qmp:SOCKET).
	Names []string
	// Live returns the migration's raw figures; it is called from the
	// server's goroutines and must return at once.
	Live func() report.Live
	// Cancel asks the migration to abort for reason: nil if it will,
	// ErrPastGo (or another error) if it refuses. Nil: not cancellable.
	Cancel func(reason error) error
	// Bandwidth is the bucket the migration's page traffic draws from:
	// dmig set-bandwidth changes its cap. Nil: no cap to change here.
	Bandwidth *bandwidth.Limiter
}

// Server is a process's control socket.
type Server struct {
	path    string
	command string
	ln      *net.UnixListener
	log     hclog.Logger
	linger  time.Duration
	stop    chan struct{}
	wg      sync.WaitGroup

	mu      sync.Mutex
	next    int
	entries map[int]*Handle
	total   *bandwidth.Limiter // the drain's total cap, nil: none here
}

// SetTotal makes l the bucket dmig set-bandwidth drain:PID changes: a
// drain's total, the parent of its guests' buckets.
func (s *Server) SetTotal(l *bandwidth.Limiter) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.total = l
}

// Handle is one registered migration; End it when the migration ends.
type Handle struct {
	s   *Server
	id  int
	reg Registration

	mu      sync.Mutex
	fig     figures
	ended   time.Time
	outcome string
	err     string
}

// Options configure Listen.
type Options struct {
	// Linger is how long an ended migration stays listed with its
	// outcome (0: it goes at once). A serve lists each finished session
	// for a while; a migrate exits, and its socket goes with it.
	Linger time.Duration
	Logger hclog.Logger
}

// Listen opens the control socket of this process, command (migrate,
// serve, drain), in dir (created 0700 if missing; an existing one must be
// this user's and closed to others).
func Listen(dir, command string, o Options) (*Server, error) {
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	if err := ensureDir(dir); err != nil {
		return nil, err
	}
	// Those of processes killed before they could remove theirs: a
	// host's cron drains and fault tests would pile them up.
	sweep(dir)
	name := command + "-" + strconv.Itoa(os.Getpid())
	path := filepath.Join(dir, name+".sock")
	tmp := filepath.Join(dir, "."+name+".tmp")
	// Left by a dead process whose pid this one reuses.
	_ = os.Remove(tmp)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on control socket %s: %w", tmp, err)
	}
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (*Server, error) {
		ln.Close()
		os.Remove(tmp)
		return nil, err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(fmt.Errorf("control socket %s: %w", tmp, err))
	}
	// Listening before it is visible: a client refused a connection to a
	// visible socket may take it for a dead process's and remove it.
	if err := os.Rename(tmp, path); err != nil {
		return fail(fmt.Errorf("control socket %s: %w", path, err))
	}
	s := &Server{path: path, command: command, ln: ln, log: o.Logger, linger: o.Linger, stop: make(chan struct{}), entries: map[int]*Handle{}}
	s.wg.Add(2)
	go s.accept()
	go s.sample()
	return s, nil
}

// ensureDir makes dir, or checks an existing one: a directory of this
// user's that no one else may enter.
func ensureDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("control socket directory %s: %w", dir, err)
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("control socket directory %s: %w", dir, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("control socket directory %s: not a directory", dir)
	}
	if uid, ok := ownerOf(st); ok && uid != os.Geteuid() {
		return fmt.Errorf("control socket directory %s: owned by uid %d, not %d: remove it", dir, uid, os.Geteuid())
	}
	if st.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("control socket directory %s: mode %v lets others in: chmod 0700 it", dir, st.Mode().Perm())
	}
	return nil
}

// Path is the socket's path.
func (s *Server) Path() string { return s.path }

// Close stops serving and removes the socket.
func (s *Server) Close() error {
	if s == nil {
		return nil
	}
	close(s.stop)
	err := s.ln.Close()
	s.wg.Wait()
	if rerr := os.Remove(s.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		err = errors.Join(err, rerr)
	}
	return err
}

// Add lists a migration. A nil Server lists nothing (and its Handle does
// nothing), so callers need not care whether the socket could be opened.
func (s *Server) Add(r Registration) *Handle {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next++
	h := &Handle{s: s, id: s.next, reg: r}
	s.entries[h.id] = h
	return h
}

// End marks the migration ended with outcome and err: it stays listed so
// for the server's linger, then goes.
func (h *Handle) End(outcome report.Outcome, err error) {
	if h == nil {
		return
	}
	h.mu.Lock()
	if h.ended.IsZero() {
		h.observeLocked(time.Now())
		h.ended, h.outcome = time.Now(), string(outcome)
		if err != nil {
			h.err = err.Error()
		}
		// What the migration's functions hold (a destination's page
		// tables) must not outlive it for the linger.
		h.reg.Live, h.reg.Cancel, h.reg.Bandwidth = nil, nil, nil
	}
	h.mu.Unlock()
	if h.s.linger <= 0 {
		h.s.remove(h)
	}
}

func (s *Server) remove(h *Handle) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.entries[h.id] == h {
		delete(s.entries, h.id)
	}
}

// observeLocked samples the migration, unless it ended.
func (h *Handle) observeLocked(now time.Time) {
	if h.ended.IsZero() && h.reg.Live != nil {
		h.fig.observe(now, h.reg.Live())
	}
}

// entry is the handle's entry as of now.
func (h *Handle) entry(now time.Time) Entry {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.observeLocked(now)
	at := now
	if !h.ended.IsZero() {
		at = h.ended
	}
	e := Entry{ID: h.id, PID: os.Getpid(), Command: h.s.command, Names: h.reg.Names, Socket: h.s.path}
	h.fig.entry(at, &e)
	e.Outcome, e.Error = h.outcome, h.err
	e.Cancellable = h.reg.Cancel != nil && h.ended.IsZero() && !e.GoSent
	if l := h.reg.Bandwidth; l != nil {
		st := l.Stats()
		e.MaxBandwidth, e.SharedMaxBandwidth, e.BandwidthChanges = &st.Rate, l.SharedRate(), len(st.Changes)+st.Dropped
	}
	return e
}

// limiter is the migration's bucket, nil once it ended or if it has none.
func (h *Handle) limiter() *bandwidth.Limiter {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.reg.Bandwidth
}

// canceller is the migration's Cancel, nil once it ended or if it has
// none.
func (h *Handle) canceller() func(error) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.reg.Cancel
}

// list returns the entries, oldest first, dropping those past their
// linger.
func (s *Server) list(now time.Time) []Entry {
	s.mu.Lock()
	hs := make([]*Handle, 0, len(s.entries))
	for _, h := range s.entries {
		hs = append(hs, h)
	}
	s.mu.Unlock()
	sort.Slice(hs, func(i, j int) bool { return hs[i].id < hs[j].id })
	out := make([]Entry, 0, len(hs))
	for _, h := range hs {
		h.mu.Lock()
		gone := !h.ended.IsZero() && now.Sub(h.ended) > h.s.linger
		h.mu.Unlock()
		if gone {
			s.remove(h)
			continue
		}
		out = append(out, h.entry(now))
	}
	return out
}

// sample observes every running migration each sampleEvery.
func (s *Server) sample() {
	defer s.wg.Done()
	t := time.NewTicker(sampleEvery)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			_ = s.list(now)
		}
	}
}

// request is what a client asks, one JSON object a connection.
type request struct {
	Op     string `json:"op"` // "status", "cancel" or "set-bandwidth"
	ID     int    `json:"id,omitempty"`
	Reason string `json:"reason,omitempty"`
	// Rate: set-bandwidth's new cap, bytes/s (0: none).
	Rate uint64 `json:"rate,omitempty"`
	// Total: set-bandwidth of the process's total cap (a drain's), not
	// of entry ID.
	Total bool `json:"total,omitempty"`
}

// response is the server's answer.
type response struct {
	Entries []Entry `json:"entries,omitempty"`
	Error   string  `json:"error,omitempty"`
	// Refused: a cancel the migration refused (Error says why).
	Refused bool `json:"refused,omitempty"`
	// From: a total's cap before set-bandwidth changed it.
	From uint64 `json:"from,omitempty"`
}

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			select {
			case <-s.stop:
				return
			default:
			}
			s.log.Warn("control socket: accept", "error", err)
			// A descriptor shortage: give it a moment rather than spin.
			select {
			case <-s.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serve(c)
		}()
	}
}

// serve answers one connection: one request, one response.
func (s *Server) serve(c *net.UnixConn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	p, err := peerOf(c)
	if err != nil {
		s.log.Warn("control socket: refused a connection", "error", err)
		return
	}
	enc := json.NewEncoder(c)
	if p.UID != 0 && int(p.UID) != os.Geteuid() {
		s.log.Warn("control socket: refused a connection from another user", "uid", p.UID, "pid", p.PID)
		_ = enc.Encode(response{Error: fmt.Sprintf("uid %d may not control this migration", p.UID)})
		return
	}
	var req request
	if err := json.NewDecoder(bufio.NewReader(io.LimitReader(c, maxRequest))).Decode(&req); err != nil {
		_ = enc.Encode(response{Error: fmt.Sprintf("bad request: %v", err)})
		return
	}
	_ = enc.Encode(s.answer(req, p))
}

func (s *Server) answer(req request, p peer) response {
	switch req.Op {
	case "status":
		return response{Entries: s.list(time.Now())}
	case "set-bandwidth":
		return s.setBandwidth(req, p)
	case "cancel":
		s.mu.Lock()
		h := s.entries[req.ID]
		s.mu.Unlock()
		if h == nil {
			return response{Error: fmt.Sprintf("entry %d: %v", req.ID, ErrNotFound)}
		}
		e := h.entry(time.Now())
		cancel := h.canceller()
		switch {
		case e.Outcome != "":
			return response{Refused: true, Error: "it already ended: " + e.Outcome}
		case cancel == nil:
			return response{Refused: true, Error: fmt.Sprintf("%v: this host is the %s", ErrNotCancellable, e.Role)}
		}
		reason := fmt.Errorf("%w (uid %d, pid %d)", ErrCancelled, p.UID, p.PID)
		if req.Reason != "" {
			reason = fmt.Errorf("%w (uid %d, pid %d): %s", ErrCancelled, p.UID, p.PID, req.Reason)
		}
		if err := cancel(reason); err != nil {
			s.log.Warn("cancel refused", "guest", e.Guest, "uid", p.UID, "pid", p.PID, "error", err)
			return response{Refused: true, Error: err.Error(), Entries: []Entry{e}}
		}
		s.log.Warn("cancelling the migration at the operator's request", "guest", e.Guest, "uid", p.UID, "pid", p.PID)
		return response{Entries: []Entry{h.entry(time.Now())}}
	}
	return response{Error: fmt.Sprintf("unknown op %q", req.Op)}
}

// setBandwidth changes the cap of entry req.ID to req.Rate.
func (s *Server) setBandwidth(req request, p peer) response {
	if req.Rate != 0 && req.Rate < bandwidth.MinRate {
		return response{Error: fmt.Sprintf("bandwidth %d bytes/s: below the smallest cap, 1M; 0 means none", req.Rate)}
	}
	s.mu.Lock()
	h, total := s.entries[req.ID], s.total
	s.mu.Unlock()
	if req.Total {
		if total == nil {
			return response{Refused: true, Error: fmt.Sprintf("%v: dmig %s has no total cap (only dmig drain has)", ErrNoCap, s.command)}
		}
		from := total.Rate()
		total.SetRate(req.Rate)
		s.log.Info("total bandwidth cap changed at the operator's request", "from", bandwidth.Format(from), "to", bandwidth.Format(req.Rate), "uid", p.UID, "pid", p.PID)
		return response{From: from}
	}
	if h == nil {
		return response{Error: fmt.Sprintf("entry %d: %v", req.ID, ErrNotFound)}
	}
	e := h.entry(time.Now())
	l := h.limiter()
	switch {
	case e.Outcome != "":
		return response{Refused: true, Error: "it already ended: " + e.Outcome, Entries: []Entry{e}}
	case l == nil:
		return response{Refused: true, Error: fmt.Sprintf("%v: this host is the %s", ErrNoCap, e.Role), Entries: []Entry{e}}
	}
	from := l.Rate()
	l.SetRate(req.Rate)
	s.log.Info("bandwidth cap changed at the operator's request", "guest", e.Guest, "from", bandwidth.Format(from), "to", bandwidth.Format(req.Rate), "uid", p.UID, "pid", p.PID)
	return response{Entries: []Entry{h.entry(time.Now())}}
}

// ownerOf is the uid owning the file st describes.
func ownerOf(st os.FileInfo) (int, bool) {
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		return int(sys.Uid), true
	}
	return 0, false
}
