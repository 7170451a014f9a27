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
)

// NativeConfig configures a QEMU-native migration.
type NativeConfig struct {
	Mode string // ModePrecopy or ModePostcopy
	// URI the destination listens on and the source sends to, e.g.
	// tcp:127.0.0.1:4444.
	URI string
	// MaxBandwidth in bytes/s: QEMU's default caps it at 128 MiB/s, so it
	// is always set (default 1 GiB/s, like dmig's own modes on loopback).
	MaxBandwidth uint64
	// DowntimeLimit in ms (default 300).
	DowntimeLimit uint64
	// PostcopyAfter, if set, switches to post-copy this long after the
	// start even if the first pass has not ended (for runs that match
	// dmig's own switchover time).
	PostcopyAfter time.Duration
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
}

// MigrateNative migrates the VM behind src to the QEMU behind dst (started
// with -incoming defer) with QEMU's own pre-copy, or post-copy switched on
// once the first pass has been sent (or after PostcopyAfter). It returns
// when the destination runs, with figures from the source's query-migrate.
// On failure before the destination runs, the source is resumed if it had
// stopped.
func MigrateNative(ctx context.Context, src, dst *Monitor, cfg NativeConfig) (*NativeResult, error) {
	cfg.defaults()
	var post bool
	switch cfg.Mode {
	case ModePrecopy:
	case ModePostcopy:
		post = true
	default:
		return nil, fmt.Errorf("unknown qemu migration mode %q", cfg.Mode)
	}
	caps := map[string]bool{CapIgnoreShared: false, CapPostcopyRAM: post, CapEvents: true}
	for _, m := range []*Monitor{src, dst} {
		if err := m.SetCapabilities(ctx, caps); err != nil {
			return nil, fmt.Errorf("set migration capabilities: %w", err)
		}
	}
	if err := src.SetParameters(ctx, Parameters{MaxBandwidth: cfg.MaxBandwidth, DowntimeLimit: cfg.DowntimeLimit}); err != nil {
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
			i, err := src.WaitMigration(ctx, func(i MigrationInfo) bool { return i.Status != "active" })
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
	if err := dst.WaitStatus(ctx, "running"); err != nil {
		return nil, fmt.Errorf("destination after migration: %w", err)
	}
	res.Source = info
	r := &report.Report{
		Mode:       cfg.Mode,
		Outcome:    report.Completed,
		TotalMS:    float64(info.TotalTime),
		DowntimeMS: float64(info.Downtime),
	}
	if info.TotalTime == 0 {
		r.TotalMS = float64(time.Since(start).Microseconds()) / 1000
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
