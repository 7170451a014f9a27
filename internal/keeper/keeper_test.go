package keeper

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmig/dmig/wire"
)

// guest starts a stand-in guest process (sleep) and a session directory
// journaled in state st; the process is killed at cleanup.
func guest(t *testing.T, root string, st State) (*exec.Cmd, string, *Journal) {
	t.Helper()
	cmd := exec.Command("sleep", "300")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait() }() // reap: the keeper sees the exit
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	start, err := StartTime(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	id := wire.NewSessionID()
	dir := filepath.Join(root, id.String())
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ram0"), []byte("ram"), 0o600); err != nil {
		t.Fatal(err)
	}
	j := &Journal{Session: id, Guest: "g", State: st, Pid: cmd.Process.Pid, PidStart: start, UffdFD: -1, Paths: []string{filepath.Join(dir, "ram0")}}
	if err := j.Write(dir); err != nil {
		t.Fatal(err)
	}
	return cmd, dir, j
}

// keep runs a keeper for dir in the background; closing the returned
// writer is serve's death.
func keep(t *testing.T, dir string, j *Journal, timeout time.Duration) (io.WriteCloser, <-chan error) {
	t.Helper()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		done <- Run(ctx, Config{Dir: dir, Pid: j.Pid, PidStart: j.PidStart, RecoverTimeout: timeout, Serve: pr, Tick: 10 * time.Millisecond})
	}()
	return pw, done
}

// gone reports whether pid has exited. A zombie has: the keeper kills
// guests that are not its children and cannot reap them, and the test's
// reaper may not have run yet when the keeper returns.
func gone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z' || s[i+2] == 'X'
}

func waitDone(t *testing.T, done <-chan error, within time.Duration) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("keeper: %v", err)
		}
	case <-time.After(within):
		t.Fatalf("keeper still running after %v", within)
	}
}

func TestKeeperKillsUnresumedGuest(t *testing.T) {
	cmd, dir, j := guest(t, t.TempDir(), Starting)
	serve, done := keep(t, dir, j, time.Hour)
	killedWithServe(t, cmd, dir, serve, done)
}

// killedWithServe checks that the guest cmd of a session that never
// resumed lives while serve runs, and that once serve is gone its keeper
// (done) kills it and removes the session directory.
func killedWithServe(t *testing.T, cmd *exec.Cmd, dir string, serve io.Closer, done <-chan error) {
	t.Helper()
	time.Sleep(50 * time.Millisecond)
	if gone(cmd.Process.Pid) {
		t.Fatal("guest killed while serve runs")
	}
	serve.Close()
	waitDone(t, done, 5*time.Second)
	if !gone(cmd.Process.Pid) {
		t.Fatal("guest that never resumed outlived its serve")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("session directory left: %v", err)
	}
}

// A keeper started before its guest (Pid 0) removes the RAM files of a
// serve that died before it started the guest, and keeps a guest it was
// told of like one it was started with.
func TestKeeperBeforeTheGuest(t *testing.T) {
	t.Run("serve-dies-first", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), wire.NewSessionID().String())
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "ram0"), []byte("ram"), 0o600); err != nil {
			t.Fatal(err)
		}
		serve, done := keep(t, dir, &Journal{}, time.Hour)
		time.Sleep(50 * time.Millisecond)
		if _, err := os.Stat(filepath.Join(dir, "ram0")); err != nil {
			t.Fatalf("RAM file removed while serve runs: %v", err)
		}
		serve.Close()
		waitDone(t, done, 5*time.Second)
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Fatalf("session directory of a guest never started left: %v", err)
		}
	})
	t.Run("told-the-guest", func(t *testing.T) {
		cmd, dir, j := guest(t, t.TempDir(), Starting)
		serve, done := keep(t, dir, &Journal{}, time.Hour)
		if err := TellGuest(serve, j.Pid, j.PidStart); err != nil {
			t.Fatal(err)
		}
		killedWithServe(t, cmd, dir, serve, done)
	})
}

func TestKeeperWaitsForAdoption(t *testing.T) {
	for _, st := range []State{Ready, Resumed} {
		t.Run(string(st), func(t *testing.T) { testKeeperWaitsForAdoption(t, st) })
	}
}

func testKeeperWaitsForAdoption(t *testing.T, st State) {
	const timeout = 300 * time.Millisecond
	cmd, dir, j := guest(t, t.TempDir(), st)
	serve, done := keep(t, dir, j, timeout)
	// A restarted serve holds the session for longer than the timeout:
	// the keeper must not kill.
	lock, err := Lock(dir)
	if err != nil {
		t.Fatal(err)
	}
	serve.Close()
	time.Sleep(2 * timeout)
	if gone(cmd.Process.Pid) {
		t.Fatal("keeper killed a guest another serve had adopted")
	}
	// That serve dies too: the keeper waits the timeout again for a third
	// to take over, counted from when the second was last seen.
	lock.Close()
	time.Sleep(timeout / 3)
	if gone(cmd.Process.Pid) {
		t.Fatal("keeper killed the guest at once when the serve that had adopted it died")
	}
	waitDone(t, done, 5*time.Second)
	if !gone(cmd.Process.Pid) {
		t.Fatal("post-copy guest left waiting forever after the recover timeout")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("session directory left: %v", err)
	}
}

// What serve tells the keeper counts when the journal lags it (it could
// not be written): a guest serve said was complete is left to run, and one
// it said had every page placed is released and journaled completed.
func TestKeeperTrustsToldState(t *testing.T) {
	for _, st := range []State{Placed, Completed} {
		t.Run(string(st), func(t *testing.T) {
			cmd, dir, j := guest(t, t.TempDir(), Resumed)
			serve, done := keep(t, dir, j, 50*time.Millisecond)
			if err := Tell(serve, st); err != nil {
				t.Fatal(err)
			}
			serve.Close()
			time.Sleep(300 * time.Millisecond)
			if gone(cmd.Process.Pid) {
				t.Fatalf("keeper killed a guest serve told it was %s", st)
			}
			if st == Placed {
				if now, err := ReadJournal(dir); err != nil || now.State != Completed {
					t.Fatalf("journal after the keeper finished a placed session: %+v, %v; want completed", now, err)
				}
			}
			cmd.Process.Kill()
			waitDone(t, done, 5*time.Second)
		})
	}
}

func TestKeeperReapsCompletedGuest(t *testing.T) {
	cmd, dir, j := guest(t, t.TempDir(), Completed)
	serve, done := keep(t, dir, j, 10*time.Millisecond)
	serve.Close()
	time.Sleep(200 * time.Millisecond)
	if gone(cmd.Process.Pid) {
		t.Fatal("keeper killed a completed guest")
	}
	if _, err := os.Stat(filepath.Join(dir, "ram0")); err != nil {
		t.Fatalf("completed guest's RAM removed while it runs: %v", err)
	}
	cmd.Process.Kill()
	waitDone(t, done, 5*time.Second)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("RAM of an exited guest left: %v", err)
	}
}

func TestReclaim(t *testing.T) {
	root := t.TempDir()
	_, deadDir, _ := guest(t, root, Resumed)
	dead, _ := ReadJournal(deadDir)
	// A dead guest (pid start time no longer matches).
	dead.PidStart++
	if err := dead.Write(deadDir); err != nil {
		t.Fatal(err)
	}
	starting, startingDir, _ := guest(t, root, Starting)
	completed, completedDir, _ := guest(t, root, Completed)
	resumed, resumedDir, _ := guest(t, root, Resumed)
	ready, readyDir, _ := guest(t, root, Ready)
	held, heldDir, _ := guest(t, root, Starting)
	lock, err := Lock(heldDir)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	noJournal := filepath.Join(root, wire.NewSessionID().String())
	if err := os.Mkdir(noJournal, 0o700); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(root, "not-a-session")
	if err := os.Mkdir(other, 0o700); err != nil {
		t.Fatal(err)
	}

	found, err := Reclaim(root, nil)
	if err != nil {
		t.Fatal(err)
	}
	orphans := found.Orphans
	want := map[string]int{resumedDir: resumed.Process.Pid, readyDir: ready.Process.Pid}
	if len(orphans) != len(want) {
		t.Fatalf("orphans %+v, want %v", orphans, want)
	}
	if len(found.Completed) != 1 || found.Completed[0].Pid != completed.Process.Pid || found.Completed[0].State != Completed {
		t.Fatalf("completed %+v, want the journal of pid %d", found.Completed, completed.Process.Pid)
	}
	for _, o := range orphans {
		if want[o.Dir] != o.Journal.Pid {
			t.Fatalf("orphan %s pid %d, want %v", o.Dir, o.Journal.Pid, want)
		}
		o.Lock.Close()
	}
	for _, c := range []struct {
		dir   string
		exist bool
	}{{deadDir, false}, {startingDir, false}, {completedDir, true}, {resumedDir, true}, {readyDir, true}, {heldDir, true}, {noJournal, false}, {other, true}} {
		_, err := os.Stat(c.dir)
		if exists := err == nil; exists != c.exist {
			t.Errorf("%s exists %v, want %v", filepath.Base(c.dir), exists, c.exist)
		}
	}
	time.Sleep(50 * time.Millisecond)
	if !gone(starting.Process.Pid) {
		t.Error("guest that never resumed was not killed")
	}
	for _, c := range []*exec.Cmd{completed, resumed, ready, held} {
		if gone(c.Process.Pid) {
			t.Errorf("pid %d killed, want it left running", c.Process.Pid)
		}
	}
}
