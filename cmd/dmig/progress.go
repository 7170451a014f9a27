package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/dmig/dmig/internal/bandwidth"
	"github.com/dmig/dmig/internal/report"
)

// jsonLogs says whether logs are JSON: asked for, or auto off a terminal.
func (g *globals) jsonLogs() bool {
	return g.LogFormat == "json" || (g.LogFormat == "auto" && !term.IsTerminal(int(os.Stderr.Fd())))
}

// logSummary is printSummary for log collectors: one structured line.
func logSummary(log hclog.Logger, r *report.Report) {
	if r == nil {
		return
	}
	args := []any{"mode", r.Mode, "guest", r.Guest, "outcome", r.Outcome, "total_ms", r.TotalMS, "downtime_ms", r.DowntimeMS,
		"bytes_sent", r.BytesSent, "iterations", r.Iterations, "pages_data", r.Pages.Data, "pages_zero", r.Pages.Zero,
		"pages_storage_verified", r.Pages.StorageVerified, "pages_storage_mismatch", r.Pages.StorageMismatch,
		"pages_postcopy_fault", r.Pages.PostcopyFault, "pages_prefetch", r.Pages.Prefetch,
		"fault_latency_p50_us", r.FaultLatencyUS.P50, "fault_latency_p99_us", r.FaultLatencyUS.P99,
		"max_bandwidth", r.Bandwidth.MaxBytesPerS, "mean_bytes_per_s", r.Bandwidth.MeanBytesPerS, "peak_1s_bytes_per_s", r.Bandwidth.PeakBytesPerS}
	if line := refsLine(r); line != "" {
		args = append(args, "refs", line)
	}
	if r.Refs != nil && r.Refs.Refreshed != "" {
		args = append(args, "layout_refreshed", r.Refs.Refreshed)
	}
	if r.Refs != nil && r.Refs.Warning != "" {
		args = append(args, "layout_warning", r.Refs.Warning)
	}
	if r.Error != "" {
		args = append(args, "error", r.Error)
	}
	log.Info("summary", args...)
}

// progressView draws a running migration on a terminal: a bar of the
// guest's pages already sent (or no longer owed, in post-copy), the phase,
// pass, pages by route, rate and ETA. A nil *progressView draws nothing, so
// callers need not care whether there is a terminal.
type progressView struct {
	mu  sync.Mutex
	bar *progressbar.ProgressBar
	w   io.Writer
}

// newProgressView returns a view drawing on f, or nil when f is not a
// terminal: logs, pipes and cron mail stay free of control sequences.
func newProgressView(f *os.File) *progressView {
	if !term.IsTerminal(int(f.Fd())) {
		return nil
	}
	return newProgressViewTo(f)
}

func newProgressViewTo(w io.Writer) *progressView { return &progressView{w: w} }

// update shows p. It is called from the engine's goroutines.
func (v *progressView) update(p report.Progress) {
	if v == nil || p.GuestPages == 0 {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.bar == nil {
		v.bar = progressbar.NewOptions64(int64(p.GuestPages),
			progressbar.OptionSetWriter(v.w),
			progressbar.OptionSetWidth(24),
			progressbar.OptionSetPredictTime(false), // ours knows the dirty rate; its guess does not
			progressbar.OptionShowDescriptionAtLineEnd(),
			progressbar.OptionUseANSICodes(true),
		)
	}
	// No throttle: updates come once per pass and every 250 ms of
	// post-copy, and a throttled bar would leave the last one undrawn.
	// Describe before Set: a bar set to its maximum is finished and no
	// longer redraws for a new description.
	v.bar.Describe(describe(p))
	_ = v.bar.Set64(int64(p.GuestPages - min(p.Remaining, p.GuestPages)))
}

// finish ends the bar's line so the summary starts on its own.
func (v *progressView) finish() {
	if v == nil {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.bar != nil {
		_ = v.bar.Exit()
		fmt.Fprintln(v.w)
	}
}

func describe(p report.Progress) string {
	eta := "-"
	if d := p.ETA(); d > 0 {
		eta = d.Round(10 * time.Millisecond).String()
	}
	if p.Phase == report.PhaseDone {
		eta = "0s"
	}
	rate := fmt.Sprintf("%.0f MB/s", p.Rate/1e6)
	if p.MaxBandwidth > 0 {
		rate += " (cap " + bandwidth.Format(p.MaxBandwidth) + ")"
	}
	return fmt.Sprintf("%s pass %d | data %d zero %d | left %d | %s | ETA %s",
		p.Phase, p.Iteration, p.DataPages, p.ZeroPages, p.Remaining, rate, eta)
}
