package tests

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dmig/dmig/internal/testguest"
)

// lockedBuffer is a bytes.Buffer safe for a process writing while the test
// reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// serveProc is a 'dmig serve' process.
type serveProc struct {
	addr string
	dir  string // --dir: session directories of arriving guests
	cmd  *exec.Cmd
	log  *lockedBuffer
	done chan struct{}
}

// freeAddr returns a loopback address nothing listens on (just closed).
func freeAddr(t testing.TB) string {
	t.Helper()
	return freeAddrOn(t, "127.0.0.1")
}

// freeAddrOn is freeAddr on host, one of the many loopback addresses.
func freeAddrOn(t testing.TB, host string) string {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// startServe runs 'dmig serve' on a fresh port with extra flags and waits
// until it accepts connections.
func startServe(t testing.TB, extra ...string) *serveProc {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "dmig-ops-dst-")
	if err != nil {
		t.Fatal(err)
	}
	s := &serveProc{addr: freeAddr(t), dir: dir, log: new(lockedBuffer), done: make(chan struct{})}
	args := append([]string{"serve", "--listen", s.addr, "--dir", dir}, extra...)
	s.cmd = exec.Command(dmigBin, args...)
	s.cmd.Stderr = s.log
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			s.cmd.Process.Kill()
			<-s.done
		}
		t.Logf("dmig serve log:\n%s", s.log.String())
		os.RemoveAll(dir)
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", s.addr, time.Second)
		if err == nil {
			c.Close()
			return s
		}
		select {
		case <-s.done:
			t.Fatalf("dmig serve exited at start: %v\n%s", s.cmd.ProcessState, s.log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("dmig serve not listening after 20s: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sessions lists the sessions serve accepted (its "migration accepted"
// log lines), in order.
func (s *serveProc) sessions(t testing.TB) []string {
	t.Helper()
	var ids []string
	for _, l := range strings.Split(s.log.String(), "\n") {
		if !strings.Contains(l, `"migration accepted"`) {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err == nil {
			ids = append(ids, fmt.Sprint(m["session"]))
		}
	}
	return ids
}

// dirs lists what serve holds under --dir: a session directory per guest
// that runs there.
func (s *serveProc) dirs(t testing.TB) []string {
	t.Helper()
	es, err := os.ReadDir(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// jsonLogs parses serve's stderr as hclog JSON lines; it fails the test on
// a line that is not JSON.
func jsonLogs(t testing.TB, out string) []map[string]any {
	t.Helper()
	var lines []map[string]any
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line is not JSON: %q", sc.Text())
		}
		lines = append(lines, m)
	}
	return lines
}

// dmigRun runs the dmig binary and returns its exit status and stderr.
func dmigRun(t testing.TB, ctx context.Context, args ...string) (int, string) {
	t.Helper()
	cmd := exec.CommandContext(ctx, dmigBin, args...)
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, stderr.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), stderr.String()
	}
	t.Fatalf("run dmig %v: %v", args, err)
	return -1, ""
}

// migrateArgs are the flags of 'dmig migrate' for a test guest, its
// destination guest reporting to destStats.
func migrateArgs(g *srcGuest, to, mode, destStats string) []string {
	args := []string{"migrate", "--to", to, "--mode", mode, "--pid", strconv.Itoa(g.pid()), "--ram", g.ram}
	for _, w := range destCommand(destStats) {
		args = append(args, "--dest-cmd="+w)
	}
	return args
}

// killDestGuest kills the guest a destination started, found by the pid in
// its stats file, when the test ends.
func killDestGuest(t testing.TB, stats string) {
	t.Cleanup(func() {
		if st, err := testguest.ReadStats(stats); err == nil && st.PID > 0 {
			syscall.Kill(st.PID, syscall.SIGCONT)
			syscall.Kill(st.PID, syscall.SIGKILL)
		}
	})
}

// waitDestRunning waits until the destination guest reporting to stats has
// resumed, verified its RAM and made progress.
func waitDestRunning(t testing.TB, stats string) testguest.Stats {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var first testguest.Stats
	for {
		st, err := testguest.ReadStats(stats)
		if err == nil && st.State == "failed" {
			t.Fatalf("destination guest failed: %+v", st)
		}
		if err == nil && st.Resumed && first.Resumed && st.Writes > first.Writes {
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
