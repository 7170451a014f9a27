package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/dmig/dmig/internal/ramfile"
	"github.com/dmig/dmig/vmm/proc"
	"github.com/dmig/dmig/vmm/qemu"
)

// resumeCmd resumes a source guest a failed migration left paused: after
// Go, dmig cannot know whether the destination runs the guest, so the
// operator, who can, runs this once the destination's guest is dead.
type resumeCmd struct {
	Pid   int           `help:"Pid of the paused process guest."`
	QMP   string        `name:"qmp" placeholder:"SOCKET" help:"QMP socket of the paused QEMU guest."`
	Force bool          `help:"Resume even while a dmig migration still holds the guest (its RAM file lock), or a QEMU guest in a state no migration leaves: only when that migration is known stuck and its destination dead."`
	Wait  time.Duration `default:"10s" help:"Give up after this long (a QMP socket held by another client, a wedged QEMU)."`
}

// Exit statuses of dmig resume (docs/operating.md): 0 resumed, 1 could not
// resume, 2 bad usage, 5 a migration still holds the guest (--force), 6
// not paused (nothing done).
func (c *resumeCmd) Run(g *globals, ctx context.Context) error {
	moreProcs()
	log := g.logger("resume")
	ctx, cancel := context.WithTimeout(ctx, c.Wait)
	defer cancel()
	switch {
	case c.Pid != 0 && c.QMP == "":
		return c.resumeProc(ctx, log)
	case c.QMP != "" && c.Pid == 0:
		return c.resumeQEMU(ctx, log)
	}
	return &statusError{exitUsage, errors.New("name the guest: --pid PID or --qmp SOCKET")}
}

func (c *resumeCmd) resumeProc(ctx context.Context, log hclog.Logger) error {
	h, err := proc.Open(c.Pid)
	if err != nil {
		return &statusError{exitError, err}
	}
	defer h.Close()
	stopped, err := h.Stopped()
	if err != nil {
		return &statusError{exitError, err}
	}
	if !stopped {
		return &statusError{exitNotPaused, fmt.Errorf("guest pid %d is not paused: %w: nothing to resume", c.Pid, proc.ErrNotStopped)}
	}
	unlock, err := c.lock(c.Pid, log)
	if err != nil {
		return err
	}
	defer unlock()
	if err := h.Continue(ctx); err != nil {
		return &statusError{exitError, err}
	}
	log.Info("guest resumed", "pid", c.Pid)
	fmt.Fprintf(os.Stderr, "resumed guest pid %d\n", c.Pid)
	return nil
}

func (c *resumeCmd) resumeQEMU(ctx context.Context, log hclog.Logger) error {
	mon, err := qemu.Dial(ctx, c.QMP)
	if err != nil {
		if ctx.Err() != nil {
			// The socket serves one client at a time: a migration (or
			// another tool) holds it.
			return &statusError{exitBusy, fmt.Errorf("%w: the QMP socket is held by another client (a dmig migrate still running?)", err)}
		}
		return &statusError{exitError, err}
	}
	defer mon.Close()
	st, err := mon.QueryStatus(ctx)
	if err != nil {
		return &statusError{exitError, err}
	}
	if st.Running {
		return &statusError{exitNotPaused, fmt.Errorf("vm at %s is running: %w: nothing to resume", c.QMP, qemu.ErrNotPaused)}
	}
	if pid, err := mon.PeerPid(); err != nil {
		log.Warn("cannot tell whether a migration holds the vm", "error", err)
	} else {
		unlock, err := c.lock(pid, log)
		if err != nil {
			return err
		}
		defer unlock()
	}
	if _, err := mon.ResumePaused(ctx, c.Force); err != nil {
		if errors.Is(err, qemu.ErrNotPaused) {
			return &statusError{exitNotPaused, fmt.Errorf("%w; --force to resume it anyway", err)}
		}
		return &statusError{exitError, err}
	}
	log.Info("vm resumed", "qmp", c.QMP, "status_found", st.Status)
	fmt.Fprintf(os.Stderr, "resumed vm at %s (was %s)\n", c.QMP, st.Status)
	return nil
}

// lock takes the migration lock of the guest's RAM files, so no migration
// of it runs or starts while it is resumed; one held elsewhere refuses
// the resume unless --force.
func (c *resumeCmd) lock(pid int, log hclog.Logger) (func(), error) {
	files, err := ramfile.LockMapped(pid)
	if err != nil {
		if !c.Force {
			if errors.Is(err, ramfile.ErrLocked) {
				return nil, &statusError{exitBusy, fmt.Errorf("a dmig migration still holds guest pid %d (%w): it may yet hand the guest to its destination, or resume it; if that migration is stuck and its destination's guest is dead, add --force", pid, err)}
			}
			return nil, &statusError{exitError, fmt.Errorf("take the migration lock of guest pid %d: %w (--force resumes without it)", pid, err)}
		}
		log.Warn("resuming without the migration lock (--force)", "error", err)
		return func() {}, nil
	}
	return func() {
		for _, f := range files {
			f.Close()
		}
	}, nil
}
