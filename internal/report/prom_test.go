package report

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

var (
	promComment = regexp.MustCompile(`^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.+)$`)
	promSample  = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*)\})? (\S+)$`)
	promLabel   = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"`)
)

// parseProm checks every line of a text exposition and returns the samples
// as "name{labels}" → value. Each sample's metric must have been declared by
// a TYPE line before it, each metric declared once.
func parseProm(t *testing.T, text string) map[string]float64 {
	t.Helper()
	if !strings.HasSuffix(text, "\n") {
		t.Fatal("exposition does not end with a newline")
	}
	typed := map[string]bool{}
	out := map[string]float64{}
	for i, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		if m := promComment.FindStringSubmatch(line); m != nil {
			if m[1] == "TYPE" {
				if typed[m[2]] {
					t.Fatalf("line %d: %s typed twice", i+1, m[2])
				}
				if m[3] != "gauge" && m[3] != "counter" {
					t.Fatalf("line %d: type %q", i+1, m[3])
				}
				typed[m[2]] = true
			}
			continue
		}
		m := promSample.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("line %d is not a sample: %q", i+1, line)
		}
		if !typed[m[1]] {
			t.Fatalf("line %d: sample of undeclared %s", i+1, m[1])
		}
		v, err := strconv.ParseFloat(m[4], 64)
		if err != nil {
			t.Fatalf("line %d: value %q: %v", i+1, m[4], err)
		}
		key := m[1] + "{" + m[3] + "}"
		if _, dup := out[key]; dup {
			t.Fatalf("line %d: duplicate series %s", i+1, key)
		}
		out[key] = v
	}
	return out
}

func TestAppendProm(t *testing.T) {
	a := &Report{Mode: "hybrid", Guest: `db"1\`, Outcome: Completed, TotalMS: 1500, DowntimeMS: 12.5, BytesSent: 123456789,
		Iterations: 3, GuestPages: 262144, Pages: Pages{Data: 1000, Zero: 2000, StorageVerified: 300, PostcopyFault: 7, Prefetch: 9, StorageResent: 40},
		FaultLatencyUS: Latency{P50: 50, P99: 900, Max: 1200},
		Refs:           &Refs{FirstPass: Routes{Reference: 200000, Zero: 2000, NotInLayout: 60000, NoLayout: 0, Refused: 144}}}
	b := &Report{Mode: "precopy", Guest: "db2", Outcome: Aborted}
	now := time.Unix(1700000000, 500e6)
	s := parseProm(t, string(AppendProm(nil, now, a, b)))
	la := `guest="db\"1\\",mode="hybrid"`
	lb := `guest="db2",mode="precopy"`
	for k, want := range map[string]float64{
		"dmig_migration_completed{" + la + "}":                              1,
		"dmig_migration_completed{" + lb + "}":                              0,
		"dmig_migration_outcome{" + lb + `,outcome="aborted"}`:              1,
		"dmig_migration_duration_seconds{" + la + "}":                       1.5,
		"dmig_migration_downtime_seconds{" + la + "}":                       0.0125,
		"dmig_migration_sent_bytes{" + la + "}":                             123456789,
		"dmig_migration_iterations{" + la + "}":                             3,
		"dmig_migration_pages{" + la + `,route="zero"}`:                     2000,
		"dmig_migration_pages{" + la + `,route="storage_verified"}`:         300,
		"dmig_migration_pages{" + la + `,route="storage_resent"}`:           40,
		"dmig_migration_fault_latency_seconds{" + la + `,quantile="0.99"}`:  0.0009,
		"dmig_report_timestamp_seconds{}":                                   1700000000.5,
		"dmig_migration_first_pass_pages{" + la + `,route="reference"}`:     200000,
		"dmig_migration_first_pass_pages{" + la + `,route="not_in_layout"}`: 60000,
		"dmig_migration_first_pass_pages{" + la + `,route="disk_refused"}`:  144,
	} {
		if got, ok := s[k]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", k, got, ok, want)
		}
	}
	if _, ok := s["dmig_migration_first_pass_pages{"+lb+`,route="reference"}`]; ok {
		t.Error("first-pass routes of a precopy migration")
	}
	// Labels decode back to the guest's name.
	for k := range s {
		for _, m := range promLabel.FindAllStringSubmatch(k, -1) {
			if m[1] == "guest" {
				name := strings.NewReplacer(`\\`, `\`, `\"`, `"`, `\n`, "\n").Replace(m[2])
				if name != a.Guest && name != b.Guest {
					t.Fatalf("guest label %q decodes to %q", m[2], name)
				}
			}
		}
	}
}

func TestWritePromAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "dmig.prom")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := &Report{Mode: "precopy", Guest: "g", Outcome: Completed, BytesSent: 42}
	if err := WriteProm(path, time.Now(), r); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if s := parseProm(t, string(got)); s[`dmig_migration_sent_bytes{guest="g",mode="precopy"}`] != 42 {
		t.Fatalf("written file:\n%s", got)
	}
	es, _ := os.ReadDir(dir)
	if len(es) != 1 {
		t.Fatalf("temporary files left: %v", es)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o644 {
		t.Fatalf("mode %v, want 0644 for the collector", fi.Mode())
	}
	if err := WriteProm(filepath.Join(dir, "missing", "x.prom"), time.Now(), r); err == nil {
		t.Fatal("write into a missing directory succeeded")
	}
}
