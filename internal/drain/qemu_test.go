package drain

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dmig/dmig/internal/report"
)

func TestParseQEMUEntries(t *testing.T) {
	good := `
destinations:
  host-b:7070: {max_concurrent: 1}
vms:
  - name: db1
    qmp: /run/db1-qmp.sock
    to: host-b:7070
    compress: true
    codec: s2
    layout: unix:/run/db1-agent.sock
    layout_timeout: 1m
    shared_storage: [/mnt/nfs]
  - qmp_dir: /run/qemu
    to: host-b:7070
  - discover: qemu
    to: host-c:7070
    downtime: 30ms
`
	c, err := ParseConfig([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if vm := c.VMs[0]; !vm.IsQEMU() || vm.Template() || !vm.Compress || vm.Codec != "s2" || vm.Layout == "" || vm.LayoutTimeout != time.Minute || len(vm.SharedStorage) != 1 ||
		!c.VMs[1].Template() || !c.VMs[2].Template() || c.Destinations["host-b:7070"].MaxConcurrent != 1 {
		t.Fatalf("parsed %+v", c)
	}
	for name, tc := range map[string]struct{ cfg, want string }{
		"qmp and pid":       {strings.Replace(good, "qmp: /run/db1-qmp.sock", "qmp: /run/db1-qmp.sock\n    pid: 3", 1), "exactly one of pid"},
		"qemu with ram":     {strings.Replace(good, "compress: true", "ram: [/dev/shm/x]", 1), "no ram or dest_cmd"},
		"template named":    {strings.Replace(good, "  - qmp_dir:", "  - name: all\n    qmp_dir:", 1), "has no name"},
		"discover what":     {strings.Replace(good, "discover: qemu", "discover: xen", 1), "only kind is qemu"},
		"shared for proc":   {"vms: [{name: a, pid: 1, ram: [/r], dest_cmd: [g], to: 'h:1', shared_storage: [/x]}]", "for QEMU VMs"},
		"negative limit":    {strings.Replace(good, "max_concurrent: 1", "max_concurrent: -1", 1), "max_concurrent"},
		"misspelt qemu key": {strings.Replace(good, "compress:", "compres:", 1), "compres"},
		"unknown codec":     {strings.Replace(good, "codec: s2", "codec: lz4", 1), "unknown compression codec \"lz4\""},
	} {
		if _, err := ParseConfig([]byte(tc.cfg)); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrConfig saying %q", name, err, tc.want)
		}
	}
}

func TestExpandedName(t *testing.T) {
	for in, want := range map[string]string{"db1": "db1", "my vm/2": "my_vm_2", "..": "vm_..", "": "vm_"} {
		if got := ExpandedName(in); got != want || !validName(got) {
			t.Errorf("ExpandedName(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestDrainSkipsWhatCannotMigrate: a VM the engine finds it cannot migrate
// (ErrCannotMigrate) and one an expansion marked are reported as skipped
// with their reasons, never retried; a template's VMs are drained in its
// place, and a found name another entry has is skipped.
func TestDrainSkipsWhatCannotMigrate(t *testing.T) {
	var mu sync.Mutex
	calls := map[string]int{}
	migrate := func(ctx context.Context, vm VM, pid int) (*report.Report, error) {
		mu.Lock()
		calls[vm.Name]++
		mu.Unlock()
		if vm.Name == "private" {
			return nil, fmt.Errorf("%w: guest RAM is not a shared memory backend", ErrCannotMigrate)
		}
		return &report.Report{Outcome: report.Completed}, nil
	}
	expand := func(ctx context.Context, t VM) ([]VM, error) {
		mk := func(name, skip string) VM {
			vm := t
			vm.QMPDir, vm.Name, vm.QMP, vm.Skip = "", name, "/run/"+name+".sock", skip
			return vm
		}
		return []VM{mk("private", ""), mk("noqmp", "no QMP unix socket"), mk("ok", ""), mk("a", "")}, nil
	}
	cfg := testConfig("a")
	cfg.VMs = append(cfg.VMs, VM{QMPDir: "/run/qemu", To: "dest:7000"})
	sum, err := Run(context.Background(), cfg, Options{LockDir: t.TempDir(), Migrate: migrate, Expand: expand,
		Retryable: func(error) bool { return true }})
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		name string
		st   Status
		why  string
	}{{"a", StatusMoved, ""}, {"private", StatusSkipped, "not a shared memory backend"}, {"noqmp", StatusSkipped, "no QMP"},
		{"ok", StatusMoved, ""}, {"a", StatusSkipped, "another entry already names"}}
	if len(sum.VMs) != len(want) || sum.Skipped != 3 || sum.Moved != 2 {
		t.Fatalf("summary %+v", sum)
	}
	for i, w := range want {
		r := sum.VMs[i]
		if r.Name != w.name || r.Status != w.st || !strings.Contains(r.Error, w.why) || r.Report != nil && w.st == StatusSkipped {
			t.Errorf("line %d: %+v, want %s %s %q", i, r, w.name, w.st, w.why)
		}
	}
	if calls["private"] != 1 || calls["noqmp"] != 0 || calls["a"] != 1 {
		t.Fatalf("calls %v: a skipped VM is tried once at most, never retried", calls)
	}
}

// TestDrainTemplateFailure: a template that cannot be expanded is one
// failed line; the other entries go on.
func TestDrainTemplateFailure(t *testing.T) {
	cfg := testConfig("a")
	cfg.VMs = append(cfg.VMs, VM{QMPDir: "/nonexistent", To: "dest:7000"})
	eng := &fakeEngine{}
	sum, err := Run(context.Background(), cfg, Options{LockDir: t.TempDir(), Migrate: eng.migrate,
		Expand: func(context.Context, VM) ([]VM, error) { return nil, errors.New("list QMP sockets: no such directory") }})
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.VMs) != 2 || sum.VMs[0].Status != StatusMoved || sum.VMs[1].Status != StatusFailed ||
		sum.VMs[1].Name != "qmp_dir /nonexistent" || !strings.Contains(sum.VMs[1].Error, "no such directory") {
		t.Fatalf("summary %+v", sum)
	}
}

// TestDrainDestinationLimit: with max_concurrent 1 on one destination, its
// guests never migrate at once, while guests to another go alongside.
func TestDrainDestinationLimit(t *testing.T) {
	var cur, peak, other atomic.Int32
	both := make(chan struct{})
	migrate := func(ctx context.Context, vm VM, pid int) (*report.Report, error) {
		if vm.To != "b:1" {
			// Two guests to c must run at once: each waits for the other.
			if other.Add(1) == 2 {
				close(both)
			}
			select {
			case <-both:
				return &report.Report{Outcome: report.Completed}, nil
			case <-time.After(20 * time.Second):
				return nil, errors.New("the other guest to c never started alongside")
			}
		}
		n := cur.Add(1)
		for {
			old := peak.Load()
			if n <= old || peak.CompareAndSwap(old, n) {
				break
			}
		}
		time.Sleep(5 * time.Millisecond)
		cur.Add(-1)
		return &report.Report{Outcome: report.Completed}, nil
	}
	cfg := &Config{Destinations: map[string]Destination{"b:1": {MaxConcurrent: 1}}}
	for i := range 6 {
		to := "b:1"
		if i == 1 || i == 4 {
			to = "c:1"
		}
		cfg.VMs = append(cfg.VMs, VM{Name: fmt.Sprintf("g%d", i), Pid: 100 + i, RAM: []string{"/r"}, DestCmd: []string{"g"}, To: to})
	}
	sum, err := Run(context.Background(), cfg, Options{Parallel: 4, LockDir: t.TempDir(), Migrate: migrate})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Moved != 6 || peak.Load() != 1 {
		t.Fatalf("summary %+v; peak to the limited destination %d, want 1", sum, peak.Load())
	}
}
