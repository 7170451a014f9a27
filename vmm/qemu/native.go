package qemu

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dmig/dmig/internal/report"
)

// Native migration modes: QEMU's own migration, for comparison runs.
const (
	ModePrecopy  = "qemu-precopy"
	ModePostcopy = "qemu-postcopy"
	// ModeMultifd is pre-copy over NativeConfig.Channels connections
	// (capability multifd).
	ModeMultifd = "qemu-multifd"
	// ModeMultifdZstd is ModeMultifd with each channel's pages compressed
	// by zstd (multifd-compression).
	ModeMultifdZstd = "qemu-multifd-zstd"
	// ModePostcopyPreempt is post-copy whose page requests travel on a
	// channel of their own, ahead of the background stream
	// (postcopy-preempt; QEMU 8.0 and later).
	ModePostcopyPreempt = "qemu-postcopy-preempt"
)

// NativeModes are QEMU's own modes, in the order a comparison runs them.
var NativeModes = []string{ModePrecopy, ModeMultifd, ModeMultifdZstd, ModePostcopy, ModePostcopyPreempt}

// Capabilities QEMU's strongest modes add.
const (
	CapMultifd         = "multifd"
	CapPostcopyPreempt = "postcopy-preempt"
)

// nativeCaps are the capabilities of a native mode, every one dmig uses
// set on or off (a QEMU that was a destination keeps what it was migrated
// with); ok is false for a mode that is not QEMU's.
func nativeCaps(mode string) (caps map[string]bool, compression string, ok bool) {
	caps = map[string]bool{CapIgnoreShared: false, CapPostcopyRAM: false, CapEvents: true, CapMultifd: false}
	switch mode {
	case ModePrecopy:
	case ModeMultifd:
		caps[CapMultifd] = true
	case ModeMultifdZstd:
		caps[CapMultifd], compression = true, "zstd"
	case ModePostcopy:
		caps[CapPostcopyRAM] = true
	case ModePostcopyPreempt:
		caps[CapPostcopyRAM], caps[CapPostcopyPreempt] = true, true
	default:
		return nil, "", false
	}
	return caps, compression, true
}

// IsNative reports whether mode is one of QEMU's own.
func IsNative(mode string) bool {
	_, _, ok := nativeCaps(mode)
	return ok
}

// IsPostcopy reports whether a native mode switches to post-copy.
func IsPostcopy(mode string) bool { return mode == ModePostcopy || mode == ModePostcopyPreempt }

// NativeConfig configures a QEMU-native migration.
type NativeConfig struct {
	Mode string // one of NativeModes
	// URI the destination listens on and the source sends to, e.g.
	// tcp:127.0.0.1:4444.
	URI string
	// MaxBandwidth in bytes/s: QEMU's default caps it at 128 MiB/s, so it
	// is always set (default 1 GiB/s, like dmig's own modes on loopback).
	MaxBandwidth uint64
	// MaxPostcopyBandwidth in bytes/s caps the post-copy phase, which
	// max-bandwidth does not (0: QEMU's default, none).
	MaxPostcopyBandwidth uint64
	// DowntimeLimit in ms (default 300).
	DowntimeLimit uint64
	// PostcopyAfter, if set, switches to post-copy this long after the
	// start even if the first pass has not ended (for runs that match
	// dmig's own switchover time).
	PostcopyAfter time.Duration
	// Channels is multifd's number of connections (multifd-channels;
	// default 2, as dmig's bulk connections).
	Channels int
}

// NativeResult is a native migration's outcome.
type NativeResult struct {
	Report *report.Report
	// Postcopy: the source entered post-copy (postcopy-active) rather than
	// completing before the switch took effect.
	Postcopy bool
	// Source is the source's final query-migrate.
	Source MigrationInfo
}

func (c *NativeConfig) defaults() {
	if c.MaxBandwidth == 0 {
		c.MaxBandwidth = 1 << 30
	}
	if c.DowntimeLimit == 0 {
		c.DowntimeLimit = 300
	}
	if c.Channels <= 0 {
		c.Channels = 2
	}
}

// MigrateNative migrates the VM behind src to the QEMU behind dst (started
// with -incoming defer) with one of QEMU's own modes; post-copy is switched
// on once the first pass has been sent (or after PostcopyAfter). It
// returns when the migration has completed and the destination has left
// inmigrate: running, or paused if it was started with -S (then both
// sides are paused and their RAM can be compared before Cont). Figures
// come from the source's query-migrate but for the downtime, which is
// guest-visible (SetGuestDowntime; QEMU's own in ReportedDowntimeMS). On
// failure before the switch, the source is resumed if it had stopped.
func MigrateNative(ctx context.Context, src, dst *Monitor, cfg NativeConfig) (*NativeResult, error) {
	cfg.defaults()
	caps, compression, ok := nativeCaps(cfg.Mode)
	if !ok {
		return nil, fmt.Errorf("unknown qemu migration mode %q", cfg.Mode)
	}
	post := IsPostcopy(cfg.Mode)
	for _, m := range []*Monitor{src, dst} {
		if err := m.SetCapabilities(ctx, caps); err != nil {
			return nil, fmt.Errorf("set migration capabilities for %s: %w", cfg.Mode, err)
		}
		if caps[CapMultifd] {
			p := Parameters{MultifdChannels: cfg.Channels, MultifdCompression: "none"}
			if compression != "" {
				p.MultifdCompression = compression
			}
			if err := m.SetParameters(ctx, p); err != nil {
				return nil, fmt.Errorf("set multifd parameters: %w", err)
			}
		}
	}
	if err := src.SetParameters(ctx, Parameters{MaxBandwidth: cfg.MaxBandwidth, MaxPostcopyBandwidth: cfg.MaxPostcopyBandwidth, DowntimeLimit: cfg.DowntimeLimit}); err != nil {
		return nil, fmt.Errorf("set migration parameters: %w", err)
	}
	if err := dst.MigrateIncoming(ctx, cfg.URI); err != nil {
		return nil, fmt.Errorf("listen for migration on %s: %w", cfg.URI, err)
	}
	start := time.Now()
	if err := src.Migrate(ctx, cfg.URI); err != nil {
		return nil, fmt.Errorf("start migration to %s: %w", cfg.URI, err)
	}
	fail := func(err error) (*NativeResult, error) {
		// Leave the source running: cancel whatever is left, and undo a
		// pause QEMU made at completion of a pass the destination lost.
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = src.MigrateCancel(cctx)
		if st, serr := src.QueryStatus(cctx); serr == nil && !st.Running && st.Status != "postmigrate" && st.Status != "finish-migrate" {
			_ = src.Cont(cctx)
		}
		return nil, err
	}
	res := &NativeResult{}
	var switchPages uint64
	if post {
		// The first pass is done when QEMU syncs the dirty bitmap the
		// second time.
		i, err := src.WaitMigration(ctx, func(i MigrationInfo) bool {
			return (i.RAM != nil && i.RAM.DirtySyncCount >= 2) ||
				(cfg.PostcopyAfter > 0 && time.Since(start) >= cfg.PostcopyAfter)
		})
		if err != nil {
			return fail(fmt.Errorf("first pass: %w", err))
		}
		if i.Status != "completed" {
			if i.RAM != nil {
				switchPages = i.RAM.Remaining / 4096
			}
			if err := src.StartPostcopy(ctx); err != nil {
				return fail(fmt.Errorf("switch to post-copy: %w", err))
			}
			// "device" is the switch itself (the source stopped, its
			// device state on the way): polled fast, it is seen.
			i, err := src.WaitMigration(ctx, func(i MigrationInfo) bool { return i.Status != "active" && i.Status != "device" })
			if err != nil {
				return nil, fmt.Errorf("post-copy migration: %w", err)
			}
			res.Postcopy = i.Status == "postcopy-active"
		}
	}
	info, err := src.WaitMigration(ctx, nil)
	if err != nil {
		if errors.Is(err, ErrMigrationFailed) && post {
			// After the switch the source cannot take the guest back.
			return nil, fmt.Errorf("post-copy migration: %w", err)
		}
		return fail(err)
	}
	if err := waitIncoming(ctx, dst); err != nil {
		return nil, fmt.Errorf("destination after migration: %w", err)
	}
	if err := dst.WaitStatus(ctx, "running", "paused"); err != nil {
		return nil, fmt.Errorf("destination after migration: %w", err)
	}
	run, err := nativeRunPoint(ctx, dst, res.Postcopy)
	if err != nil {
		return nil, err
	}
	res.Source = info
	r := &report.Report{
		Mode:       cfg.Mode,
		Outcome:    report.Completed,
		TotalMS:    float64(info.TotalTime),
		DowntimeMS: float64(info.Downtime),
	}
	// Both monitors have every event by now: each was raised before a
	// reply read since (the source's STOP before its completion, the
	// destination's run point before its status left inmigrate).
	_ = SetGuestDowntime(r, src.RecentEvents(), dst.RecentEvents(), start, run, 0)
	if info.TotalTime == 0 {
		r.TotalMS = float64(time.Since(start).Microseconds()) / 1000
	}
	// QEMU meters no window: the rate is over its total time.
	r.Bandwidth.MaxBytesPerS = cfg.MaxBandwidth
	if info.RAM != nil && r.TotalMS > 0 {
		r.Bandwidth.Bytes = info.RAM.Transferred
		r.Bandwidth.MeanBytesPerS = float64(info.RAM.Transferred) / (r.TotalMS / 1e3)
	}
	if info.RAM != nil {
		r.BytesSent = info.RAM.Transferred
		r.Iterations = int(info.RAM.DirtySyncCount)
		r.Pages.Data = info.RAM.Normal
		r.Pages.Zero = info.RAM.Duplicate
		r.Pages.PostcopyFault = info.RAM.PostcopyRequests
		r.GuestPages = info.RAM.Total / 4096
	}
	if res.Postcopy {
		r.PostcopyPages = switchPages
	}
	res.Report = r
	return res, nil
}

// nativeRunPoint is the destination's run point after QEMU's own
// migration: RESUME if QEMU started the guest, else (-S) where it would
// have, which differs between a pre-copy end and a post-copy switch.
func nativeRunPoint(ctx context.Context, dst *Monitor, postcopy bool) (RunPoint, error) {
	st, err := dst.QueryStatus(ctx)
	if err != nil {
		return RunPoint{}, fmt.Errorf("destination after migration: %w", err)
	}
	switch {
	case st.Running:
		return RunResume, nil
	case postcopy:
		return RunPostcopyPaused, nil
	}
	return RunPrecopyPaused, nil
}

// waitIncoming waits until the destination has loaded the whole stream:
// its incoming side completed. After a post-copy switch the source
// completes once it has sent the last page, before the destination has
// placed it. A QEMU that reports no incoming state (status empty) is done
// once it has left inmigrate.
func waitIncoming(ctx context.Context, dst *Monitor) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		i, err := dst.QueryMigrate(ctx)
		if err != nil {
			return err
		}
		switch i.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("%w: incoming %s: %s", ErrMigrationFailed, i.Status, i.ErrorDesc)
		case "":
			st, err := dst.QueryStatus(ctx)
			if err != nil {
				return err
			}
			if st.Status != "inmigrate" {
				return nil
			}
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return fmt.Errorf("wait for the incoming migration (%s): %w", i.Status, context.Cause(ctx))
		}
	}
}
