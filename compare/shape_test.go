package compare

import (
	"io"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestShaper: the migration's port goes through the token bucket, other
// loopback traffic does not, and closing leaves lo as it was.
func TestShaper(t *testing.T) {
	if _, err := exec.LookPath("tc"); err != nil {
		t.Fatalf("tc is needed (.ci/run installs iproute2): %v", err)
	}
	before, _ := exec.Command("tc", "qdisc", "show", "dev", "lo").Output()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	other, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	s, err := newShaper("lo", "200mbit")
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			s.close()
		}
	}()
	if err := s.shape(ln.Addr().(*net.TCPAddr).Port); err != nil {
		t.Fatal(err)
	}
	shaped := func() int64 {
		out, err := exec.Command("tc", "-s", "class", "show", "dev", "lo", "classid", "1:20").Output()
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(`Sent (\d+) bytes`).FindSubmatch(out)
		if m == nil {
			t.Fatalf("no shaped class on lo:\n%s", out)
		}
		n, _ := strconv.ParseInt(string(m[1]), 10, 64)
		return n
	}
	send := func(l net.Listener, n int) {
		t.Helper()
		done := make(chan int64)
		go func() {
			c, err := l.Accept()
			if err != nil {
				done <- 0
				return
			}
			defer c.Close()
			k, _ := io.Copy(io.Discard, c)
			done <- k
		}()
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(make([]byte, n)); err != nil {
			t.Fatal(err)
		}
		c.Close()
		if got := <-done; got != int64(n) {
			t.Fatalf("received %d of %d bytes", got, n)
		}
	}
	s0 := shaped()
	send(other, 4<<20)
	if d := shaped() - s0; d > 64<<10 {
		t.Errorf("%d bytes of unshaped traffic went through the token bucket", d)
	}
	s1 := shaped()
	send(ln, 4<<20)
	if d := shaped() - s1; d < 4<<20 {
		t.Errorf("only %d of 4 MiB to the shaped port went through the token bucket", d)
	}
	closed = true
	if err := s.close(); err != nil {
		t.Fatal(err)
	}
	after, _ := exec.Command("tc", "qdisc", "show", "dev", "lo").Output()
	if strings.Contains(string(after), "htb") || string(after) != string(before) {
		t.Errorf("lo after the run:\n%s\nbefore:\n%s", after, before)
	}
}
