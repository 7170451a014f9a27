package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/dmig/dmig/internal/ctl"
	"github.com/dmig/dmig/internal/guardian"
	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/precopy"
	"github.com/dmig/dmig/vmm/proc"
	"github.com/dmig/dmig/vmm/qemu"
	"github.com/dmig/dmig/wire"
)

// guardianCmd is the guardian a migration starts before it first pauses
// its source guest (internal/guardian): hidden, started by dmig itself.
type guardianCmd struct {
	Pid int    `help:"Process guest to resume if the migration dies before Go."`
	QMP string `name:"qmp" placeholder:"SOCKET" help:"QMP socket of the QEMU guest to resume if the migration dies before Go."`
}

func (c *guardianCmd) Run(g *globals) error {
	// Nothing but the end of the migration ends the guardian: a log line
	// to a reader that died with the migration (SIGPIPE) or a hang-up
	// must not kill it before it resumed the guest. SIGINT and SIGTERM are
	// already caught by main.
	signal.Ignore(syscall.SIGPIPE, syscall.SIGHUP)
	ref := guestRef{pid: c.Pid, qmp: c.QMP}
	log := g.logger("guardian").With("guest", ref.String(), "guardian_pid", os.Getpid())
	var t guardian.Target
	switch {
	case c.QMP != "" && c.Pid == 0:
		t = qmpTarget{path: c.QMP, log: log}
	case c.Pid != 0 && c.QMP == "":
		h, err := proc.Open(c.Pid)
		if err != nil {
			return err
		}
		defer h.Close()
		t = procTarget{h}
	default:
		return &statusError{exitUsage, errors.New("guardian: give --pid or --qmp")}
	}
	_, err := guardian.Serve(os.Stdin, os.Stdout, t, guardian.Options{Logger: log, Hint: ref.resumeCommand()})
	return err
}

type procTarget struct{ h *proc.Handle }

func (t procTarget) Resume(ctx context.Context) error {
	err := t.h.Continue(ctx)
	if errors.Is(err, proc.ErrGone) {
		return fmt.Errorf("%w: %w", guardian.ErrGone, err)
	}
	return err
}

type qmpTarget struct {
	path string
	log  hclog.Logger
}

func (t qmpTarget) Resume(ctx context.Context) error {
	st, err := qemu.ResumeAt(ctx, t.path)
	if err == nil {
		t.log.Info("vm resumed through qmp", "status_found", st.Status)
	}
	return err
}

// guestRef names a source guest as dmig resume takes it.
type guestRef struct {
	pid int
	qmp string
}

func (r guestRef) String() string {
	if r.qmp != "" {
		return "qmp:" + r.qmp
	}
	return "pid:" + strconv.Itoa(r.pid)
}

// resumeCommand is the one command that resumes the guest by hand.
func (r guestRef) resumeCommand() string {
	if r.qmp != "" {
		return "dmig resume --qmp " + r.qmp
	}
	return "dmig resume --pid " + strconv.Itoa(r.pid)
}

// guardedGuest is a source guest as the CLI found it, for guarded.
type guardedGuest struct {
	precopy.Guest
	ref guestRef
	// running tells whether the guest runs: the guardian is armed only
	// for a guest this migration pauses.
	running func(context.Context) (bool, error)
	// release, if not nil, closes what the guardian needs free to resume
	// the guest (the QMP connection).
	release func()
	// ctl, if not nil, lists the migration for dmig status and cancel,
	// under names too (a drain entry's name) besides the guest's own and
	// its ref.
	ctl   *ctl.Server
	names []string
}

// guarded migrates guest, each attempt behind a guardian (guardedOnce). An
// attempt that aborted before Go for a reason another may not meet (the
// link, the destination's serve or guest failed: precopy.Restartable) is
// started over, the guest running on meanwhile, until cfg.RecoverTimeout
// has passed since the first such abort. The migration is listed on
// guest.ctl; a cancel from there aborts it and ends the restarts.
func guarded(ctx context.Context, g *globals, log hclog.Logger, guest guardedGuest, cfg precopy.Config) (rep *report.Report, err error) {
	ctx, w, h := watch(ctx, guest.ctl, guest, &cfg)
	defer func() {
		err = cancelled(ctx, err)
		outcome := report.Completed
		if rep != nil {
			outcome = rep.Outcome
		} else if err != nil {
			outcome = report.Aborted
		}
		h.End(outcome, err)
		w.cancel(nil)
	}()
	return guardedAttempts(ctx, g, log, guest, cfg, w)
}

// guardedAttempts is guarded's loop of attempts.
func guardedAttempts(ctx context.Context, g *globals, log hclog.Logger, guest guardedGuest, cfg precopy.Config, w *watched) (*report.Report, error) {
	var deadline time.Time
	for restarts := 0; ; restarts++ {
		if restarts > 0 {
			w.restart()
		}
		rep, err := guardedOnce(ctx, g, log, guest, cfg, &w.gate)
		if rep != nil {
			rep.Restarts = restarts
		}
		restartable := precopy.Restartable(err) || restarts > 0 && busyAtDestination(err)
		if rep == nil || rep.Outcome != report.Aborted || !restartable || cfg.RecoverTimeout <= 0 || ctx.Err() != nil {
			return rep, err
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(cfg.RecoverTimeout)
		}
		if !time.Now().Before(deadline) {
			return rep, err
		}
		log.Warn("migration aborted before Go, the guest runs on: starting it over", "restarts", restarts+1, "error", err,
			"until", time.Until(deadline).Round(time.Second))
		select {
		case <-ctx.Done():
			return rep, err
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// busyAtDestination reports whether the destination turned the session
// away as busy: refused (the guest already migrating there) or setting up
// another session. After an aborted attempt that is mostly the attempt's
// own session, which the destination holds until it notices the lost
// link, so a restart tries again within the recover timeout.
func busyAtDestination(err error) bool {
	var r *wire.RefusedError
	return errors.As(err, &r) && r.Code == wire.RefuseBusy || errors.Is(err, wire.ErrBusy)
}

// guardedOnce runs one migration of guest behind a guardian: killed at any
// instant before Go, this process leaves a guardian that resumes the guest.
// An error of the migration gets the exit status and, if the guest stays
// paused, the command that resumes it.
func guardedOnce(ctx context.Context, g *globals, log hclog.Logger, guest guardedGuest, cfg precopy.Config, gate *ctl.Gate) (*report.Report, error) {
	ref := guest.ref
	exe, err := os.Executable()
	if err != nil {
		return nil, &statusError{exitAborted, fmt.Errorf("find dmig's own binary for the guardian: %w; the guest was not touched", err)}
	}
	args := []string{"guardian", "--log-level", g.LogLevel, "--log-format", g.LogFormat}
	if ref.qmp != "" {
		args = append(args, "--qmp", ref.qmp)
	} else {
		args = append(args, "--pid", strconv.Itoa(ref.pid))
	}
	cmd := exec.Command(exe, args...)
	cmd.Stderr = os.Stderr
	guard, err := guardian.Start(ctx, cmd, guest.running, log)
	if err != nil {
		return nil, &statusError{exitAborted, fmt.Errorf("%w; the guest was not touched", err)}
	}
	log.Debug("guardian started", "guardian_pid", guard.Pid())
	cfg.Guard = gatedGuard{Guard: guard, gate: gate}
	rep, err := precopy.Run(ctx, cfg, guest.Guest)
	if !errors.Is(err, precopy.ErrSourcePaused) {
		if derr := guard.Done(); derr != nil {
			log.Warn("end guardian", "error", derr)
		}
		err = migrateStatus(rep, err, ref)
		if exitCode(err) == exitAfterResume {
			log.Error("the source guest stays paused with its memory intact; once the destination's guest is known dead, resume it", "resume_with", ref.resumeCommand())
		}
		return rep, err
	}
	// The abort could not resume the guest: one more try by the guardian,
	// over a connection of its own.
	if guest.release != nil {
		guest.release()
	}
	rctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	v, gerr := guard.Release(rctx)
	if v == guardian.Resumed {
		log.Info("the guardian resumed the source guest after the failed abort resume")
		return rep, &statusError{exitAborted, fmt.Errorf("%w; the guardian resumed it: it runs on", err)}
	}
	log.Error("the source guest stays paused with its memory intact; the destination never ran it", "resume_with", ref.resumeCommand())
	return rep, &statusError{exitAfterResume, fmt.Errorf("%w (guardian: %v); the destination never ran the guest: resume it with: %s", err, gerr, ref.resumeCommand())}
}

// migrateStatus is the error a migration returns, with its exit status.
func migrateStatus(rep *report.Report, err error, ref guestRef) error {
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, precopy.ErrBusy), isBusy(err):
		return &statusError{exitBusy, err}
	case rep != nil && rep.Outcome == report.FailedAfterResume:
		return &statusError{exitAfterResume, fmt.Errorf("%w; once the destination's guest is known dead, resume the source with: %s", err, ref.resumeCommand())}
	default:
		return &statusError{exitAborted, err}
	}
}
