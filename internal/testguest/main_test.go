package testguest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// envChild carries a JSON Config: the test binary re-executed with it runs
// Start as a guest process, as `dmig testguest run` does, without needing
// the dmig binary.
const envChild = "TESTGUEST_CHILD_CONFIG"

func TestMain(m *testing.M) {
	if js, ok := os.LookupEnv(envChild); ok {
		os.Exit(childMain(js))
	}
	os.Exit(m.Run())
}

func childMain(js string) int {
	var c Config
	if err := json.Unmarshal([]byte(js), &c); err != nil {
		fmt.Fprintln(os.Stderr, "child config:", err)
		return 1
	}
	c.Run.Logger = hclog.New(&hclog.LoggerOptions{Output: os.Stderr, Level: hclog.Info})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := Start(ctx, c); err != nil {
		fmt.Fprintln(os.Stderr, "guest:", err)
		var me *MismatchError
		if errors.As(err, &me) {
			return me.ExitCode()
		}
		return 1
	}
	return 0
}

// child is a guest process started from the test binary.
type child struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan error
}

func startChild(t testing.TB, c Config, env ...string) *child {
	t.Helper()
	js, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"="+string(js))
	cmd.Env = append(cmd.Env, env...)
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ch := &child{cmd: cmd, stderr: stderr, done: make(chan error, 1)}
	go func() { ch.done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-ch.done
	})
	return ch
}

// syncBuffer collects the child's stderr while the test may read it.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func (c *child) signal(t *testing.T, s syscall.Signal) {
	t.Helper()
	if err := c.cmd.Process.Signal(s); err != nil {
		t.Fatalf("signal %v to guest: %v", s, err)
	}
}

func (c *child) stop(t *testing.T) {
	t.Helper()
	c.signal(t, syscall.SIGSTOP)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := WaitStopped(ctx, c.pid()); err != nil {
		t.Fatal(err)
	}
}

// wait returns the guest's exit status once it exits.
func (c *child) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case err := <-c.done:
		c.done <- err
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(timeout):
		t.Fatalf("guest did not exit within %v; stderr:\n%s", timeout, c.stderr)
		return -1
	}
}

// shmDir is a directory on tmpfs, like the /dev/shm RAM files of real use:
// the data file lives there too, so the page cache never waits on a disk.
func shmDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("/dev/shm", "testguest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func waitStats(t *testing.T, path string, timeout time.Duration, ok func(Stats) bool) Stats {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last Stats
	for time.Now().Before(deadline) {
		if s, err := ReadStats(path); err == nil {
			last = s
			if ok(s) {
				return s
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("stats %s did not reach the expected state within %v; last %+v", path, timeout, last)
	return last
}

func smallDBParams(dir string) Params {
	return Params{
		Size: 64 << 20, Seed: 7, Fill: 0.3, WriteRate: 100000, Hot: 0.1, HotShare: 0.9, ReadShare: 0.3,
		DB: DBParams{
			File: filepath.Join(dir, "data.db"), Pages: 2048, Frames: 1024,
			ReadRate: 20000, ModifyRate: 10000, FlushRate: 5000,
		},
	}
}
