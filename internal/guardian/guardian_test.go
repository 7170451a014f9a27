package guardian

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/iotest"
	"time"
)

// fakeTarget counts resumes; the first fails of them return an error, and
// block makes each wait for its context instead.
type fakeTarget struct {
	calls atomic.Int32
	fails int32
	block bool
}

func (f *fakeTarget) Resume(ctx context.Context) error {
	n := f.calls.Add(1)
	if f.block {
		<-ctx.Done()
		return ctx.Err()
	}
	if n <= f.fails {
		return errors.New("qmp socket busy")
	}
	return nil
}

func TestWatch(t *testing.T) {
	for _, c := range []struct {
		name    string
		in      string
		fails   int32
		want    Verdict
		resumes int32
	}{
		{"nothing", "", 0, Untouched, 0},
		{"died-paused", "pausing\n", 0, Resumed, 1},
		{"died-after-go", "pausing\ngo\n", 0, LeftPaused, 0},
		{"done-after-pause", "pausing\ndone\n", 0, Untouched, 0},
		{"done-after-go", "pausing\ngo\ndone\n", 0, Untouched, 0},
		{"unknown-ignored", "hello\npausing\n", 0, Resumed, 1},
		{"retried", "pausing\n", 2, Resumed, 3},
		// A message after done is never read: done ends the watch.
		{"done-then-pausing", "done\npausing\n", 0, Untouched, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			ft := &fakeTarget{fails: c.fails}
			v, err := Watch(strings.NewReader(c.in), ft, Options{Retry: time.Millisecond})
			if err != nil || v != c.want {
				t.Fatalf("Watch(%q) = %s, %v; want %s", c.in, v, err, c.want)
			}
			if n := ft.calls.Load(); n != c.resumes {
				t.Fatalf("Watch(%q) resumed %d times, want %d", c.in, n, c.resumes)
			}
		})
	}
}

// TestWatchBounded: a guest that cannot be resumed (a wedged QMP) is given
// up after the bound, each attempt bounded too.
func TestWatchBounded(t *testing.T) {
	for _, block := range []bool{false, true} {
		ft := &fakeTarget{fails: 1 << 30, block: block}
		t0 := time.Now()
		v, err := Watch(strings.NewReader("pausing\n"), ft, Options{Bound: 300 * time.Millisecond, Attempt: 100 * time.Millisecond, Retry: 20 * time.Millisecond})
		el := time.Since(t0)
		if v != Failed || err == nil {
			t.Fatalf("block %v: Watch = %s, %v; want failed", block, v, err)
		}
		if el < 250*time.Millisecond || el > time.Second {
			t.Fatalf("block %v: gave up after %v, want about 300ms", block, el)
		}
		if ft.calls.Load() < 2 {
			t.Fatalf("block %v: %d attempts, want retries", block, ft.calls.Load())
		}
	}
}

// TestWatchGone: a guest that no longer exists is not retried.
func TestWatchGone(t *testing.T) {
	var calls int
	gone := targetFunc(func(context.Context) error { calls++; return fmt.Errorf("pid 1234: %w", ErrGone) })
	t0 := time.Now()
	v, err := Watch(strings.NewReader("pausing\n"), gone, Options{Bound: 5 * time.Second})
	if v != Failed || !errors.Is(err, ErrGone) || calls != 1 || time.Since(t0) > time.Second {
		t.Fatalf("Watch of a gone guest = %s, %v after %d calls, %v; want failed, ErrGone, one call at once", v, err, calls, time.Since(t0))
	}
}

type targetFunc func(context.Context) error

func (f targetFunc) Resume(ctx context.Context) error { return f(ctx) }

// TestWatchReadError: the guardian cannot tell whether Go was sent, so it
// does not resume.
func TestWatchReadError(t *testing.T) {
	ft := &fakeTarget{}
	r := io.MultiReader(strings.NewReader("pausing\n"), iotest.ErrReader(errors.New("EIO")))
	v, err := Watch(r, ft, Options{})
	if v != Untouched || err == nil || ft.calls.Load() != 0 {
		t.Fatalf("Watch on a failing reader = %s, %v after %d resumes; want untouched, an error, none", v, err, ft.calls.Load())
	}
}

// The test binary re-executed as a guardian: its target writes a file.
const envHelper = "GUARDIAN_TEST_HELPER"

func TestMain(m *testing.M) {
	if path := os.Getenv(envHelper); path != "" {
		v, err := Serve(os.Stdin, os.Stdout, fileTarget(path), Options{Retry: time.Millisecond})
		if err != nil {
			os.Exit(1)
		}
		if v == Failed {
			os.Exit(2)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

type fileTarget string

func (f fileTarget) Resume(context.Context) error {
	return os.WriteFile(string(f), []byte("resumed"), 0o600)
}

func startHelper(t *testing.T, running func(context.Context) (bool, error)) (*Client, string) {
	t.Helper()
	mark := filepath.Join(t.TempDir(), "resumed")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envHelper+"="+mark)
	cmd.Stderr = os.Stderr
	c, err := Start(context.Background(), cmd, running, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c, mark
}

func resumed(mark string) bool {
	_, err := os.Stat(mark)
	return err == nil
}

// TestClient runs the protocol between processes: the guardian is in a
// session of its own and acts on the end of its input as documented.
func TestClient(t *testing.T) {
	ctx := context.Background()
	t.Run("released-paused", func(t *testing.T) {
		c, mark := startHelper(t, nil)
		if sid := session(t, c.Pid()); sid != c.Pid() {
			t.Fatalf("guardian pid %d is in session %d, want its own", c.Pid(), sid)
		}
		if err := c.Pausing(ctx); err != nil {
			t.Fatal(err)
		}
		v, err := c.Release(ctx)
		if err != nil || v != Resumed || !resumed(mark) {
			t.Fatalf("Release after Pausing = %s, %v (resumed %v); want resumed", v, err, resumed(mark))
		}
	})
	t.Run("released-after-go", func(t *testing.T) {
		c, mark := startHelper(t, nil)
		if err := c.Pausing(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.Going(ctx); err != nil {
			t.Fatal(err)
		}
		v, err := c.Release(ctx)
		if err != nil || v != LeftPaused || resumed(mark) {
			t.Fatalf("Release after Going = %s, %v (resumed %v); want left-paused", v, err, resumed(mark))
		}
	})
	t.Run("done", func(t *testing.T) {
		c, mark := startHelper(t, nil)
		if err := c.Pausing(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.Done(); err != nil || resumed(mark) {
			t.Fatalf("Done = %v (resumed %v); want nil, not resumed", err, resumed(mark))
		}
		if err := c.Going(ctx); err == nil {
			t.Fatal("Going after Done succeeded")
		}
	})
	t.Run("already-stopped", func(t *testing.T) {
		c, mark := startHelper(t, func(context.Context) (bool, error) { return false, nil })
		if err := c.Pausing(ctx); err != nil {
			t.Fatal(err)
		}
		v, err := c.Release(ctx)
		if err != nil || v != Untouched || resumed(mark) {
			t.Fatalf("Release of a guest stopped before the migration = %s, %v (resumed %v); want untouched", v, err, resumed(mark))
		}
	})
	t.Run("guardian-dead", func(t *testing.T) {
		c, _ := startHelper(t, nil)
		c.cmd.Process.Kill()
		c.cmd.Wait()
		// The engine then aborts instead of pausing or sending Go.
		if err := c.Pausing(ctx); !errors.Is(err, syscall.EPIPE) {
			t.Fatalf("Pausing with a dead guardian = %v, want EPIPE", err)
		}
	})
}

// session is the session id of pid (/proc/PID/stat field 6).
func session(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	sid, err := strconv.Atoi(f[3])
	if err != nil {
		t.Fatal(err)
	}
	return sid
}
