package tests

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dmig/dmig/precopy"
)

// BenchmarkFaultLatency measures post-copy faults resolved from the source
// while the push runs: a test guest (DMIG_BENCH_GUEST bytes, default
// 512 MiB, half its pages filled, writing 20 k pages/s) migrated in
// post-copy mode, whose destination verifies every page at resume and so
// faults on the pages the push has not reached yet. It runs over loopback
// (both ends in one network namespace) and over a veth pair shaped to
// 1 Gbit/s (tc tbf, whose queue the push and the replies share), and
// reports the fault latency (p50, p99, max) against the round trip of a
// small TCP ping-pong on the same link in the same run, measured just
// before the migration, and the migration's total against its bound
// (network bytes at the link's rate plus downtime). Run:
//
//	go test -run '^$' -bench FaultLatency -benchtime 1x ./tests/
func BenchmarkFaultLatency(b *testing.B) {
	size := int64(512 << 20)
	if v, err := strconv.ParseInt(os.Getenv("DMIG_BENCH_GUEST"), 10, 64); err == nil && v > 0 {
		size = v
	}
	for _, rate := range []string{"loopback", "1gbit"} {
		b.Run(rate, func(b *testing.B) {
			var l *link
			if rate == "loopback" {
				l = newLoopback(b)
			} else {
				l = newLink(b, rate)
			}
			bound := migrationBound{linkRate: linkRate(b, l, rate)}
			for range b.N {
				rtt := l.pingPong(b, 2000)
				rep := migrateNetns(b, l, size, precopy.ModePostcopy)
				f := rep.FaultLatencyUS
				load, _ := os.ReadFile("/proc/loadavg")
				fmt.Printf("%s: rtt p50 %.1f µs; %d source faults: p50 %.0f µs, p99 %.0f µs, max %.0f µs; total %.0f ms; load %s",
					rate, rtt, f.Count, f.P50, f.P99, f.Max, rep.TotalMS, load)
				fmt.Printf("%s: fault latency histogram %+v\n", rate, f.Dist)
				bound.print(b, rate, rep)
				b.ReportMetric(rtt, "rtt_p50_µs")
				b.ReportMetric(f.P50, "fault_p50_µs")
				b.ReportMetric(f.P99, "fault_p99_µs")
				b.ReportMetric(f.Max, "fault_max_µs")
				b.ReportMetric(float64(f.Count), "faults")
				b.ReportMetric(f.P50-rtt, "p50-rtt_µs")
				if f.Count == 0 {
					b.Errorf("%s: no fault was resolved from the source", rate)
				}
			}
		})
	}
}

// newLoopback is a link whose two ends are one network namespace talking
// over its loopback device.
func newLoopback(t testing.TB) *link {
	t.Helper()
	id := strconv.Itoa(os.Getpid() % 100000)
	l := &link{src: "dmig-l" + id, dst: "dmig-l" + id, srcIP: "127.0.0.1", dstIP: "127.0.0.1"}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", l.src).Run() })
	for _, args := range [][]string{{"netns", "add", l.src}, {"-n", l.src, "link", "set", "lo", "up"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return l
}

// envEcho is the environment of the ping-pong helper: "listen address" for
// the echo side, "dial address count" for the side that measures.
const envEcho = "DMIG_TEST_TCP_ECHO"

// echoHelper runs the ping-pong side named by the environment, if any, and
// reports whether it did. The measuring side prints the median round trip
// in nanoseconds.
func echoHelper() bool {
	f := strings.Fields(os.Getenv(envEcho))
	switch {
	case len(f) == 2 && f[0] == "listen":
		ln, err := net.Listen("tcp", f[1])
		if err != nil {
			fmt.Println("err", err)
			return true
		}
		fmt.Println("ready")
		c, err := ln.Accept()
		if err != nil {
			return true
		}
		buf := make([]byte, 64)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return true
			}
			if _, err := c.Write(buf); err != nil {
				return true
			}
		}
	case len(f) == 3 && f[0] == "dial":
		n, _ := strconv.Atoi(f[2])
		c, err := net.Dial("tcp", f[1])
		if err != nil {
			fmt.Println("err", err)
			return true
		}
		buf := make([]byte, 64)
		rtts := make([]time.Duration, 0, n)
		for range n {
			t0 := time.Now()
			if _, err := c.Write(buf); err != nil {
				fmt.Println("err", err)
				return true
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				fmt.Println("err", err)
				return true
			}
			rtts = append(rtts, time.Since(t0))
		}
		sort.Slice(rtts, func(i, j int) bool { return rtts[i] < rtts[j] })
		fmt.Println(rtts[len(rtts)/2].Nanoseconds())
		return true
	}
	return false
}

// pingPong measures n round trips of 64 bytes from l.src to l.dst over one
// TCP connection and returns the median in µs.
func (l *link) pingPong(t testing.TB, n int) float64 {
	t.Helper()
	addr := l.dstIP + ":7998"
	echo := l.startHelper(t, "echo helper", envEcho+"=listen "+addr)
	defer func() { echo.Process.Kill(); echo.Wait() }()
	return float64(l.runHelper(t, "ping-pong", fmt.Sprintf("%s=dial %s %d", envEcho, addr, n))) / 1e3
}
