package drain

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmig/dmig/internal/report"
)

func testConfig(names ...string) *Config {
	c := &Config{}
	for i, n := range names {
		c.VMs = append(c.VMs, VM{Name: n, Pid: 1000 + i, RAM: []string{"/dev/shm/" + n}, DestCmd: []string{"guest"}, To: "dest:7000"})
	}
	return c
}

// fakeEngine records migrations and fails the guests named in fail.
type fakeEngine struct {
	mu    sync.Mutex
	calls map[string]int
	fail  map[string]report.Outcome
	delay time.Duration
}

func (f *fakeEngine) migrate(ctx context.Context, vm VM, pid int) (*report.Report, error) {
	f.mu.Lock()
	if f.calls == nil {
		f.calls = map[string]int{}
	}
	f.calls[vm.Name]++
	f.mu.Unlock()
	time.Sleep(f.delay)
	if o, ok := f.fail[vm.Name]; ok {
		return &report.Report{Guest: vm.Name, Outcome: o}, errors.New("destination refused")
	}
	return &report.Report{Guest: vm.Name, Outcome: report.Completed, TotalMS: 1}, nil
}

func TestDrainFailureDoesNotStopOthersAndRerunSkipsMoved(t *testing.T) {
	dir := t.TempDir()
	eng := &fakeEngine{fail: map[string]report.Outcome{"b": report.Aborted}}
	o := Options{Parallel: 2, LockDir: filepath.Join(dir, "locks"), State: filepath.Join(dir, "state", "drain.json"), Migrate: eng.migrate}
	cfg := testConfig("a", "b", "c")
	sum, err := Run(context.Background(), cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Moved != 2 || sum.Failed != 1 || sum.VMs[1].Status != StatusFailed || sum.VMs[1].Outcome != report.Aborted ||
		sum.VMs[0].Status != StatusMoved || sum.VMs[2].Status != StatusMoved || !strings.Contains(sum.VMs[1].Error, "refused") {
		t.Fatalf("summary %+v", sum)
	}
	st, err := readState(o.State)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st.Moved["b"]; ok || len(st.Moved) != 2 {
		t.Fatalf("state %+v: want a and c moved", st)
	}
	// The rerun skips a and c and tries b again.
	sum, err = Run(context.Background(), cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	if sum.AlreadyMoved != 2 || sum.Failed != 1 || eng.calls["a"] != 1 || eng.calls["c"] != 1 || eng.calls["b"] != 2 {
		t.Fatalf("rerun: summary %+v, calls %v", sum, eng.calls)
	}
}

// TestConcurrentDrainsMoveEachGuestOnce runs drains over the same config at
// once, many times: no guest is migrated twice, and every guest ends moved.
func TestConcurrentDrainsMoveEachGuestOnce(t *testing.T) {
	for round := range 20 {
		dir := t.TempDir()
		eng := &fakeEngine{delay: time.Millisecond}
		o := Options{Parallel: 2, LockDir: dir, State: filepath.Join(dir, "state.json"), Migrate: eng.migrate}
		cfg := testConfig("a", "b", "c", "d")
		sums := make([]*Summary, 3)
		var wg sync.WaitGroup
		for i := range sums {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s, err := Run(context.Background(), cfg, o)
				if err != nil {
					t.Error(err)
				}
				sums[i] = s
			}()
		}
		wg.Wait()
		moved := map[string]int{}
		for _, s := range sums {
			for _, r := range s.VMs {
				if r.Status == StatusMoved {
					moved[r.Name]++
				}
			}
		}
		for _, vm := range cfg.VMs {
			if eng.calls[vm.Name] != 1 || moved[vm.Name] != 1 {
				t.Fatalf("round %d: %s migrated %d times, reported moved %d times", round, vm.Name, eng.calls[vm.Name], moved[vm.Name])
			}
		}
	}
}

func TestDrainSkipsLockedGuest(t *testing.T) {
	dir := t.TempDir()
	held, err := flock(filepath.Join(dir, "b.lock"), false)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	eng := &fakeEngine{}
	sum, err := Run(context.Background(), testConfig("a", "b"), Options{LockDir: dir, Migrate: eng.migrate})
	if err != nil {
		t.Fatal(err)
	}
	if sum.VMs[1].Status != StatusBusy || eng.calls["b"] != 0 || sum.VMs[0].Status != StatusMoved {
		t.Fatalf("summary %+v, calls %v", sum, eng.calls)
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, "c.yaml")
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := `
state: /var/lib/dmig/s.json
max_bandwidth: 1Gi
vms:
  - name: db1
    pid_file: /run/db1.pid
    ram: [/dev/shm/db1]
    dest_cmd: [qemu-wrapper, db1]
    to: 10.0.0.2:7000
    mode: hybrid
    downtime: 30ms
    max_bandwidth: 125MB/s
`
	c, err := LoadConfig(write(good))
	if err != nil {
		t.Fatal(err)
	}
	if vm := c.VMs[0]; vm.Name != "db1" || vm.Downtime != 30*time.Millisecond || vm.PidFile != "/run/db1.pid" || c.State != "/var/lib/dmig/s.json" ||
		vm.MaxBandwidth != 125_000_000 || c.MaxBandwidth != 1<<30 {
		t.Fatalf("parsed %+v", c)
	}
	// JSON is accepted as it is.
	if c, err := LoadConfig(write(`{"max_bandwidth":"2G","vms":[{"name":"x","pid":5,"ram":["/r"],"dest_cmd":["g"],"to":"h:1","max_bandwidth":50000000}]}`)); err != nil ||
		c.MaxBandwidth != 2e9 || c.VMs[0].MaxBandwidth != 50e6 {
		t.Fatalf("JSON config: %v %+v", err, c)
	}
	for name, c := range map[string]struct{ cfg, want string }{
		"unknown key":  {strings.Replace(good, "mode:", "mdoe:", 1), "mdoe"},
		"bad name":     {strings.Replace(good, "name: db1", "name: ../etc", 1), "name must be"},
		"pid and file": {strings.Replace(good, "pid_file: /run/db1.pid", "pid_file: /run/db1.pid\n    pid: 4", 1), "exactly one of pid"},
		"no to":        {strings.Replace(good, "to: 10.0.0.2:7000", "", 1), "no to address"},
		"bad mode":     {strings.Replace(good, "mode: hybrid", "mode: fast", 1), "mode \"fast\""},
		"twice":        {good + strings.Join(strings.Split(good, "\n")[4:], "\n"), "listed twice"},
		"empty":        {"vms: []", "no vms"},
		"bits":         {strings.Replace(good, "125MB/s", "1Gbit", 1), "bits are not accepted"},
	} {
		_, err := LoadConfig(write(c.cfg))
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrConfig saying %q", name, err, c.want)
		}
	}
}

func TestPIDFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "pid")
	os.WriteFile(p, []byte("4242\n"), 0o600)
	if pid, err := (VM{Name: "x", PidFile: p}).PID(); err != nil || pid != 4242 {
		t.Fatalf("pid %d, %v", pid, err)
	}
	os.WriteFile(p, []byte("nope"), 0o600)
	if _, err := (VM{Name: "x", PidFile: p}).PID(); err == nil {
		t.Fatal("garbage pid file accepted")
	}
}

var errTransient = errors.New("destination busy")

// TestDrainRetriesTransientFailures: a failure Retryable accepts is retried
// until it succeeds; one after resume never is.
func TestDrainRetriesTransientFailures(t *testing.T) {
	var mu sync.Mutex
	calls := map[string]int{}
	migrate := func(ctx context.Context, vm VM, pid int) (*report.Report, error) {
		mu.Lock()
		calls[vm.Name]++
		n := calls[vm.Name]
		mu.Unlock()
		switch {
		case vm.Name == "a" && n < 3:
			return &report.Report{Outcome: report.Aborted}, errTransient
		case vm.Name == "b":
			return &report.Report{Outcome: report.FailedAfterResume}, errTransient
		}
		return &report.Report{Outcome: report.Completed}, nil
	}
	sum, err := Run(context.Background(), testConfig("a", "b"), Options{LockDir: t.TempDir(), Migrate: migrate,
		Retryable: func(err error) bool { return errors.Is(err, errTransient) }})
	if err != nil {
		t.Fatal(err)
	}
	if sum.VMs[0].Status != StatusMoved || calls["a"] != 3 || sum.VMs[1].Status != StatusFailed || calls["b"] != 1 {
		t.Fatalf("summary %+v, calls %v", sum, calls)
	}
}

// FuzzParseConfig: any input is parsed or refused with ErrConfig, and what
// is accepted satisfies the checks the drain relies on.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(`{"vms":[{"name":"x","pid":5,"ram":["/r"],"dest_cmd":["g"],"to":"h:1"}]}`))
	f.Add([]byte("vms:\n  - name: a\n    pid_file: /p\n    ram: [/r]\n    dest_cmd: [g]\n    to: h:1\n    downtime: 5ms\n"))
	f.Add([]byte("vms: [{name: ..}]"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(b)
		if err != nil {
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("error without ErrConfig: %v", err)
			}
			return
		}
		names := map[string]bool{}
		for _, vm := range c.VMs {
			if !validName(vm.Name) || strings.ContainsAny(vm.Name, "/\x00") || names[vm.Name] || vm.To == "" || len(vm.RAM) == 0 {
				t.Fatalf("accepted %+v", vm)
			}
			names[vm.Name] = true
		}
	})
}
