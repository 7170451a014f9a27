package tests

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDemo runs make demo's script (tests/demo.sh) as a newcomer would see
// it and checks what it prints: both migrations completed, hybrid placed
// pages from shared storage and sent fewer bytes than precopy, and each
// destination guest verified all of its RAM at resume and runs on. Then
// that the script left no namespace, RAM file or process behind.
func TestDemo(t *testing.T) {
	dir := t.TempDir()
	table := filepath.Join(dir, "demotable")
	if out, err := exec.Command("go", "build", "-o", table, "github.com/dmig/dmig/internal/tools/demotable").CombinedOutput(); err != nil {
		t.Fatalf("build demotable: %v\n%s", err, out)
	}
	shmBefore := demoShm(t)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "demo.sh")
	cmd.Env = append(os.Environ(), "BIN="+dmigBin, "TABLE="+table)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	t.Logf("demo.sh, %.1f s:\n%s", took.Seconds(), out.String())
	if err != nil {
		t.Fatalf("demo.sh: %v", err)
	}
	if took > time.Minute {
		// Not a failure: the cores are shared with other work.
		t.Logf("the demo took %.0f s, more than the minute the README promises", took.Seconds())
	}

	rows := demoTable(t, out.String())
	for _, mode := range []string{"precopy", "hybrid"} {
		if got := rows["outcome"][mode]; got != "completed" {
			t.Errorf("%s: outcome %q", mode, got)
		}
		guestPages := demoCount(t, rows["guest RAM, 4 KiB pages"][mode])
		if v := rows["guest's verify at resume"][mode]; v != strings.TrimSpace(rows["guest RAM, 4 KiB pages"][mode])+" pages OK" || guestPages == 0 {
			t.Errorf("%s: destination guest's verify %q, guest has %d pages", mode, v, guestPages)
		}
		if got := rows["destination guest"][mode]; got != "runs on" {
			t.Errorf("%s: destination guest %q", mode, got)
		}
	}
	if n := demoCount(t, rows["pages storage-verified"]["hybrid"]); n == 0 {
		t.Errorf("hybrid placed no storage-verified pages")
	}
	if n := demoCount(t, rows["pages storage-verified"]["precopy"]); n != 0 {
		t.Errorf("precopy placed %d storage-verified pages", n)
	}
	if p, h := demoMB(t, rows["network bytes"]["precopy"]), demoMB(t, rows["network bytes"]["hybrid"]); h >= p {
		t.Errorf("hybrid sent %.1f MB, precopy %.1f MB", h, p)
	}

	// Nothing of the script's is left behind.
	ns, _ := exec.Command("ip", "netns", "list").Output()
	if id := strconv.Itoa(cmd.Process.Pid); strings.Contains(string(ns), "demo-s"+id) || strings.Contains(string(ns), "demo-d"+id) {
		t.Errorf("namespaces left behind:\n%s", ns)
	}
	for _, f := range demoShm(t) {
		if !slices.Contains(shmBefore, f) {
			t.Errorf("/dev/shm/%s left behind", f)
		}
	}
}

// demoShm lists the entries of /dev/shm named demo-*.
func demoShm(t *testing.T) []string {
	t.Helper()
	m, err := filepath.Glob("/dev/shm/demo-*")
	if err != nil {
		t.Fatal(err)
	}
	for i := range m {
		m[i] = filepath.Base(m[i])
	}
	return m
}

// demoTable parses the side-by-side table of the demo's output: row name
// → mode → cell. The header row names the modes; cells are separated by
// two spaces or more.
func demoTable(t *testing.T, out string) map[string]map[string]string {
	t.Helper()
	sep := regexp.MustCompile(`\s{2,}`)
	lines := strings.Split(out, "\n")
	h := slices.IndexFunc(lines, func(l string) bool { return sep.Split(strings.TrimSpace(l), -1)[0] == "precopy" })
	if h < 0 {
		t.Fatal("no table in the demo's output")
	}
	modes := sep.Split(strings.TrimSpace(lines[h]), -1)
	rows := map[string]map[string]string{}
	for _, l := range lines[h+1:] {
		f := sep.Split(strings.TrimSpace(l), -1)
		if len(f) != len(modes)+1 {
			break
		}
		rows[f[0]] = map[string]string{}
		for i, m := range modes {
			rows[f[0]][m] = f[i+1]
		}
	}
	return rows
}

// demoCount parses a count with thousands separators.
func demoCount(t *testing.T, s string) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(strings.ReplaceAll(s, ",", ""), 10, 64)
	if err != nil {
		t.Fatalf("count %q: %v", s, err)
	}
	return n
}

// demoMB parses "553.0 MB".
func demoMB(t *testing.T, s string) float64 {
	t.Helper()
	v, err := strconv.ParseFloat(strings.TrimSuffix(s, " MB"), 64)
	if err != nil {
		t.Fatalf("megabytes %q: %v", s, err)
	}
	return v
}
