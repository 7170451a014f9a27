package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/dmig/dmig/internal/bandwidth"
	"github.com/dmig/dmig/internal/ctl"
	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/precopy"
)

// exitRefused: dmig cancel was refused (past Go, or ended).
const exitRefused = 7

// ctlFlags name the control sockets' directory (internal/ctl).
type ctlFlags struct {
	CtlDir string `name:"ctl-dir" default:"/run/dmig/ctl" env:"DMIG_CTL_DIR" placeholder:"DIR" help:"Directory of the control sockets dmig status and dmig cancel reach running migrations through (root-only: 0700, sockets 0600)."`
}

// listen opens this process's control socket; a failure costs only
// status and cancel, so it is logged and the migration goes on.
func (f ctlFlags) listen(command string, linger time.Duration, log hclog.Logger) *ctl.Server {
	s, err := ctl.Listen(f.CtlDir, command, ctl.Options{Linger: linger, Logger: log.Named("ctl")})
	if err != nil {
		log.Warn("no control socket: dmig status and dmig cancel will not see this migration", "error", err)
		return nil
	}
	log.Debug("control socket", "path", s.Path())
	return s
}

// watched is a source migration as the control socket lists it, across
// its restarts: the latest attempt's snapshot, and the cancel.
type watched struct {
	gate   ctl.Gate
	cancel context.CancelCauseFunc
	name   string
	start  time.Time
	mode   string
	budget time.Duration

	mu   sync.Mutex
	snap func() report.Live // the running attempt's, nil between attempts
	// base is what the attempts before the running one moved: the
	// counters go on across a restart instead of starting again at zero.
	base report.Live
}

// watch lists guest's migration with srv (nil: nowhere) and returns it
// with the context its attempts run under: a cancel accepted before Go
// cancels it with ctl.ErrCancelled as its cause, which aborts the attempt
// through the engine's abort path and ends the restarts.
func watch(ctx context.Context, srv *ctl.Server, guest guardedGuest, cfg *precopy.Config) (context.Context, *watched, *ctl.Handle) {
	ctx, cancel := context.WithCancelCause(ctx)
	w := &watched{cancel: cancel, name: guest.Name(), start: time.Now(), mode: string(cfg.Mode), budget: cfg.Downtime}
	if w.mode == "" {
		w.mode = string(precopy.ModeHybrid)
	}
	if w.budget <= 0 {
		w.budget = 50 * time.Millisecond
	}
	cfg.Live = func(snap func() report.Live) {
		w.mu.Lock()
		w.snap = snap
		w.mu.Unlock()
	}
	names := append([]string{guest.ref.String()}, guest.names...)
	h := srv.Add(ctl.Registration{Names: names, Live: w.live, Cancel: w.cancelFor, Bandwidth: cfg.Bandwidth})
	return ctx, w, h
}

func (w *watched) live() report.Live {
	w.mu.Lock()
	snap, base := w.snap, w.base
	w.mu.Unlock()
	l := report.Live{Role: report.RoleSource, Guest: w.name, Mode: w.mode, Phase: report.PhaseConnecting, Downtime: w.budget}
	if snap != nil {
		l = snap()
	}
	l.Started = w.start // elapsed counts from the first attempt
	l.BytesSent += base.BytesSent
	l.BytesReceived += base.BytesReceived
	l.PagesDone += base.PagesDone
	if l.GuestPages == 0 {
		l.GuestPages = base.GuestPages
	}
	return l
}

// restart folds the ended attempt's counters into the base before the
// next attempt starts.
func (w *watched) restart() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.snap == nil {
		return
	}
	l := w.snap()
	w.base.BytesSent += l.BytesSent
	w.base.BytesReceived += l.BytesReceived
	w.base.PagesDone += l.PagesDone
	w.base.GuestPages = l.GuestPages
	w.snap = nil
}

func (w *watched) cancelFor(reason error) error {
	if err := w.gate.Cancel(reason); err != nil {
		return err
	}
	w.cancel(reason)
	return nil
}

// gatedGuard passes Go through the cancel gate before the guardian hears
// of it: a cancel that came first aborts the migration instead.
type gatedGuard struct {
	precopy.Guard
	gate *ctl.Gate
}

func (g gatedGuard) Going(ctx context.Context) error {
	if err := g.gate.Pass(); err != nil {
		return err
	}
	return g.Guard.Going(ctx)
}

// cancelled puts a cancel's reason in front of err, if ctx was cancelled
// by one and err does not say so already (a dial cut short says only
// "context canceled").
func cancelled(ctx context.Context, err error) error {
	if c := context.Cause(ctx); err != nil && errors.Is(c, ctl.ErrCancelled) && !errors.Is(err, ctl.ErrCancelled) {
		return fmt.Errorf("%w: %w", c, err)
	}
	return err
}

type statusCmd struct {
	Guest string `arg:"" optional:"" help:"Show only this guest's migrations (its name, pid:PID, qmp:SOCKET, drain entry name, or session ID)."`
	JSON  bool   `name:"json" help:"Print the entries as a JSON array."`
	ctlFlags
}

func (c *statusCmd) Run(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	entries, lerr := ctl.List(ctx, c.CtlDir)
	if lerr != nil && len(entries) == 0 {
		return fmt.Errorf("status: %w", lerr)
	}
	if c.Guest != "" {
		entries = ctl.Match(entries, c.Guest)
	}
	if c.JSON {
		if entries == nil {
			entries = []ctl.Entry{}
		}
		b, err := json.MarshalIndent(entries, "", "  ")
		if err != nil {
			return err
		}
		fmt.Println(string(b))
	} else {
		printEntries(os.Stdout, entries)
	}
	if lerr != nil {
		fmt.Fprintf(os.Stderr, "dmig: some migrations could not be read: %v\n", lerr)
	}
	if c.Guest != "" && len(entries) == 0 {
		return fmt.Errorf("%s: %w (in %s)", c.Guest, ctl.ErrNotFound, c.CtlDir)
	}
	return nil
}

// printEntries prints entries for a terminal, a block each.
func printEntries(w io.Writer, entries []ctl.Entry) {
	if len(entries) == 0 {
		fmt.Fprintln(w, "no migrations on this host")
		return
	}
	for i, e := range entries {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "%s  %s  %s  %s pass %d", e.Guest, e.Role, e.Mode, e.Phase, e.Pass)
		if e.Session != "" {
			fmt.Fprintf(w, "  session %s", e.Session[:min(8, len(e.Session))])
		}
		fmt.Fprintf(w, "  (dmig %s, pid %d)\n", e.Command, e.PID)
		eta := "-"
		if e.ETASeconds != nil {
			eta = fmt.Sprintf("%.1f s", *e.ETASeconds)
		}
		budget := ""
		if e.DowntimeMS > 0 {
			budget = fmt.Sprintf("  downtime budget %g ms", e.DowntimeMS)
		}
		fmt.Fprintf(w, "  progress %.1f%%  sent %.1f MB  received %.1f MB  rate %.1f MB/s  ETA %s  elapsed %.1f s%s\n",
			e.Progress*100, float64(e.BytesSent)/1e6, float64(e.BytesReceived)/1e6, e.RateBytes/1e6, eta, e.ElapsedS, budget)
		fmt.Fprintf(w, "  pages left: data %d, storage refs %d, post-copy missing %d  (done %d; guest %d pages)\n",
			e.PagesLeft.Data, e.PagesLeft.StorageRefs, e.PagesLeft.PostcopyMissing, e.PagesDone, e.GuestPages)
		if e.MaxBandwidth != nil {
			fmt.Fprintf(w, "  bandwidth cap %s bytes/s", bandwidth.Format(*e.MaxBandwidth))
			if e.SharedMaxBandwidth > 0 {
				fmt.Fprintf(w, " (within a shared cap of %s)", bandwidth.Format(e.SharedMaxBandwidth))
			}
			if e.BandwidthChanges > 0 {
				fmt.Fprintf(w, ", changed %d times", e.BandwidthChanges)
			}
			fmt.Fprintln(w, "  (dmig set-bandwidth changes it)")
		}
		if e.ETANote != "" {
			fmt.Fprintf(w, "  ETA %s (%d times)\n", e.ETANote, e.ETAReestimates)
		}
		switch {
		case e.Outcome != "":
			fmt.Fprintf(w, "  outcome: %s", e.Outcome)
			if e.Error != "" {
				fmt.Fprintf(w, ": %s", e.Error)
			}
			fmt.Fprintln(w)
		case e.Cancellable:
			fmt.Fprintln(w, "  dmig cancel: aborts it, the source guest runs on")
		case e.GoSent:
			fmt.Fprintln(w, "  dmig cancel: refused, Go was sent")
		}
	}
}

// sourceEntry is the one source migration name designates on this host,
// for op (cancel, set the bandwidth of).
func sourceEntry(ctx context.Context, dir, name, op string) (ctl.Entry, error) {
	lctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	entries, lerr := ctl.List(lctx, dir)
	cancel()
	var sources []ctl.Entry
	matched := ctl.Match(entries, name)
	for _, e := range matched {
		if e.Role == report.RoleSource {
			sources = append(sources, e)
		}
	}
	switch {
	case len(matched) == 0 && lerr != nil:
		return ctl.Entry{}, fmt.Errorf("%s %s: %w (%w)", op, name, ctl.ErrNotFound, lerr)
	case len(matched) == 0:
		return ctl.Entry{}, fmt.Errorf("%s %s: %w (in %s)", op, name, ctl.ErrNotFound, dir)
	case len(sources) == 0:
		return ctl.Entry{}, &statusError{exitRefused, fmt.Errorf("%s %s: this host is its destination: do it on the source host", op, name)}
	case len(sources) > 1:
		var ids []string
		for _, e := range sources {
			ids = append(ids, e.Guest+" (session "+e.Session+")")
		}
		return ctl.Entry{}, &statusError{exitUsage, fmt.Errorf("%s %s: %d migrations match: %s; name one by its session ID", op, name, len(sources), strings.Join(ids, ", "))}
	}
	return sources[0], nil
}

type setBWCmd struct {
	Guest string `arg:"" help:"The guest whose migration's cap to change (its name, pid:PID, qmp:SOCKET, drain entry name, or session ID), or drain:PID for the total cap of the dmig drain of that pid."`
	Rate  string `arg:"" help:"The new cap in bytes/s, as --max-bandwidth takes it (125M, 1Gi, 125MB/s; at least 1M); 0 or none lifts it."`
	ctlFlags
}

func (c *setBWCmd) Run(ctx context.Context) error {
	rate, err := parseLiveRate(c.Rate)
	if err != nil {
		return &statusError{exitUsage, fmt.Errorf("set-bandwidth %s: %w", c.Guest, err)}
	}
	if p, ok := strings.CutPrefix(c.Guest, "drain:"); ok {
		pid, err := strconv.Atoi(p)
		if err != nil || pid <= 0 {
			return &statusError{exitUsage, fmt.Errorf("set-bandwidth %s: want drain:PID, the pid of a running dmig drain", c.Guest)}
		}
		from, err := ctl.SetTotal(ctx, c.CtlDir, pid, rate)
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "dmig: drain %d: total bandwidth cap %s -> %s bytes/s\n", pid, bandwidth.Format(from), bandwidth.Format(rate))
		return nil
	}
	e, err := sourceEntry(ctx, c.CtlDir, c.Guest, "set the bandwidth of")
	if err != nil {
		return err
	}
	from := "none"
	if e.MaxBandwidth != nil {
		from = bandwidth.Format(*e.MaxBandwidth)
	}
	e, err = ctl.SetBandwidth(ctx, e, rate)
	var refused *ctl.RefusedError
	if errors.As(err, &refused) {
		return &statusError{exitRefused, err}
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "dmig: %s (%s, pass %d): bandwidth cap %s -> %s bytes/s\n", e.Guest, e.Phase, e.Pass, from, bandwidth.Format(rate))
	return nil
}

// parseLiveRate reads set-bandwidth's rate: --max-bandwidth's units, and
// "none" for no cap, as dmig status prints it. An empty rate is refused:
// lifting a cap is said, not implied.
func parseLiveRate(s string) (uint64, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "none":
		return 0, nil
	case "":
		return 0, errors.New("no rate given: write bytes/s (125M, 1Gi) or 0/none to lift the cap")
	}
	return bandwidth.Parse(s)
}

type cancelCmd struct {
	Guest  string        `arg:"" help:"The guest whose migration to abort (its name, pid:PID, qmp:SOCKET, drain entry name, or session ID)."`
	Reason string        `help:"Said in the migration's log and error."`
	Wait   time.Duration `default:"60s" help:"How long to wait for the aborted migration to end (0: do not wait)."`
	ctlFlags
}

func (c *cancelCmd) Run(ctx context.Context) error {
	src, err := sourceEntry(ctx, c.CtlDir, c.Guest, "cancel")
	if err != nil {
		return err
	}
	e, err := ctl.Cancel(ctx, src, c.Reason)
	var refused *ctl.RefusedError
	if errors.As(err, &refused) {
		return &statusError{exitRefused, err}
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "dmig: cancelling %s (%s, pass %d): it aborts before Go; the source guest runs on\n", e.Guest, e.Phase, e.Pass)
	if c.Wait <= 0 {
		return nil
	}
	wctx, wcancel := context.WithTimeout(ctx, c.Wait)
	defer wcancel()
	last, ended, err := ctl.Wait(wctx, e, 200*time.Millisecond)
	switch {
	case err != nil:
		return err
	case ended:
		fmt.Fprintf(os.Stderr, "dmig: %s: %s\n", last.Guest, last.Outcome)
	default:
		fmt.Fprintf(os.Stderr, "dmig: %s: its migration ended (dmig %s, pid %d, exited)\n", last.Guest, last.Command, last.PID)
	}
	return nil
}
