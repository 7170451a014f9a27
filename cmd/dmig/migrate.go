package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/dmig/dmig/internal/bandwidth"
	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/precopy"
	"github.com/dmig/dmig/vmm/qemu"
	"github.com/dmig/dmig/wire"
)

// Exit statuses of migrate, serve, drain and resume (documented in the
// README and docs/operating.md).
const (
	exitError       = 1
	exitUsage       = 2
	exitAborted     = 3 // failed before the destination resumed: source intact
	exitAfterResume = 4 // failed after the destination resumed
	exitBusy        = 5 // the guest is already being migrated
	exitNotPaused   = 6 // dmig resume: the guest is not paused, nothing done
)

// usageExit exits for kong: its bad-usage status (80) becomes ours.
func usageExit(code int) {
	if code == 80 {
		code = exitUsage
	}
	os.Exit(code)
}

// statusError carries an exit status through the error chain.
type statusError struct {
	code int
	err  error
}

func (e *statusError) Error() string { return e.err.Error() }
func (e *statusError) Unwrap() error { return e.err }
func (e *statusError) ExitCode() int { return e.code }

type migrateCmd struct {
	To         string         `required:"" help:"Destination address (host:port of 'dmig serve')."`
	Mode       string         `default:"hybrid" enum:"precopy,postcopy,hybrid" help:"precopy, postcopy or hybrid."`
	Pid        int            `help:"Pid of the guest process (the process that maps the RAM files); with --ram."`
	RAM        []string       `name:"ram" help:"RAM file(s) of the guest, mapped MAP_SHARED by it (repeatable)."`
	QMP        string         `name:"qmp" placeholder:"SOCKET" help:"QMP socket of a QEMU guest (instead of --pid and --ram): its RAM, command line and device state are found through it."`
	DestCmd    []string       `name:"dest-cmd" sep:"none" help:"Command (argv, repeat the flag per word) that starts the guest on the destination."`
	Downtime   time.Duration  `default:"50ms" help:"Downtime budget."`
	MaxIter    int            `default:"30" name:"max-iterations" help:"Pre-copy passes at most."`
	BulkConns  int            `default:"2" name:"bulk-conns" help:"Parallel bulk connections."`
	Compress   bool           `help:"Compress page data (--codec): for links slower than the cores compress, about 1 Gbit/s and below."`
	Codec      string         `enum:"zstd,s2" default:"zstd" help:"Codec of --compress: zstd sends the fewest bytes (links of about 1 Gbit/s and below, cores to spare); s2 1.5-2x as many at a quarter of the CPU (a busy host, faster links)."`
	MaxBW      bandwidth.Rate `name:"max-bandwidth" placeholder:"RATE" help:"Cap the page traffic to the destination at RATE bytes/s, all bulk connections together: 125M (SI, 125,000,000), 1Gi (IEC, 2^30), 125MB/s; at least 1M; 0: no cap. Post-copy fault replies go ahead of it up to a small budget."`
	Report     string         `help:"Write the JSON report to this file ('-' for stdout)."`
	Layout     string         `placeholder:"ADDR" help:"Guest agent's layout endpoint (HOST:PORT or unix:SOCKET): in hybrid mode the clean database pages it names go as storage references, which the destination reads from its shared disks (serve --disk for process guests, the VM's own drives for QEMU). With --qmp, default: the VM's org.dmig.agent virtio-serial socket on its command line."`
	LayoutOnce bool           `name:"layout-once" help:"Fetch the layout before the first pass only, not before every pass."`
	LayoutWait time.Duration  `name:"layout-timeout" default:"5s" help:"Give up a layout fetch after this long (that pass then sends data): the guest agent walks the whole buffer pool."`
	Metrics    string         `name:"metrics-file" help:"Write the figures as Prometheus text to this file (atomically; for node_exporter's textfile collector, name it *.prom)."`
	tlsFlags
	TLSServerName  string        `name:"tls-server-name" help:"Name the destination's certificate must carry (default: the host of --to)." group:"Security"`
	NoProgress     bool          `name:"no-progress" help:"Draw no progress bar (none is drawn when stderr is not a terminal)."`
	ConnectTimeout time.Duration `name:"connect-timeout" default:"30s" help:"Abort (source intact) if the destination has not accepted the session within this time (0: wait forever)."`
	RecoverTimeout time.Duration `name:"recover-timeout" default:"30s" help:"After Go, how long to keep reconnecting to a destination whose link failed, the guest paused here meanwhile; before Go, how long to keep starting over a migration that aborted because the link or the destination failed, the guest running on meanwhile (0: neither)."`
	LinkTimeout    time.Duration `name:"link-timeout" default:"15s" help:"How long a connection to the destination may go unanswered (unacknowledged data or keepalives) before it is taken for lost: a link down without a reset is noticed within about this time."`
	ctlFlags
}

func (c *migrateCmd) Run(g *globals, ctx context.Context) error {
	moreProcs()
	log := g.logger("migrate")
	mode, err := precopy.ParseMode(c.Mode)
	if err != nil {
		return &statusError{exitUsage, err}
	}
	tc, err := c.client(c.TLSServerName)
	switch {
	case errors.Is(err, errNoTLS):
		tc = nil
		log.Warn("migrating WITHOUT TLS: guest memory crosses the network unencrypted and the destination is not authenticated")
	case err != nil:
		return &statusError{exitUsage, err}
	}
	var guest guardedGuest
	lay := c.Layout
	switch {
	case c.QMP != "":
		var src *qemu.Source
		guest, src, err = qemuGuest(ctx, c.QMP)
		if err != nil {
			return &statusError{exitUsage, err}
		}
		defer src.Close()
		if lay == "" {
			lay = agentLayout(log, mode, src)
		}
	case c.Pid != 0 && len(c.RAM) > 0:
		var closeGuest func()
		guest, closeGuest, err = procGuest(c.Pid, c.RAM, c.DestCmd)
		if err != nil {
			return &statusError{exitUsage, err}
		}
		defer closeGuest()
	default:
		return &statusError{exitUsage, errors.New("name the guest: --qmp SOCKET, or --pid and --ram")}
	}
	guest.ctl = c.listen("migrate", 0, log)
	defer guest.ctl.Close()
	var view *progressView
	if !c.NoProgress {
		view = newProgressView(os.Stderr)
	}
	// The control socket (dmig status) may change the cap through this
	// bucket while the migration runs.
	bw := bandwidth.New(uint64(c.MaxBW), nil, nil)
	rep, err := guarded(ctx, g, log, guest, precopy.Config{
		To: c.To, Mode: mode, Downtime: c.Downtime, MaxIterations: c.MaxIter,
		BulkConns: c.BulkConns, Compress: c.Compress, Codec: codecOf(c.Codec), Logger: log, TLS: tc, Bandwidth: bw,
		LayoutAddr: lay, LayoutOnce: c.LayoutOnce, LayoutTimeout: c.LayoutWait,
		Progress: view.update, ConnectTimeout: c.ConnectTimeout, RecoverTimeout: c.RecoverTimeout, LinkTimeout: c.LinkTimeout,
	})
	view.finish()
	if werr := writeReport(c.Report, rep); werr != nil {
		log.Error("write report", "error", werr)
	}
	if c.Metrics != "" && rep != nil {
		if werr := report.WriteProm(c.Metrics, time.Now(), rep); werr != nil {
			log.Error("write metrics", "error", werr)
		}
	}
	if g.jsonLogs() {
		logSummary(log, rep)
	} else {
		printSummary(rep)
	}
	return err
}

// codecOf is the codec of a --codec value or a drain entry's codec, both
// checked against wire.CodecNames already (kong's enum, drain's config check).
func codecOf(name string) wire.Codec {
	c, err := wire.ParseCodec(name)
	if err != nil {
		return wire.CodecZstd
	}
	return c
}

func isBusy(err error) bool {
	var r *wire.RefusedError
	return errors.As(err, &r) && r.Code == wire.RefuseBusy
}

func writeReport(path string, rep *report.Report) error {
	if rep == nil {
		return nil
	}
	return writeJSON(path, rep)
}

// writeJSON writes v as indented JSON to path ("-": stdout, "": nowhere).
func writeJSON(path string, v any) error {
	if path == "" {
		return nil
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if path == "-" {
		_, err = os.Stdout.Write(b)
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

func printSummary(r *report.Report) {
	if r == nil {
		return
	}
	fmt.Fprintf(os.Stderr, "%s %s: %s in %.0f ms, downtime %.1f ms, %.1f MB sent, %d iterations\n",
		r.Mode, r.Guest, r.Outcome, r.TotalMS, r.DowntimeMS, float64(r.BytesSent)/1e6, r.Iterations)
	fmt.Fprintf(os.Stderr, "  pages: data %d, zero %d, storage %d (+%d mismatched), post-copy faults %d, prefetched %d; fault latency p50 %.0f µs p99 %.0f µs\n",
		r.Pages.Data, r.Pages.Zero, r.Pages.StorageVerified, r.Pages.StorageMismatch, r.Pages.PostcopyFault, r.Pages.Prefetch,
		r.FaultLatencyUS.P50, r.FaultLatencyUS.P99)
	if line := refsLine(r); line != "" {
		fmt.Fprintf(os.Stderr, "  %s\n", line)
	}
	if r.Refs != nil && r.Refs.Refreshed != "" {
		fmt.Fprintf(os.Stderr, "  layout: the agent's cached one was replaced by a fresh one: %s\n", r.Refs.Refreshed)
	}
	if r.Refs != nil && r.Refs.Warning != "" {
		fmt.Fprintf(os.Stderr, "  layout warning: %s\n", r.Refs.Warning)
	}
	if bw := r.Bandwidth; bw.MaxBytesPerS > 0 || len(bw.Changes) > 0 {
		fmt.Fprintf(os.Stderr, "  bandwidth: cap %s bytes/s, mean %.1f MB/s, busiest second %.1f MB/s",
			bandwidth.Format(bw.MaxBytesPerS), bw.MeanBytesPerS/1e6, bw.PeakBytesPerS/1e6)
		if n := len(bw.Changes) + bw.ChangesDropped; n > 0 {
			c := bw.Changes[0]
			fmt.Fprintf(os.Stderr, "; the cap changed %d times, first from %s at %.1f s (the report lists each)", n, bandwidth.Format(c.FromBytesPerS), c.ElapsedS)
		}
		fmt.Fprintln(os.Stderr)
	}
	if r.Error != "" {
		fmt.Fprintf(os.Stderr, "  error: %s\n", r.Error)
	}
}

// refsLine says how much of a hybrid migration's RAM went by reference and
// why the rest did not, "" for other modes.
func refsLine(r *report.Report) string {
	f := r.Refs
	if f == nil {
		return ""
	}
	fp := f.FirstPass
	total := fp.Reference + fp.Zero + fp.NotInLayout + fp.NoLayout + fp.Refused
	if total == 0 {
		return ""
	}
	pct := func(n uint64) string { return fmt.Sprintf("%.0f%%", 100*float64(n)/float64(total)) }
	line := fmt.Sprintf("by reference: %s of the RAM in the first pass (%d of %d pages); the rest: zero %s", pct(fp.Reference), fp.Reference, total, pct(fp.Zero))
	if fp.NoLayout > 0 {
		why := "no layout"
		if f.Layout == "" {
			why = "no layout endpoint"
		}
		line += fmt.Sprintf(", %s %s", why, pct(fp.NoLayout))
	}
	if fp.NotInLayout > 0 {
		line += fmt.Sprintf(", not in the layout %s (not clean pool pages", pct(fp.NotInLayout))
		if f.PoolDirtyPages > 0 {
			line += fmt.Sprintf("; the pool had %d dirty", f.PoolDirtyPages)
		}
		line += ")"
	}
	if fp.Refused > 0 {
		line += fmt.Sprintf(", disk refused %s", pct(fp.Refused))
	}
	if r.Pages.StorageMismatch > 0 {
		line += fmt.Sprintf("; %d references failed the destination's check and went again", r.Pages.StorageMismatch)
	}
	return line
}
