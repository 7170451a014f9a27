package tests

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/dmig/dmig/dbrestore"
	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/internal/testguest"
	"github.com/dmig/dmig/precopy"
	"github.com/dmig/dmig/vmm/proc"
	"github.com/dmig/dmig/wire"
)

// dmigBin is the dmig binary the tests run guests with, built by TestMain.
var dmigBin string

func TestMain(m *testing.M) {
	if tcpHelper() || echoHelper() {
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "dmig-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	dmigBin = filepath.Join(dir, "dmig")
	// Every dmig the tests start lists its migrations here, not in the
	// host's /run/dmig/ctl: a killed one's stale socket stays with the
	// run, and dmig status on the host shows no test.
	os.Setenv("DMIG_CTL_DIR", filepath.Join(dir, "ctl"))
	build := exec.Command("go", "build", "-o", dmigBin, "github.com/dmig/dmig/cmd/dmig")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build dmig:", err)
		os.Exit(1)
	}
	// The engines the tests run in this process get the Go processors
	// dmig's engine commands take (cmd/dmig's moreProcs), so that what
	// the benchmarks measure is what the tool does.
	if os.Getenv("GOMAXPROCS") == "" && runtime.GOMAXPROCS(0) < 6 {
		runtime.GOMAXPROCS(6)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// srcGuest is a test guest running on the "source".
type srcGuest struct {
	t     testing.TB
	cmd   *exec.Cmd
	ram   string
	stats string
	dir   string
	exit  chan struct{} // closed when the guest process exited
}

type guestOpts struct {
	size      int64
	writeRate int64
	hot       float64
	fill      float64
	readShare float64
	db        *testguest.DBParams
	layout    string // --layout-listen address
	// shm, if set, is the directory of the RAM file (the caller's, which
	// removes it); by default a new one under /dev/shm.
	shm string
	// stderr, if set, receives the guest's output instead of the test log.
	stderr io.Writer
}

func startSource(t testing.TB, o guestOpts) *srcGuest {
	t.Helper()
	dir := t.TempDir()
	shm := o.shm
	if shm == "" {
		var err error
		if shm, err = os.MkdirTemp("/dev/shm", "dmig-e2e-"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(shm) })
	}
	p := testguest.DefaultParams()
	p.Size = o.size
	p.WriteRate = o.writeRate
	p.Fill = 0.5
	if o.fill > 0 {
		p.Fill = o.fill
	}
	if o.hot > 0 {
		p.Hot = o.hot
	}
	if o.readShare > 0 {
		p.ReadShare = o.readShare
	}
	if o.db != nil {
		p.DB = *o.db
	}
	g := &srcGuest{t: t, ram: filepath.Join(shm, "ram0"), stats: filepath.Join(dir, "src.stats"), dir: shm, exit: make(chan struct{})}
	cfg := testguest.Config{RAM: []string{g.ram}, Params: p, Run: testguest.RunOptions{StatsFile: g.stats, StatsEvery: 100 * time.Millisecond, LayoutListen: o.layout}}
	g.cmd = testguest.Command(context.Background(), dmigBin, cfg)
	var errBuf lockedBuffer
	out := o.stderr
	if out == nil {
		out = prefixWriter(t, "src-guest: ")
	}
	g.cmd.Stderr = io.MultiWriter(&errBuf, out)
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Never wait(2) on a guest dmig may attach to: see proc.Exited.
	exited, err := proc.Exited(g.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	go func() { <-exited; g.cmd.Wait(); close(g.exit) }()
	t.Cleanup(func() {
		g.cmd.Process.Signal(syscall.SIGCONT)
		g.cmd.Process.Kill()
		<-g.exit
	})
	// Running once its stats show writes: filling its RAM (and writing a
	// database guest's data file) takes about 5 s a GiB on loaded cores.
	wait := 60*time.Second + time.Duration(o.size>>30)*10*time.Second
	deadline := time.Now().Add(wait)
	for {
		st, err := testguest.ReadStats(g.stats)
		if err == nil && st.Writes > 0 {
			break
		}
		select {
		case <-g.exit:
			t.Fatalf("source guest exited at start: %v\n%s", g.cmd.ProcessState, errBuf.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("source guest not running after %v: %v", wait, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return g
}

func (g *srcGuest) pid() int { return g.cmd.Process.Pid }

// running reports whether the source guest still runs and makes progress.
func (g *srcGuest) progressing(t testing.TB) bool {
	t.Helper()
	a, err := testguest.ReadStats(g.stats)
	if err != nil {
		t.Fatalf("read source stats: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		time.Sleep(150 * time.Millisecond)
		b, err := testguest.ReadStats(g.stats)
		if err == nil && b.Writes > a.Writes {
			return true
		}
	}
	return false
}

// prefixWriter logs each write through t.Log: guest output shows with the
// test that produced it.
func prefixWriter(t testing.TB, prefix string) io.Writer {
	return writerFunc(func(p []byte) (int, error) {
		t.Logf("%s%s", prefix, bytes.TrimRight(p, "\n"))
		return len(p), nil
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// testTarget wraps the destination's process guest to observe it: it keeps
// the target, and can snapshot the RAM file just before the guest resumes.
type testTarget struct {
	*proc.Target
	snapshotAt   string // copy the RAM here right before resume, if set
	beforeResume func() // run right before the guest is resumed, if set
	resumed      chan struct{}
}

func (tt *testTarget) Resume(ctx context.Context) error {
	if tt.snapshotAt != "" {
		if err := copyFile(tt.Paths()[0], tt.snapshotAt); err != nil {
			return err
		}
	}
	if tt.beforeResume != nil {
		tt.beforeResume()
	}
	err := tt.Target.Resume(ctx)
	close(tt.resumed)
	return err
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o600)
}

// dest is an in-process destination (dbrestore.Serve, once).
type dest struct {
	addr    string
	targets chan *testTarget
	result  chan error
	cancel  context.CancelFunc
	// beforeResume, if set before the migration starts, runs right before
	// the destination guest is resumed.
	beforeResume func()

	mu  sync.Mutex
	all []*testTarget // every guest created, killed at cleanup
}

type destOpts struct {
	snapshot       string        // see testTarget
	recoverTimeout time.Duration // dbrestore.Config.RecoverTimeout
}

func startDest(t testing.TB, o destOpts) *dest {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l, err := wire.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &dest{addr: l.Addr().String(), targets: make(chan *testTarget, 1), result: make(chan error, 1), cancel: cancel}
	shm, err := os.MkdirTemp("/dev/shm", "dmig-e2e-dst-")
	if err != nil {
		t.Fatal(err)
	}
	cfg := dbrestore.Config{
		Logger:         testLogger(t, "dest"),
		RecoverTimeout: o.recoverTimeout,
		NewGuest: func(h *wire.Hello) (dbrestore.Guest, error) {
			pt, err := proc.NewTarget(shm, h.Command)
			if err != nil {
				return nil, err
			}
			tt := &testTarget{Target: pt, snapshotAt: o.snapshot, beforeResume: d.beforeResume, resumed: make(chan struct{})}
			d.mu.Lock()
			d.all = append(d.all, tt)
			d.mu.Unlock()
			d.targets <- tt
			return tt, nil
		},
	}
	go func() {
		d.result <- dbrestore.Serve(ctx, l, cfg, true, nil)
		l.Close()
	}()
	t.Cleanup(func() {
		cancel()
		d.mu.Lock()
		defer d.mu.Unlock()
		for _, tt := range d.all {
			tt.Kill()
		}
		os.RemoveAll(shm)
	})
	return d
}

// resumedTarget waits (60 s each) for the destination's guest to be
// created and then resumed, and returns it.
func (d *dest) resumedTarget(t testing.TB) *testTarget {
	t.Helper()
	var tt *testTarget
	select {
	case tt = <-d.targets:
		d.targets <- tt
	case <-time.After(60 * time.Second):
		t.Fatal("no migration reached the destination")
	}
	select {
	case <-tt.resumed:
	case <-time.After(60 * time.Second):
		t.Fatal("destination never resumed")
	}
	return tt
}

// testLogger logs an engine's debug log through t.Log, or appends it to
// the file DMIG_TEST_LOG names: a benchmark's b.Log keeps only the start
// of a long run's log.
func testLogger(t testing.TB, name string) hclog.Logger {
	var out io.Writer = prefixWriter(t, "")
	if path := os.Getenv("DMIG_TEST_LOG"); path != "" {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			t.Fatalf("DMIG_TEST_LOG: %v", err)
		}
		t.Cleanup(func() { f.Close() })
		out = f
	}
	return hclog.New(&hclog.LoggerOptions{Name: name, Level: hclog.Debug, Output: out})
}

// destCommand is the command the destination starts the test guest with.
func destCommand(statsFile string) []string {
	return []string{dmigBin, "testguest", "run", "--stats", statsFile, "--stats-every", "100ms"}
}

func migrate(t testing.TB, g *srcGuest, to string, mode precopy.Mode, destStats string) (*report.Report, error) {
	t.Helper()
	return migrateWith(t, g, precopy.Config{To: to, Mode: mode}, destStats)
}

// migrateWith is migrate with a whole source configuration (its Logger is
// set here).
func migrateWith(t testing.TB, g *srcGuest, cfg precopy.Config, destStats string) (*report.Report, error) {
	t.Helper()
	src, err := proc.NewSource(g.pid(), []string{g.ram}, destCommand(destStats))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cfg.Logger = testLogger(t, "source")
	return precopy.Run(ctx, cfg, src)
}

// waitGuestHealthy checks that the destination guest verified its RAM on
// resume and keeps running its workload.
func waitGuestHealthy(t testing.TB, tt *testTarget, stats string) testguest.Stats {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var first testguest.Stats
	for {
		select {
		case <-tt.Exited():
			log, _ := os.ReadFile(tt.Paths()[0] + ".log")
			t.Fatalf("destination guest exited with %d:\n%s", tt.ExitCode(), log)
		default:
		}
		st, err := testguest.ReadStats(stats)
		if err == nil && st.Resumed && st.Writes > first.Writes && first.Resumed {
			return st
		}
		if err == nil && st.Resumed && !first.Resumed {
			first = st
		}
		if time.Now().After(deadline) {
			t.Fatalf("destination guest not verified and running after 60s (stats %+v, err %v)", st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
