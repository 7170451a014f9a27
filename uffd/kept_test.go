package uffd

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dmig/dmig/internal/ramfile"
)

// TestKeptSurvivesClose is TestCloseWhileWaiting with AttachKept: the child
// holds its own copy of the uffd, so closing the controller's copy (what a
// killed dmig does) leaves its fault blocked instead of zero-filled, and a
// new controller takes over with Reacquire and places the real page.
func TestKeptSurvivesClose(t *testing.T) {
	c := startChild(t, childOpts{pages: 8})
	u, err := AttachKept(c.pid(), destFeatures)
	if err != nil {
		t.Fatal(err)
	}
	target := u.TargetFD()
	if target < 0 {
		t.Fatalf("AttachKept left no copy in the target (TargetFD %d)", target)
	}
	if link := c.fds()[fmt.Sprint(target)]; link != "anon_inode:[userfaultfd]" {
		t.Fatalf("target fd %d is %q, want the uffd", target, link)
	}
	src := make([]byte, PageSize)
	pattern(2, 3, src)
	copy(c.mem[2*PageSize:], src)
	if err := ramfile.PunchHole(c.ram, 2*PageSize, PageSize); err != nil {
		t.Fatal(err)
	}
	if _, err := u.Register(Range{Start: c.page(2), Len: PageSize}, ModeMissing); err != nil {
		t.Fatal(err)
	}
	reply := make(chan string, 1)
	go func() {
		fmt.Fprintf(c.in, "read 2\n")
		s, _ := c.out.ReadString('\n')
		reply <- strings.TrimSpace(s)
	}()
	fds := []unix.PollFd{{Fd: int32(u.fd), Events: unix.POLLIN}}
	if n, err := unix.Poll(fds, 10000); err != nil || n != 1 {
		t.Fatalf("no fault arrived: %d %v", n, err)
	}
	// The controller reads the fault and dies before resolving it.
	if _, err := u.ReadMsgs(make([]Msg, 4)); err != nil {
		t.Fatal(err)
	}
	if err := u.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-reply:
		t.Fatalf("child answered %q after the controller's uffd closed: it ran on a page nobody placed", s)
	case <-time.After(200 * time.Millisecond):
	}
	u2, err := Reacquire(c.pid(), target, destFeatures)
	if err != nil {
		t.Fatal(err)
	}
	defer u2.Close()
	if _, err := u2.Copy(c.page(2), src, 0); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-reply:
		if want := "ok " + hex32(crcOf(src)); s != want {
			t.Fatalf("child read %q, want the placed page %q", s, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("child still blocked 5s after its page was placed")
	}
	if err := CloseInTarget(c.pid(), target); err != nil {
		t.Fatal(err)
	}
	if link, ok := c.fds()[fmt.Sprint(target)]; ok {
		t.Fatalf("target still holds fd %d (%s) after CloseInTarget", target, link)
	}
	if _, err := Reacquire(c.pid(), target, destFeatures); err == nil {
		t.Fatal("Reacquire of a closed target fd succeeded")
	}
}

// TestReacquireNotUffd: a recycled fd number is not taken for a uffd.
func TestReacquireNotUffd(t *testing.T) {
	c := startChild(t, childOpts{pages: 1})
	for fd, link := range c.fds() {
		if strings.HasPrefix(link, "anon_inode:[userfaultfd]") {
			continue
		}
		var n int
		fmt.Sscan(fd, &n)
		if _, err := Reacquire(c.pid(), n, destFeatures); err == nil || !strings.Contains(err.Error(), "not a userfaultfd") {
			t.Fatalf("Reacquire of fd %d (%s): %v, want not a userfaultfd", n, link, err)
		}
		return
	}
	t.Fatal("child has no fd")
}

// TestClearParentDeathSignal: a child started with a parent-death signal
// has none once cleared (its /proc status is not read here: the prctl's
// return value and the child's survival are).
func TestClearParentDeathSignal(t *testing.T) {
	c := startChild(t, childOpts{pages: 1})
	if err := ClearParentDeathSignal(c.pid()); err != nil {
		t.Fatal(err)
	}
	if s := c.do("read 0"); !strings.HasPrefix(s, "ok ") {
		t.Fatalf("child after prctl injection: %q", s)
	}
	if err := ClearParentDeathSignal(1 << 30); !errors.Is(err, ErrNoProcess) {
		t.Fatalf("clear on no process: %v, want ErrNoProcess", err)
	}
}
