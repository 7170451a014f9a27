package keeper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Config is one keeper's charge: a session directory and its guest.
type Config struct {
	Dir      string
	Pid      int
	PidStart uint64
	// RecoverTimeout is how long a guest in post-copy waits, once serve is
	// gone, for another serve to take the session's lock; then it is
	// killed.
	RecoverTimeout time.Duration
	// Serve is the keeper's end of its pipe from serve: EOF means serve is
	// gone (it never writes).
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
	log := c.Logger.With("dir", c.Dir, "pid", c.Pid)
	p, err := Open(c.Pid, c.PidStart)
	if err != nil {
		log.Info("guest already gone: removing its session directory", "error", err)
		return removeDir(c.Dir)
	}
	defer p.Close()
	gone := make(chan struct{})
	go func() {
		// Anything but data is the end of serve; data is not expected.
		_, _ = io.Copy(io.Discard, c.Serve)
		close(gone)
	}()
	var since time.Time // when serve went away
	for {
		if p.Exited(0) {
			log.Info("guest exited: removing its session directory")
			return removeDir(c.Dir)
		}
		select {
		case <-gone:
			if since.IsZero() {
				since = time.Now()
			}
		default:
		}
		if !since.IsZero() {
			done, err := c.orphaned(p, time.Since(since), log)
			if done {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(c.Tick):
		}
	}
}

// orphaned acts on a session whose serve is gone, by its journal; it
// reports whether the keeper's work is over.
func (c Config) orphaned(p *Process, after time.Duration, log hclog.Logger) (bool, error) {
	j, err := ReadJournal(c.Dir)
	if errors.Is(err, os.ErrNotExist) {
		// Serve removed the session (it failed and killed the guest, or
		// a restarted serve reclaimed it): nothing left to keep but a
		// guest that is no longer ours.
		return true, nil
	}
	if err != nil {
		return false, nil // mid-rename; look again
	}
	switch j.State {
	case Completed:
		return false, nil // the guest is on its own: remove its RAM when it exits
	case Ready, Resumed:
		if after < c.RecoverTimeout || !lockFree(c.Dir) {
			return false, nil
		}
		log.Error("serve died during post-copy and no serve took the session over within the recover timeout: killing the guest, which would otherwise wait for pages forever",
			"recover_timeout", c.RecoverTimeout)
	default:
		if !lockFree(c.Dir) {
			return false, nil
		}
		log.Warn("serve died before the guest resumed: killing the guest")
	}
	if err := p.Kill(); err != nil {
		return true, err
	}
	return true, removeDir(c.Dir)
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
// closer is serve's end of the keeper's pipe: its closing, by Close or by
// serve's death, tells the keeper that serve no longer runs the session.
func Spawn(exe string, c Config) (io.Closer, error) {
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
