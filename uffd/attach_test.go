package uffd

import (
	"encoding/binary"
	"errors"
	"maps"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dmig/dmig/internal/ramfile"
)

const destFeatures = FeatureMissingShmem | FeatureThreadID

// checkBound proves u is bound to the child's memory: a page punched out of
// the RAM file faults in the child and is served with our bytes.
func checkBound(t *testing.T, c *child, u *FD) {
	t.Helper()
	const p = 3
	if err := ramfile.PunchHole(c.ram, p*PageSize, PageSize); err != nil {
		t.Fatal(err)
	}
	r := Range{Start: c.page(p), Len: PageSize}
	if _, err := u.Register(r, ModeMissing); err != nil {
		t.Fatal(err)
	}
	defer u.Unregister(r)
	want := make([]byte, PageSize)
	pattern(p, 77, want)
	stop := serveWith(t, u, func(m Msg) error {
		_, _, err := u.CopyRange(m.Addr&^(PageSize-1), want, 0)
		return err
	})
	defer stop()
	got := c.do("read %d", p)
	if exp := "ok " + hex32(crcOf(want)); got != exp {
		t.Fatalf("child read %q, want %q", got, exp)
	}
}

func TestAttach(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spin  bool
		setup func(c *child)
		check func(t *testing.T, c *child)
	}{
		{
			// The main thread is in a tight user-space loop.
			name: "running",
			spin: true,
			check: func(t *testing.T, c *child) {
				last := c.mem[len(c.mem)-PageSize:]
				a := binary.LittleEndian.Uint64(last)
				time.Sleep(20 * time.Millisecond)
				if b := binary.LittleEndian.Uint64(last); b == a {
					t.Fatalf("spinning child stopped making progress after attach (counter %d)", a)
				}
				binary.LittleEndian.PutUint64(last[8:], 1) // let it leave the loop
			},
		},
		{
			// The main thread is blocked in read(0).
			name: "blocked",
			setup: func(c *child) {
				c.do("ping")
				waitState(c.t, c, "S")
			},
		},
		{
			// The whole process is stopped by SIGSTOP and must stay stopped.
			name: "stopped",
			setup: func(c *child) {
				c.do("ping")
				c.cmd.Process.Signal(syscall.SIGSTOP)
				waitState(c.t, c, "T")
			},
			check: func(t *testing.T, c *child) {
				time.Sleep(20 * time.Millisecond)
				if s := c.state(); s != "T" {
					t.Fatalf("stopped child is in state %q after attach, want T", s)
				}
				c.cmd.Process.Signal(syscall.SIGCONT)
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startChild(t, childOpts{spin: tc.spin})
			if tc.setup != nil {
				tc.setup(c)
			}
			before := c.fds()
			u, err := Attach(c.pid(), destFeatures)
			if err != nil {
				t.Fatalf("attach: %v", err)
			}
			defer u.Close()
			if after := c.fds(); !maps.Equal(before, after) {
				t.Errorf("child fds changed by attach:\nbefore %v\nafter  %v", before, after)
			}
			if tc.check != nil {
				tc.check(t, c)
			}
			if got := c.do("ping"); got != "pong eintr=0" {
				t.Errorf("child answered %q after attach, want no EINTR", got)
			}
			checkBound(t, c, u)
		})
	}
}

func waitState(t testing.TB, c *child, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for c.state() != want {
		if time.Now().After(deadline) {
			t.Fatalf("child in state %q, want %q", c.state(), want)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestAttachErrors(t *testing.T) {
	t.Run("dead pid", func(t *testing.T) {
		c := startChild(t, childOpts{})
		pid := c.pid()
		c.stop()
		_, err := Attach(pid, destFeatures)
		if !errors.Is(err, ErrNoProcess) {
			t.Fatalf("attach to reaped pid %d: %v, want ErrNoProcess", pid, err)
		}
		if _, err := Attach(-1, destFeatures); !errors.Is(err, ErrNoProcess) {
			t.Fatalf("attach to pid -1: %v", err)
		}
	})
	t.Run("already traced", func(t *testing.T) {
		c := startChild(t, childOpts{})
		c.do("ping")
		// Another tracer (a second dmig mid-attach, or a debugger) holds it.
		held := make(chan error)
		release := make(chan struct{})
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			err := unix.PtraceSeize(c.pid())
			held <- err
			<-release
			if err == nil {
				unix.PtraceDetach(c.pid())
			}
		}()
		if err := <-held; err != nil {
			t.Fatal(err)
		}
		_, err := Attach(c.pid(), destFeatures)
		close(release)
		if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "already traced") {
			t.Fatalf("attach to a traced process: %v, want ErrBusy naming the tracer", err)
		}
		if got := c.do("ping"); got != "pong eintr=0" {
			t.Errorf("child answered %q", got)
		}
	})
	t.Run("twice", func(t *testing.T) {
		// Two attaches succeed, but the second cannot take the range the
		// first registered: that is how a second migration of the same VM
		// is refused.
		c := startChild(t, childOpts{})
		u1, err := Attach(c.pid(), destFeatures)
		if err != nil {
			t.Fatal(err)
		}
		defer u1.Close()
		u2, err := Attach(c.pid(), destFeatures)
		if err != nil {
			t.Fatal(err)
		}
		defer u2.Close()
		r := Range{Start: c.addr, Len: 8 * PageSize}
		if _, err := u1.Register(r, ModeMissing); err != nil {
			t.Fatal(err)
		}
		_, err = u2.Register(r, ModeMissing)
		if !errors.Is(err, ErrBusy) || !errors.Is(err, unix.EBUSY) || !strings.Contains(err.Error(), "another dmig") {
			t.Fatalf("second register: %v, want ErrBusy saying what to do", err)
		}
	})
	t.Run("EPERM", func(t *testing.T) {
		// A target that may not create a kernel-fault uffd: uid 65534 with
		// vm.unprivileged_userfaultfd=0.
		const sysctl = "/proc/sys/vm/unprivileged_userfaultfd"
		old, err := os.ReadFile(sysctl)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(sysctl, []byte("0"), 0); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.WriteFile(sysctl, old, 0) })
		c := startChild(t, childOpts{uid: 65534})
		c.do("ping")
		before := c.fds()
		_, err = Attach(c.pid(), destFeatures)
		if !errors.Is(err, ErrPermission) || !errors.Is(err, unix.EPERM) || !strings.Contains(err.Error(), "vm.unprivileged_userfaultfd") {
			t.Fatalf("attach to uid 65534: %v, want ErrPermission naming the sysctl", err)
		}
		if after := c.fds(); !maps.Equal(before, after) {
			t.Errorf("child fds changed by a failed attach: %v -> %v", before, after)
		}
		if got := c.do("ping"); got != "pong eintr=0" {
			t.Errorf("child answered %q after failed attach", got)
		}
	})
	t.Run("exits mid-attach", func(t *testing.T) {
		// Children that exit at random points during the attach: the
		// error must say the process went away, never anything else, and
		// nothing may hang.
		seen := map[string]int{}
		for i := range 40 {
			c := startChild(t, childOpts{})
			go func() {
				time.Sleep(time.Duration(i*23%400) * time.Microsecond)
				c.cmd.Process.Kill()
			}()
			u, err := Attach(c.pid(), destFeatures)
			switch {
			case err == nil:
				seen["ok"]++
				u.Close()
			case errors.Is(err, ErrProcessExited):
				seen["exited"]++
			case errors.Is(err, ErrNoProcess):
				seen["gone"]++
			default:
				t.Errorf("attach racing exit: unexpected error %v", err)
			}
			c.stop()
		}
		t.Logf("outcomes of attach racing exit: %v", seen)
	})
}

func hex32(v uint32) string {
	const digits = "0123456789abcdef"
	b := make([]byte, 8)
	for i := 7; i >= 0; i-- {
		b[i] = digits[v&0xf]
		v >>= 4
	}
	return string(b)
}
