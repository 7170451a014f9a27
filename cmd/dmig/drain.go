package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dmig/dmig/internal/bandwidth"
	"github.com/dmig/dmig/internal/drain"
	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/precopy"
	"github.com/dmig/dmig/wire"
)

type drainCmd struct {
	Config         string          `required:"" type:"existingfile" help:"Drain config (YAML or JSON): the guests to move and where."`
	Parallel       int             `default:"1" help:"Guests migrated at once."`
	State          string          `help:"State file recording moved guests, so reruns skip them (default: the config's 'state', else /var/lib/dmig/drain-state.json)."`
	LockDir        string          `name:"lock-dir" help:"Directory of the per-guest locks (default: the config's 'lock_dir', else /run/dmig)."`
	Report         string          `help:"Write the JSON summary to this file ('-' for stdout)."`
	Metrics        string          `name:"metrics-file" help:"Write every migrated guest's figures as Prometheus text to this file (atomically)."`
	MaxIter        int             `default:"30" name:"max-iterations" help:"Pre-copy passes at most, per guest."`
	Compress       bool            `help:"Compress page data (--codec): for links of about 1 Gbit/s and below."`
	Codec          string          `enum:"zstd,s2" default:"zstd" help:"Codec of --compress: zstd sends the fewest bytes (links of about 1 Gbit/s and below, cores to spare); s2 1.5-2x as many at a quarter of the CPU (a busy host, faster links). A guest's own 'codec' goes first."`
	MaxBW          *bandwidth.Rate `name:"max-bandwidth" placeholder:"RATE" help:"Cap the guests' migrations together at RATE bytes/s, shared by those running at once (default: the config's 'max_bandwidth'; 0: none); each guest's own 'max_bandwidth' applies within it. Units as for migrate: 125M, 1Gi, 125MB/s."`
	ConnectTimeout time.Duration   `name:"connect-timeout" default:"30s" help:"Give up on a guest (source intact) whose destination has not accepted the session within this time."`
	RecoverTimeout time.Duration   `name:"recover-timeout" default:"30s" help:"After Go, how long to keep reconnecting to a destination whose link failed, the guest paused here meanwhile; before Go, how long to keep starting over a migration that aborted because the link or the destination failed, the guest running on meanwhile (0: neither)."`
	LinkTimeout    time.Duration   `name:"link-timeout" default:"15s" help:"How long a connection to the destination may go unanswered (unacknowledged data or keepalives) before it is taken for lost: a link down without a reset is noticed within about this time."`
	tlsFlags
	Insecure bool `help:"Migrate without TLS." group:"Security"`
	ctlFlags
}

func (c *drainCmd) Run(g *globals, ctx context.Context) error {
	moreProcs()
	log := g.logger("drain")
	cfg, err := drain.LoadConfig(c.Config)
	if err != nil {
		return &statusError{exitUsage, err}
	}
	tc, err := c.client("")
	switch {
	case errors.Is(err, errNoTLS) && !c.Insecure:
		return &statusError{exitUsage, errors.New("refusing to drain without TLS: give --tls-cert, --tls-key and --tls-ca, or --insecure")}
	case errors.Is(err, errNoTLS):
		log.Warn("draining WITHOUT TLS: guest memory crosses the network unencrypted")
	case err != nil:
		return &statusError{exitUsage, err}
	}
	state := firstNonEmpty(c.State, cfg.State, "/var/lib/dmig/drain-state.json")
	lockDir := firstNonEmpty(c.LockDir, cfg.LockDir, "/run/dmig")
	srv := c.listen("drain", 0, log)
	defer srv.Close()
	totalRate := cfg.MaxBandwidth
	if c.MaxBW != nil {
		totalRate = *c.MaxBW
	}
	// Every guest's bucket draws from its destination's (if that has a
	// cap) and from the drain's: the totals hold across the migrations
	// running at once. Built before any guest starts, then only read.
	total := bandwidth.New(uint64(totalRate), nil, nil)
	// dmig set-bandwidth drain:PID changes it while guests run.
	srv.SetTotal(total)
	perDest := map[string]*bandwidth.Limiter{}
	for addr, d := range cfg.Destinations {
		if d.MaxBandwidth > 0 {
			perDest[addr] = bandwidth.New(uint64(d.MaxBandwidth), nil, total)
		}
	}
	sum, err := drain.Run(ctx, cfg, drain.Options{
		Parallel: c.Parallel, LockDir: lockDir, State: state, Logger: log,
		// A destination sets up one session at a time and turns away a
		// second one meanwhile: parallel guests to one host retry.
		Retryable: func(err error) bool { return errors.Is(err, wire.ErrBusy) },
		Expand:    expandQEMU,
		Migrate: func(ctx context.Context, vm drain.VM, pid int) (*report.Report, error) {
			mode, err := precopy.ParseMode(firstNonEmpty(vm.Mode, "hybrid"))
			if err != nil {
				return nil, err
			}
			vlog := log.Named(vm.Name)
			guest, lay, closeGuest, err := drainGuest(ctx, vlog, vm, pid, mode)
			if err != nil {
				return nil, err
			}
			defer closeGuest()
			guest.ctl, guest.names = srv, []string{vm.Name}
			parent := total
			if l, ok := perDest[vm.To]; ok {
				parent = l
			}
			rep, err := guarded(ctx, g, vlog, guest, precopy.Config{
				To: vm.To, Mode: mode, Downtime: vm.Downtime, MaxIterations: c.MaxIter, Compress: c.Compress || vm.Compress, Codec: codecOf(cmp.Or(vm.Codec, c.Codec)),
				LayoutAddr: lay, LayoutTimeout: vm.LayoutTimeout, Logger: vlog, TLS: tc, ConnectTimeout: c.ConnectTimeout, RecoverTimeout: c.RecoverTimeout, LinkTimeout: c.LinkTimeout,
				Bandwidth: bandwidth.New(uint64(vm.MaxBandwidth), nil, parent),
			})
			if errors.Is(err, precopy.ErrBusy) {
				err = fmt.Errorf("%w: %w", drain.ErrLocked, err)
			}
			return rep, err
		},
	})
	if err != nil {
		return &statusError{exitError, err}
	}
	if bw := total.Stats().Report(); totalRate > 0 || len(bw.Changes) > 0 {
		sum.Bandwidth = &bw
	}
	if werr := writeJSON(c.Report, sum); werr != nil {
		log.Error("write summary", "error", werr)
	}
	if c.Metrics != "" {
		var reps []*report.Report
		for _, r := range sum.VMs {
			if r.Report != nil {
				reps = append(reps, r.Report)
			}
		}
		if werr := report.WriteProm(c.Metrics, time.Now(), reps...); werr != nil {
			log.Error("write metrics", "error", werr)
		}
	}
	log.Info("drain done", "moved", sum.Moved, "failed", sum.Failed, "already_moved", sum.AlreadyMoved, "busy", sum.Busy, "skipped", sum.Skipped)
	printDrainSummary(g, sum)
	return drainStatus(sum)
}

// drainStatus is the drain's exit status: the worst of its guests'
// (failed after resume, then aborted or skipped, then busy).
func drainStatus(sum *drain.Summary) error {
	code := 0
	for _, r := range sum.VMs {
		switch {
		case r.Status == drain.StatusFailed && r.Outcome == report.FailedAfterResume:
			code = exitAfterResume
		case r.Status == drain.StatusFailed && code != exitAfterResume:
			code = exitAborted
		case r.Status == drain.StatusSkipped && code != exitAfterResume:
			// It runs on here, untouched, as an aborted one does.
			code = exitAborted
		case r.Status == drain.StatusBusy && code == 0:
			code = exitBusy
		}
	}
	if code == 0 {
		return nil
	}
	return &statusError{code, fmt.Errorf("drain: %d moved, %d failed, %d skipped, %d busy, %d moved earlier", sum.Moved, sum.Failed, sum.Skipped, sum.Busy, sum.AlreadyMoved)}
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
