package tests

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// link is a pair of network namespaces joined by a veth pair, optionally
// shaped with tbf in both directions: two hosts of our own on one machine.
type link struct {
	src, dst     string // namespace names
	srcIP, dstIP string
}

// newLink creates the namespaces (removed at cleanup). rate is a tc rate
// ("1gbit"), or "" for an unshaped veth.
func newLink(t testing.TB, rate string) *link {
	t.Helper()
	id := strconv.Itoa(os.Getpid() % 100000)
	l := &link{src: "dmig-s" + id, dst: "dmig-d" + id, srcIP: "10.231.7.1", dstIP: "10.231.7.2"}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", l.src).Run()
		exec.Command("ip", "netns", "del", l.dst).Run()
	})
	run("netns", "add", l.src)
	run("netns", "add", l.dst)
	vs, vd := "vs"+id, "vd"+id
	run("link", "add", vs, "type", "veth", "peer", "name", vd)
	run("link", "set", vs, "netns", l.src)
	run("link", "set", vd, "netns", l.dst)
	run("-n", l.src, "addr", "add", l.srcIP+"/24", "dev", vs)
	run("-n", l.dst, "addr", "add", l.dstIP+"/24", "dev", vd)
	for _, ns := range []string{l.src, l.dst} {
		run("-n", ns, "link", "set", "lo", "up")
	}
	run("-n", l.src, "link", "set", vs, "up")
	run("-n", l.dst, "link", "set", vd, "up")
	if rate != "" {
		for _, p := range [][2]string{{l.src, vs}, {l.dst, vd}} {
			if out, err := exec.Command("tc", "-n", p[0], "qdisc", "add", "dev", p[1], "root", "tbf", "rate", rate, "burst", "256kb", "latency", "50ms").CombinedOutput(); err != nil {
				t.Fatalf("tc: %v: %s", err, out)
			}
		}
	}
	return l
}

// in returns a command running in namespace ns.
func (l *link) in(ns string, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// Environment of the raw-TCP baseline helpers: the test binary re-executed
// inside a namespace as a sink or a sender.
const (
	envSink = "DMIG_TEST_TCP_SINK" // listen address; prints bytes received
	envSend = "DMIG_TEST_TCP_SEND" // "addr bytes"; prints nanoseconds taken
)

// tcpHelper runs the baseline side named by the environment, if any, and
// reports whether it did.
func tcpHelper() bool {
	if addr := os.Getenv(envSink); addr != "" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Println("err", err)
			return true
		}
		fmt.Println("ready")
		c, err := ln.Accept()
		if err != nil {
			fmt.Println("err", err)
			return true
		}
		n, _ := io.Copy(io.Discard, c)
		c.Write([]byte{1})
		fmt.Println(n)
		return true
	}
	if spec := os.Getenv(envSend); spec != "" {
		f := strings.Fields(spec)
		n, _ := strconv.ParseInt(f[1], 10, 64)
		c, err := net.Dial("tcp", f[0])
		if err != nil {
			fmt.Println("err", err)
			return true
		}
		buf := make([]byte, 1<<20)
		for i := range buf {
			buf[i] = byte(i * 7)
		}
		start := time.Now()
		for sent := int64(0); sent < n; {
			k := min(int64(len(buf)), n-sent)
			w, err := c.Write(buf[:k])
			if err != nil {
				fmt.Println("err", err)
				return true
			}
			sent += int64(w)
		}
		c.(*net.TCPConn).CloseWrite()
		var ack [1]byte
		c.Read(ack[:]) // the sink has everything
		fmt.Println(time.Since(start).Nanoseconds())
		return true
	}
	return false
}

// rawTCP sends n bytes from the source namespace to the destination one
// over one connection and returns how long it took.
func (l *link) rawTCP(t testing.TB, n int64) time.Duration {
	t.Helper()
	addr := l.dstIP + ":7999"
	sink := l.startHelper(t, "tcp sink", envSink+"="+addr)
	defer sink.Wait()
	return time.Duration(l.runHelper(t, "tcp sender", fmt.Sprintf("%s=%s %d", envSend, addr, n)))
}

// startHelper starts this test binary in the destination namespace as the
// helper env selects, and returns once it says it is ready.
func (l *link) startHelper(t testing.TB, what, env string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := l.in(l.dst, exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), env)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var ready string
	fmt.Fscan(out, &ready)
	if ready != "ready" {
		t.Fatalf("%s: %s", what, ready)
	}
	return cmd
}

// runHelper runs this test binary in the source namespace as the helper
// env selects and returns the number it prints.
func (l *link) runHelper(t testing.TB, what, env string) int64 {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := l.in(l.src, exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), env)
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		t.Fatalf("%s said %q", what, b)
	}
	return n
}

// readJSON decodes a JSON file into v.
func readJSON(t testing.TB, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}
