package compare

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Sample is one interval report of the workload.
type Sample struct {
	// T is the end of the interval, in seconds since the comparison began.
	T      float64 `json:"t"`
	TPS    float64 `json:"tps"`
	ErrPS  float64 `json:"err_per_s"`
	Reconn float64 `json:"reconn_per_s"`
}

// sysbench's --report-interval line:
// [ 10s ] thds: 4 tps: 226.95 qps: 3651.20 (r/w/o: ...) lat (ms,95%): 29.19 err/s: 0.00 reconn/s: 0.00
var intervalRE = regexp.MustCompile(`^\[ *([0-9.]+)s \].* tps: ([0-9.]+).* err/s: ([0-9.]+)(?: reconn/s: ([0-9.]+))?`)

// parseInterval reads a sysbench interval line; t is seconds since the
// workload started.
func parseInterval(line string) (t float64, s Sample, ok bool) {
	m := intervalRE.FindStringSubmatch(line)
	if m == nil {
		return 0, Sample{}, false
	}
	t, _ = strconv.ParseFloat(m[1], 64)
	s.TPS, _ = strconv.ParseFloat(m[2], 64)
	s.ErrPS, _ = strconv.ParseFloat(m[3], 64)
	if m[4] != "" {
		s.Reconn, _ = strconv.ParseFloat(m[4], 64)
	}
	return t, s, true
}

// workload is the load the guest runs during the comparison: a command
// (sysbench with --report-interval) whose interval reports are sampled.
type workload struct {
	cmd     *exec.Cmd
	started time.Time // of the command, for its relative interval times
	base    time.Time // of the comparison

	mu      sync.Mutex
	samples []Sample
	fatal   []string // lines that say the workload failed
	tail    []string // its last lines of output, for errors
	done    chan struct{}
	err     error // the command's exit, set before done closes
}

// startWorkload runs command with sh -c in its own process group.
func startWorkload(command string, base time.Time) (*workload, error) {
	w := &workload{base: base, done: make(chan struct{})}
	w.cmd = exec.Command("sh", "-c", command)
	w.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pr, pw := io.Pipe()
	w.cmd.Stdout, w.cmd.Stderr = pw, pw
	if err := w.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start workload %q: %w", command, err)
	}
	w.started = time.Now()
	go w.read(pr)
	go func() {
		err := w.cmd.Wait()
		pw.Close()
		w.mu.Lock()
		w.err = err
		w.mu.Unlock()
		close(w.done)
	}()
	return w, nil
}

func (w *workload) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		w.mu.Lock()
		if t, s, ok := parseInterval(line); ok {
			s.T = w.started.Add(time.Duration(t * float64(time.Second))).Sub(w.base).Seconds()
			w.samples = append(w.samples, s)
		} else if strings.Contains(line, "FATAL") || strings.Contains(line, "ALERT") {
			w.fatal = append(w.fatal, line)
		}
		w.tail = append(w.tail, line)
		if len(w.tail) > 20 {
			w.tail = w.tail[1:]
		}
		w.mu.Unlock()
	}
	_, _ = io.Copy(io.Discard, r)
}

// alive reports an error if the workload has ended: the comparison's load
// is gone.
func (w *workload) alive() error {
	select {
	case <-w.done:
		w.mu.Lock()
		defer w.mu.Unlock()
		return fmt.Errorf("%w (%v): %s", ErrWorkloadEnded, w.err, strings.Join(w.tail, " | "))
	default:
		return nil
	}
}

// snapshot returns the samples so far and the failure lines.
func (w *workload) snapshot() ([]Sample, []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Sample(nil), w.samples...), append([]string(nil), w.fatal...)
}

// waitSamples waits until the workload has reported an interval ending at
// or after t (seconds since base), so a window's figures are complete.
func (w *workload) waitSamples(ctx context.Context, t float64, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		s, _ := w.snapshot()
		if len(s) > 0 && s[len(s)-1].T >= t {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-w.done:
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stop ends the workload's process group.
func (w *workload) stop() {
	_ = syscall.Kill(-w.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-w.done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-w.cmd.Process.Pid, syscall.SIGKILL)
		<-w.done
	}
}

// window averages the samples whose interval ends in (from, to]: the
// transactions per second and the errors per second.
func window(samples []Sample, from, to float64) (tps, errps float64, n int) {
	for _, s := range samples {
		if s.T > from && s.T <= to {
			tps += s.TPS
			errps += s.ErrPS
			n++
		}
	}
	if n == 0 {
		return 0, 0, 0
	}
	return tps / float64(n), errps / float64(n), n
}

// minWindow is the lowest throughput of the intervals ending in (from,
// to], or 0 if there are none.
func minWindow(samples []Sample, from, to float64) float64 {
	lo, any := 0.0, false
	for _, s := range samples {
		if s.T > from && s.T <= to && (!any || s.TPS < lo) {
			lo, any = s.TPS, true
		}
	}
	return lo
}

// errorsIn counts the workload's errors in the intervals ending in
// (from, to]: each interval's rate times its length.
func errorsIn(samples []Sample, from, to float64) float64 {
	var e float64
	for i, s := range samples {
		dt := 1.0
		if i > 0 {
			dt = s.T - samples[i-1].T
		}
		if s.T > from && s.T <= to {
			e += s.ErrPS * dt
		}
	}
	return e
}
