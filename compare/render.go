package compare

import (
	"encoding/csv"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/vmm/qemu"
)

// ModeSummary is the mean of one mode's completed migrations, and how it
// compares with the baseline mode.
type ModeSummary struct {
	Mode string `json:"mode"`
	// N migrations completed and were averaged; Failed did not complete
	// (no report, or a report that is not completed) and are left out.
	N      int `json:"n"`
	Failed int `json:"failed"`

	TotalS     float64 `json:"total_s"`
	DowntimeMS float64 `json:"downtime_ms"`
	NetworkMB  float64 `json:"network_mb"` // Report.BytesSent / 1e6
	// Pages by route (means, so fractional).
	DataPages     float64 `json:"pages_data"`
	ZeroPages     float64 `json:"pages_zero"`
	StoragePages  float64 `json:"pages_storage_verified"`
	PostcopyPages float64 `json:"pages_postcopy_fault"`

	TPSBefore float64 `json:"tps_before"`
	TPSDuring float64 `json:"tps_during"`
	TPSAfter  float64 `json:"tps_after"`
	// TPSDuringMin is the lowest 1 s window during any of its migrations.
	TPSDuringMin float64 `json:"tps_during_min"`
	// PagesDiffer is the RAM oracle's count over the mode's migrations
	// (all of them, completed or not); Oracles is how many were checked.
	PagesDiffer uint64 `json:"pages_differ"`
	Oracles     int    `json:"oracles"`

	// Baseline is the mode the ratios are against: QEMU's fastest mode
	// (lowest mean total time) that completed in the run, else precopy,
	// else none ("" and ratios 0).
	Baseline string `json:"baseline,omitempty"`
	// TotalX, BytesX and DowntimeX are this mode's means over the
	// baseline's; 0 when either side has no figure.
	TotalX    float64 `json:"total_x"`
	BytesX    float64 `json:"bytes_x"`
	DowntimeX float64 `json:"downtime_x"`
}

// completed reports whether m has figures to average.
func completed(m *Migration) bool {
	return m.Report != nil && m.Report.Outcome == report.Completed
}

// Summarize averages each mode's completed migrations, one entry per mode
// in the order the modes first appear in r.
func Summarize(r *Result) []ModeSummary {
	var out []ModeSummary
	idx := map[string]int{}
	for i := range r.Migrations {
		m := &r.Migrations[i]
		j, ok := idx[m.Mode]
		if !ok {
			j = len(out)
			idx[m.Mode] = j
			out = append(out, ModeSummary{Mode: m.Mode})
		}
		s := &out[j]
		if m.Oracle != nil {
			s.Oracles++
			s.PagesDiffer += m.Oracle.PagesDiffer
		}
		if !completed(m) {
			s.Failed++
			continue
		}
		if s.N == 0 || m.TPSDuringMin < s.TPSDuringMin {
			s.TPSDuringMin = m.TPSDuringMin
		}
		s.N++
		rep := m.Report
		s.TotalS += rep.TotalMS / 1e3
		s.DowntimeMS += rep.DowntimeMS
		s.NetworkMB += float64(rep.BytesSent) / 1e6
		s.DataPages += float64(rep.Pages.Data)
		s.ZeroPages += float64(rep.Pages.Zero)
		s.StoragePages += float64(rep.Pages.StorageVerified)
		s.PostcopyPages += float64(rep.Pages.PostcopyFault)
		s.TPSBefore += m.TPSBefore
		s.TPSDuring += m.TPSDuring
		s.TPSAfter += m.TPSAfter
	}
	for i := range out {
		s := &out[i]
		if s.N == 0 {
			continue
		}
		n := float64(s.N)
		for _, v := range []*float64{&s.TotalS, &s.DowntimeMS, &s.NetworkMB, &s.DataPages, &s.ZeroPages,
			&s.StoragePages, &s.PostcopyPages, &s.TPSBefore, &s.TPSDuring, &s.TPSAfter} {
			*v /= n
		}
	}
	base := -1
	for j := range out {
		if qemu.IsNative(out[j].Mode) && out[j].N > 0 && (base < 0 || out[j].TotalS < out[base].TotalS) {
			base = j
		}
	}
	if j, ok := idx["precopy"]; base < 0 && ok && out[j].N > 0 {
		base = j
	}
	if base < 0 {
		return out
	}
	b := out[base]
	for i := range out {
		s := &out[i]
		s.Baseline = b.Mode
		if s.N == 0 {
			continue
		}
		s.TotalX = ratio(s.TotalS, b.TotalS)
		s.BytesX = ratio(s.NetworkMB, b.NetworkMB)
		s.DowntimeX = ratio(s.DowntimeMS, b.DowntimeMS)
	}
	return out
}

// ratio is a/b, or 0 when b is 0: a ratio against nothing is no figure.
func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// outcome is the report's, or "" for a migration that failed before it
// had one (its Error says why).
func outcome(m *Migration) string {
	if m.Report == nil {
		return ""
	}
	return string(m.Report.Outcome)
}

// WriteTable writes r for people: one row per migration, then one per
// mode with its means and its ratios against the baseline.
func WriteTable(w io.Writer, r *Result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	// The last cell ends the line unterminated, so a long error or ratio
	// text does not widen a column; the right-aligned columns pad only on
	// their left, so it needs its own gap.
	row := func(cells ...any) {
		for i, c := range cells {
			switch {
			case i == len(cells)-1 && i > 0:
				fmt.Fprint(tw, "\t  ")
			case i > 0:
				fmt.Fprint(tw, "\t")
			}
			fmt.Fprint(tw, c)
		}
		fmt.Fprintln(tw)
	}
	// downtime ms is guest-visible, reported ms the tool's own figure
	// (Report.ReportedDowntimeMS).
	row("mode", "round", "outcome", "total s", "downtime ms", "reported ms", "network MB", "data pg", "zero pg", "storage pg",
		"post-copy pg", "pages differ", "tps before", "tps during", "tps min", "tps after", "wl errors", "check", "error")
	for i := range r.Migrations {
		m := &r.Migrations[i]
		cells := []any{m.Mode, m.Round, dash(outcome(m))}
		if rep := m.Report; rep != nil {
			cells = append(cells, f2(rep.TotalMS/1e3), downtime(rep), reported(rep), f1(float64(rep.BytesSent)/1e6),
				rep.Pages.Data, rep.Pages.Zero, rep.Pages.StorageVerified, rep.Pages.PostcopyFault)
		} else {
			cells = append(cells, "-", "-", "-", "-", "-", "-", "-", "-")
		}
		differ := "-"
		if m.Oracle != nil {
			differ = strconv.FormatUint(m.Oracle.PagesDiffer, 10)
		}
		cells = append(cells, differ, f1(m.TPSBefore), f1(m.TPSDuring), f1(m.TPSDuringMin), f1(m.TPSAfter),
			strconv.FormatFloat(m.WorkloadErrors, 'f', -1, 64), dash(m.Check), dash(oneLine(m.Error)))
		row(cells...)
	}
	row()
	row("mode", "completed", "failed", "total s", "downtime ms", "", "network MB", "data pg", "zero pg", "storage pg",
		"post-copy pg", "pages differ", "tps before", "tps during", "tps min", "tps after", "", "", "vs baseline")
	for _, s := range Summarize(r) {
		differ := "-"
		if s.Oracles > 0 {
			differ = strconv.FormatUint(s.PagesDiffer, 10)
		}
		if s.N == 0 {
			// Means of nothing are not zeros.
			row(s.Mode, s.N, s.Failed, "-", "-", "", "-", "-", "-", "-", "-", differ, "-", "-", "-", "-", "", "", versus(s))
			continue
		}
		row(s.Mode, s.N, s.Failed, f2(s.TotalS), f1(s.DowntimeMS), "", f1(s.NetworkMB), f0(s.DataPages), f0(s.ZeroPages),
			f0(s.StoragePages), f0(s.PostcopyPages), differ, f1(s.TPSBefore), f1(s.TPSDuring), f1(s.TPSDuringMin), f1(s.TPSAfter), "", "", versus(s))
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write comparison table: %w", err)
	}
	for i := range r.Migrations {
		m := &r.Migrations[i]
		if m.Report != nil && m.Report.DowntimeWarning != "" {
			if _, err := fmt.Fprintf(w, "* %s round %d: %s\n", m.Mode, m.Round, m.Report.DowntimeWarning); err != nil {
				return fmt.Errorf("write comparison table: %w", err)
			}
		}
	}
	return nil
}

// downtime is rep's downtime, marked * when it is the tool's own figure
// for want of events (a note under the table says why).
func downtime(rep *report.Report) string {
	if rep.DowntimeWarning != "" {
		return f1(rep.DowntimeMS) + "*"
	}
	return f1(rep.DowntimeMS)
}

// reported is the tool's own downtime, "-" where it was not kept apart.
func reported(rep *report.Report) string {
	if rep.ReportedDowntimeMS == 0 && rep.DowntimeWarning == "" {
		return "-"
	}
	return f1(rep.ReportedDowntimeMS)
}

// versus is s's ratios in words, e.g. "total 0.31× qemu-precopy, bytes
// 0.20×, downtime 0.80×".
func versus(s ModeSummary) string {
	switch {
	case s.Baseline == "":
		return "no baseline"
	case s.N == 0:
		return "none completed"
	}
	return fmt.Sprintf("total %.2f× %s, bytes %.2f×, downtime %.2f×", s.TotalX, s.Baseline, s.BytesX, s.DowntimeX)
}

func f0(v float64) string { return strconv.FormatFloat(v, 'f', 0, 64) }
func f1(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }
func f2(v float64) string { return strconv.FormatFloat(v, 'f', 2, 64) }

// oneLine keeps an error's newlines and tabs from breaking the table.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// WriteCSV writes one row per migration, in exact figures and base units,
// with its mode's ratios against the baseline. A migration without a
// report has its report's columns empty.
func WriteCSV(w io.Writer, r *Result) error {
	header := []string{"mode", "round", "outcome", "start_s", "end_s", "total_ms", "downtime_ms", "bytes_sent",
		"pages_data", "pages_zero", "pages_storage_verified", "pages_postcopy_fault", "tps_before", "tps_during",
		"tps_after", "workload_errors", "check", "error", "baseline", "total_x", "bytes_x", "downtime_x",
		"tps_during_min", "pages_checked", "pages_differ", "pages_unchecked", "max_bytes_per_s", "mean_bytes_per_s",
		"reported_downtime_ms", "downtime_warning"}
	sums := map[string]ModeSummary{}
	for _, s := range Summarize(r) {
		sums[s.Mode] = s
	}
	num := func(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }
	cw := csv.NewWriter(w)
	if err := cw.Write(header); err != nil {
		return fmt.Errorf("write comparison csv: %w", err)
	}
	for i := range r.Migrations {
		m := &r.Migrations[i]
		rec := []string{m.Mode, strconv.Itoa(m.Round), outcome(m), num(m.StartS), num(m.EndS)}
		if rep := m.Report; rep != nil {
			u := func(v uint64) string { return strconv.FormatUint(v, 10) }
			rec = append(rec, num(rep.TotalMS), num(rep.DowntimeMS), u(rep.BytesSent), u(rep.Pages.Data),
				u(rep.Pages.Zero), u(rep.Pages.StorageVerified), u(rep.Pages.PostcopyFault))
		} else {
			rec = append(rec, "", "", "", "", "", "", "")
		}
		s := sums[m.Mode]
		rec = append(rec, num(m.TPSBefore), num(m.TPSDuring), num(m.TPSAfter), num(m.WorkloadErrors), m.Check,
			m.Error, s.Baseline, num(s.TotalX), num(s.BytesX), num(s.DowntimeX), num(m.TPSDuringMin))
		if o := m.Oracle; o != nil {
			u := func(v uint64) string { return strconv.FormatUint(v, 10) }
			rec = append(rec, u(o.PagesChecked), u(o.PagesDiffer), u(o.PagesUnchecked))
		} else {
			rec = append(rec, "", "", "")
		}
		if rep := m.Report; rep != nil {
			rec = append(rec, strconv.FormatUint(rep.Bandwidth.MaxBytesPerS, 10), num(rep.Bandwidth.MeanBytesPerS),
				num(rep.ReportedDowntimeMS), rep.DowntimeWarning)
		} else {
			rec = append(rec, "", "", "", "")
		}
		if err := cw.Write(rec); err != nil {
			return fmt.Errorf("write comparison csv: %w", err)
		}
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		return fmt.Errorf("write comparison csv: %w", err)
	}
	return nil
}
