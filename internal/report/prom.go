package report

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// AppendProm appends the reports' figures in the Prometheus text exposition
// format (version 0.0.4), one series per report labelled by guest and mode,
// as node_exporter's textfile collector reads it. now stamps the file, so
// an alert can tell a stale file from a quiet host.
func AppendProm(b []byte, now time.Time, reps ...*Report) []byte {
	type sample struct {
		extra string // extra labels, `k="v"` joined by commas
		v     float64
	}
	metric := func(name, typ, help string, val func(r *Report) []sample) {
		b = fmt.Appendf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
		for _, r := range reps {
			labels := `guest="` + escapeLabel(r.Guest) + `",mode="` + escapeLabel(r.Mode) + `"`
			for _, s := range val(r) {
				l := labels
				if s.extra != "" {
					l += "," + s.extra
				}
				b = fmt.Appendf(b, "%s{%s} %s\n", name, l, strconv.FormatFloat(s.v, 'f', -1, 64))
			}
		}
	}
	one := func(v float64) []sample { return []sample{{v: v}} }
	metric("dmig_migration_completed", "gauge", "1 if the guest runs on the destination with every page placed, else 0.",
		func(r *Report) []sample { return one(b2f(r.Outcome == Completed)) })
	metric("dmig_migration_outcome", "gauge", "1 for the migration's outcome (completed, aborted, failed-after-resume).",
		func(r *Report) []sample {
			return []sample{{extra: `outcome="` + escapeLabel(string(r.Outcome)) + `"`, v: 1}}
		})
	metric("dmig_migration_duration_seconds", "gauge", "Total migration time.",
		func(r *Report) []sample { return one(r.TotalMS / 1e3) })
	metric("dmig_migration_downtime_seconds", "gauge", "Source paused to destination running.",
		func(r *Report) []sample { return one(r.DowntimeMS / 1e3) })
	metric("dmig_migration_sent_bytes", "gauge", "Bytes sent over the network by the source.",
		func(r *Report) []sample { return one(float64(r.BytesSent)) })
	metric("dmig_migration_iterations", "gauge", "Pre-copy passes.",
		func(r *Report) []sample { return one(float64(r.Iterations)) })
	metric("dmig_migration_guest_pages", "gauge", "Pages of guest RAM.",
		func(r *Report) []sample { return one(float64(r.GuestPages)) })
	metric("dmig_migration_pages", "gauge", "Pages by the route they took.",
		func(r *Report) []sample {
			p := r.Pages
			var s []sample
			for _, kv := range []struct {
				route string
				n     uint64
			}{{"data", p.Data}, {"zero", p.Zero}, {"storage_verified", p.StorageVerified},
				{"storage_mismatch", p.StorageMismatch}, {"storage_resent", p.StorageResent}, {"postcopy_fault", p.PostcopyFault}, {"prefetch", p.Prefetch}} {
				s = append(s, sample{extra: `route="` + kv.route + `"`, v: float64(kv.n)})
			}
			return s
		})
	metric("dmig_migration_first_pass_pages", "gauge", "Hybrid mode: the first pre-copy pass's pages (every guest page once) by route: as storage references, and why the others were not.",
		func(r *Report) []sample {
			if r.Refs == nil {
				return nil
			}
			f := r.Refs.FirstPass
			var s []sample
			for _, kv := range []struct {
				route string
				n     uint64
			}{{"reference", f.Reference}, {"zero", f.Zero}, {"not_in_layout", f.NotInLayout}, {"no_layout", f.NoLayout}, {"disk_refused", f.Refused}} {
				s = append(s, sample{extra: `route="` + kv.route + `"`, v: float64(kv.n)})
			}
			return s
		})
	metric("dmig_migration_fault_latency_seconds", "gauge", "Post-copy fault latency at the destination (quantile 1 is the maximum).",
		func(r *Report) []sample {
			l := r.FaultLatencyUS
			return []sample{{`quantile="0.5"`, l.P50 / 1e6}, {`quantile="0.99"`, l.P99 / 1e6}, {`quantile="1"`, l.Max / 1e6}}
		})
	metric("dmig_migration_storage_read_bytes", "gauge", "Bytes the destination read from shared storage.",
		func(r *Report) []sample { return one(float64(r.Storage.BytesRead)) })
	metric("dmig_migration_bandwidth_bytes_per_second", "gauge", "Page traffic: the cap (0: none), the mean rate, the busiest second.",
		func(r *Report) []sample {
			bw := r.Bandwidth
			return []sample{{`kind="cap"`, float64(bw.MaxBytesPerS)}, {`kind="mean"`, bw.MeanBytesPerS}, {`kind="peak_1s"`, bw.PeakBytesPerS}}
		})
	b = fmt.Appendf(b, "# HELP dmig_report_timestamp_seconds When this file was written.\n# TYPE dmig_report_timestamp_seconds gauge\ndmig_report_timestamp_seconds %s\n",
		strconv.FormatFloat(float64(now.UnixMilli())/1e3, 'f', 3, 64))
	return b
}

// WriteProm writes AppendProm's text to path atomically: the textfile
// collector may read at any moment and must never see half a file, so the
// text goes to a hidden temporary file in the same directory (the collector
// only reads *.prom) that is renamed over path.
func WriteProm(path string, now time.Time, reps ...*Report) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write metrics %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(AppendProm(nil, now, reps...)); err != nil {
		tmp.Close()
		return fmt.Errorf("write metrics %s: %w", path, err)
	}
	// CreateTemp makes the file 0600; the collector may run as another user.
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("write metrics %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write metrics %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("replace metrics %s: %w", path, err)
	}
	return nil
}

func escapeLabel(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
