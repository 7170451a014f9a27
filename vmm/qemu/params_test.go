package qemu

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

// TestBandwidthParameters: both QEMUs take the caps dmig compare sets,
// max-bandwidth and max-postcopy-bandwidth (post-copy's, which
// max-bandwidth does not cover), and report them back.
func TestBandwidthParameters(t *testing.T) {
	for _, q := range testQEMUs(t) {
		t.Run(q.name, func(t *testing.T) {
			if q.bin == "" {
				t.Fatalf("QEMU %s is not installed (%s)", q.name, q.why)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			dir := t.TempDir()
			sock := filepath.Join(dir, "qmp.sock")
			v, err := Start(ctx, q.bin, []string{"-accel", "tcg", "-m", "16M", "-display", "none", "-nodefaults", "-S",
				"-qmp", "unix:" + sock + ",server=on,wait=off"}, sock, filepath.Join(dir, "stderr"), true)
			if err != nil {
				t.Fatal(err)
			}
			defer v.Kill()
			want := Parameters{MaxBandwidth: 125_000_000, MaxPostcopyBandwidth: 125_000_000, DowntimeLimit: 50}
			if err := v.Mon.SetParameters(ctx, want); err != nil {
				t.Fatal(err)
			}
			var got Parameters
			if err := v.Mon.Execute(ctx, "query-migrate-parameters", nil, &got); err != nil {
				t.Fatal(err)
			}
			if got.MaxBandwidth != want.MaxBandwidth || got.MaxPostcopyBandwidth != want.MaxPostcopyBandwidth || got.DowntimeLimit != want.DowntimeLimit {
				t.Fatalf("parameters %+v after setting %+v", got, want)
			}
		})
	}
}
