package keeper

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Config is one keeper's charge: a session directory and its guest.
type Config struct {
	Dir string
	// Pid and PidStart name the guest. Pid 0: serve starts the keeper
	// before it creates the guest's RAM files, and tells it the guest
	// once started (TellGuest); a serve gone before then leaves only
	// files, and the keeper removes the directory.
	Pid      int
	PidStart uint64
	// RecoverTimeout is how long a guest in post-copy waits, once serve is
	// gone, for another serve to take the session's lock; then it is
	// killed.
	RecoverTimeout time.Duration
	// Serve is the keeper's end of its pipe from serve: serve writes the
	// guest it started (TellGuest) and the states it reaches past Resumed
	// there, a line each (Tell), so that the keeper knows them even if
	// the journal could not be written; EOF means serve is gone.
	Serve  io.Reader
	Logger hclog.Logger
	// Tick is how often the keeper looks (default 100 ms).
	Tick time.Duration
}

// Run keeps one session until its guest exits (then removes the directory)
// or must be killed (see the package doc). It returns when its work is
// done or ctx ends.
func Run(ctx context.Context, c Config) error {
	if c.Tick <= 0 {
		c.Tick = 100 * time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
	s := watchServe(c.Serve)
	if c.Pid == 0 {
		select {
		case g := <-s.guest:
			c.Pid, c.PidStart = g.pid, g.start
		case <-s.gone:
			c.Logger.Info("serve gone before it started the guest: removing the session directory", "dir", c.Dir)
			return removeDir(c.Dir)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	log := c.Logger.With("dir", c.Dir, "pid", c.Pid)
	p, err := Open(c.Pid, c.PidStart)
	if err != nil {
		log.Info("guest already gone: removing its session directory", "error", err)
		return removeDir(c.Dir)
	}
	defer p.Close()
	// since: when the session was last seen run by a serve, once the one
	// that started it is gone; a serve that adopted the session and died
	// in turn has as long as the first to be replaced.
	var since time.Time
	for {
		if p.Exited(0) {
			log.Info("guest exited: removing its session directory")
			return removeDir(c.Dir)
		}
		select {
		case <-s.gone:
			if since.IsZero() {
				since = time.Now()
			}
		default:
		}
		if !since.IsZero() {
			done, held, err := c.orphaned(p, s.told.Load().(State), time.Since(since), log)
			if done {
				return err
			}
			if held {
				since = time.Now()
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(c.Tick):
		}
	}
}

// guestID names a started guest, as TellGuest sends it.
type guestID struct {
	pid   int
	start uint64
}

// serveLink is what the keeper hears from serve through its pipe.
type serveLink struct {
	told  atomic.Value  // State: the latest serve told
	guest chan guestID  // the guest serve started (once)
	gone  chan struct{} // closed at EOF: serve is gone
}

// watchServe reads the pipe from serve until it ends; a malformed guest
// line ends it as EOF does (a line of no known state is ignored).
func watchServe(r io.Reader) *serveLink {
	s := &serveLink{guest: make(chan guestID, 1), gone: make(chan struct{})}
	s.told.Store(State(""))
	go func() {
		defer close(s.gone)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			line := sc.Text()
			if rest, ok := strings.CutPrefix(line, guestLine); ok {
				var g guestID
				if _, err := fmt.Sscanf(rest, "%d %d", &g.pid, &g.start); err != nil || g.pid <= 0 {
					return
				}
				select {
				case s.guest <- g:
				default: // told twice: the first stands
				}
				continue
			}
			s.told.Store(Later(s.told.Load().(State), State(line)))
		}
	}()
	return s
}

// orphaned acts on a session whose serve is gone, by its journal and what
// serve told (the later of the two states); it reports whether the
// keeper's work is over and whether a serve holds the session now.
func (c Config) orphaned(p *Process, told State, after time.Duration, log hclog.Logger) (done, held bool, err error) {
	j, err := ReadJournal(c.Dir)
	if errors.Is(err, os.ErrNotExist) {
		// Serve removed the session (it failed and killed the guest, or
		// a restarted serve reclaimed it): nothing left to keep but a
		// guest that is no longer ours.
		return true, false, nil
	}
	if err != nil {
		return false, false, nil // mid-rename; look again
	}
	switch Later(j.State, told) {
	case Completed:
		return false, false, nil // the guest is on its own: remove its RAM when it exits
	case Placed:
		c.finish(j, log)
		return false, false, nil
	case Ready, Resumed:
		if !lockFree(c.Dir) {
			return false, true, nil
		}
		if after < c.RecoverTimeout {
			return false, false, nil
		}
		log.Error("serve died during post-copy and no serve took the session over within the recover timeout: killing the guest, which would otherwise wait for pages forever",
			"recover_timeout", c.RecoverTimeout)
	default:
		if !lockFree(c.Dir) {
			return false, true, nil
		}
		log.Warn("serve died before the guest resumed: killing the guest")
	}
	if err := p.Kill(); err != nil {
		return true, false, err
	}
	return true, false, removeDir(c.Dir)
}

// finish completes a session whose serve died with every page in place
// (Placed), unless another serve holds it (a starting serve does the
// same); a failure is logged and tried again at the next look.
func (c Config) finish(j *Journal, log hclog.Logger) {
	lock, err := Lock(c.Dir)
	if err != nil {
		return
	}
	defer lock.Close()
	j.State = Placed // it may say Resumed if serve only told
	if err := finishPlaced(c.Dir, j); err != nil {
		log.Error("serve died as it released a complete guest's RAM; releasing it failed", "error", err)
		return
	}
	log.Info("serve died as it released a complete guest's RAM: released it; the guest is on its own")
}

func removeDir(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove session directory: %w", err)
	}
	return nil
}

// Spawn starts a keeper process for dir: exe (the dmig binary) run as
// `exe keeper --dir DIR --pid PID --pid-start T --recover-timeout D`, in a
// session of its own so that what ends serve does not end it. The returned
// writer is serve's end of the keeper's pipe: TellGuest and Tell write to it,
// and its closing, by Close or by serve's death, tells the keeper that
// serve no longer runs the session.
func Spawn(exe string, c Config) (io.WriteCloser, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("keeper pipe: %w", err)
	}
	cmd := exec.Command(exe, "keeper", "--dir", c.Dir, "--pid", strconv.Itoa(c.Pid),
		"--pid-start", strconv.FormatUint(c.PidStart, 10), "--recover-timeout", c.RecoverTimeout.String())
	cmd.Stdin = pr
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return nil, fmt.Errorf("start keeper for %s: %w", c.Dir, err)
	}
	pr.Close()
	go func() { _ = cmd.Wait() }() // reap it if it ends before serve
	return pw, nil
}

// guestLine starts the line TellGuest writes.
const guestLine = "guest "

// TellGuest tells a keeper started with Pid 0, through w (Spawn's writer),
// the guest serve started.
func TellGuest(w io.Writer, pid int, start uint64) error {
	if _, err := fmt.Fprintf(w, "%s%d %d\n", guestLine, pid, start); err != nil {
		return fmt.Errorf("tell the keeper guest pid %d: %w", pid, err)
	}
	return nil
}

// Tell tells a keeper, through w (Spawn's writer), that its session
// reached st.
func Tell(w io.Writer, st State) error {
	if _, err := io.WriteString(w, string(st)+"\n"); err != nil {
		return fmt.Errorf("tell the keeper %s: %w", st, err)
	}
	return nil
}
