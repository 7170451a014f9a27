package drain

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/dmig/dmig/internal/report"
)

// Status is what a drain did with one guest.
type Status string

const (
	// StatusMoved: migrated by this drain; the guest runs on its destination.
	StatusMoved Status = "moved"
	// StatusFailed: the migration failed; Result.Report.Outcome says whether the
	// source guest runs on (aborted) or the migration failed after resume.
	StatusFailed Status = "failed"
	// StatusAlreadyMoved: the state file says an earlier drain moved it.
	StatusAlreadyMoved Status = "already-moved"
	// StatusBusy: another drain (or migration) holds the guest: not touched.
	StatusBusy Status = "busy"
)

// Migrate moves one guest whose pid has been resolved. It is the engine as
// the CLI wires it.
type Migrate func(ctx context.Context, vm VM, pid int) (*report.Report, error)

// Options configure a drain.
type Options struct {
	Parallel int    // guests migrated at once, default 1
	LockDir  string // per-guest locks, default /run/dmig
	State    string // state file; "" keeps no state (nothing is skipped as moved)
	Migrate  Migrate
	Logger   hclog.Logger
	// Retryable, if set, says a failed migration that did not get past
	// switchover may be tried again soon (the destination was busy setting
	// up another session); it is, with backoff, for up to RetryFor.
	Retryable func(error) bool
	RetryFor  time.Duration // default 1 minute
}

// Result is one guest's line in the summary.
type Result struct {
	Name     string         `json:"name"`
	To       string         `json:"to"`
	Status   Status         `json:"status"`
	Outcome  report.Outcome `json:"outcome,omitempty"` // of the migration, if one ran
	Error    string         `json:"error,omitempty"`
	Report   *report.Report `json:"report,omitempty"`
	Duration float64        `json:"duration_ms"`
}

// Summary is the drain's JSON summary.
type Summary struct {
	Started      time.Time `json:"started"`
	TotalMS      float64   `json:"total_ms"`
	Moved        int       `json:"moved"`
	Failed       int       `json:"failed"`
	AlreadyMoved int       `json:"already_moved"`
	Busy         int       `json:"busy"`
	VMs          []Result  `json:"vms"` // in config order
	// Bandwidth: the drain's total cap and the rate its guests took
	// together (each guest's own is in its report).
	Bandwidth *report.Bandwidth `json:"bandwidth,omitempty"`
}

// Run drains every guest of cfg. It returns an error only when it cannot
// start (lock directory); each guest's failure is in the summary.
func Run(ctx context.Context, cfg *Config, o Options) (*Summary, error) {
	if o.Parallel <= 0 {
		o.Parallel = 1
	}
	if o.LockDir == "" {
		o.LockDir = "/run/dmig"
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	if err := os.MkdirAll(o.LockDir, 0o700); err != nil {
		return nil, fmt.Errorf("create lock directory: %w", err)
	}
	if o.State != "" {
		if err := os.MkdirAll(filepath.Dir(o.State), 0o700); err != nil {
			return nil, fmt.Errorf("create state directory: %w", err)
		}
	}
	sum := &Summary{Started: time.Now(), VMs: make([]Result, len(cfg.VMs))}
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(o.Parallel, len(cfg.VMs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				sum.VMs[i] = o.one(ctx, cfg.VMs[i])
			}
		}()
	}
	for i := range cfg.VMs {
		next <- i
	}
	close(next)
	wg.Wait()
	sum.TotalMS = report.MS(time.Since(sum.Started))
	for _, r := range sum.VMs {
		switch r.Status {
		case StatusMoved:
			sum.Moved++
		case StatusFailed:
			sum.Failed++
		case StatusAlreadyMoved:
			sum.AlreadyMoved++
		case StatusBusy:
			sum.Busy++
		}
	}
	return sum, nil
}

// migrate runs o.Migrate, again while it fails retryably before resume.
func (o Options) migrate(ctx context.Context, log hclog.Logger, vm VM, pid int) (*report.Report, error) {
	retryFor := o.RetryFor
	if retryFor <= 0 {
		retryFor = time.Minute
	}
	deadline := time.Now().Add(retryFor)
	wait := 100 * time.Millisecond
	for {
		rep, err := o.Migrate(ctx, vm, pid)
		if err == nil || o.Retryable == nil || !o.Retryable(err) || time.Now().After(deadline) ||
			(rep != nil && rep.Outcome == report.FailedAfterResume) {
			return rep, err
		}
		log.Info("destination busy; retrying", "in", wait, "error", err)
		select {
		case <-ctx.Done():
			return rep, err
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// one moves one guest under its lock.
func (o Options) one(ctx context.Context, vm VM) Result {
	start := time.Now()
	log := o.Logger.With("vm", vm.Name, "to", vm.To)
	res := Result{Name: vm.Name, To: vm.To}
	defer func() { res.Duration = report.MS(time.Since(start)) }()
	fail := func(err error) Result {
		res.Status, res.Error = StatusFailed, err.Error()
		if errors.Is(err, ErrLocked) {
			res.Status = StatusBusy
		}
		log.Error("not moved", "status", res.Status, "error", err)
		return res
	}
	if ctx.Err() != nil {
		return fail(fmt.Errorf("drain of %s: %w", vm.Name, ctx.Err()))
	}
	lock, err := flock(filepath.Join(o.LockDir, vm.Name+".lock"), false)
	if err != nil {
		return fail(err)
	}
	defer lock.Close()
	if o.State != "" {
		done, err := movedAlready(o.State, vm.Name)
		if err != nil {
			return fail(err)
		}
		if done {
			log.Info("already moved: skipped")
			res.Status = StatusAlreadyMoved
			return res
		}
	}
	pid, err := vm.PID()
	if err != nil {
		return fail(err)
	}
	log.Info("migrating", "pid", pid, "mode", vm.Mode)
	rep, err := o.migrate(ctx, log, vm, pid)
	res.Report = rep
	if rep != nil {
		res.Outcome = rep.Outcome
	}
	if err != nil {
		return fail(err)
	}
	res.Status = StatusMoved
	log.Info("moved", "total_ms", rep.TotalMS, "downtime_ms", rep.DowntimeMS)
	if o.State != "" {
		if err := recordMoved(o.State, vm.Name, Moved{To: vm.To, MovedAt: time.Now().UTC()}); err != nil {
			// The guest has moved: say so, but loudly, since a rerun would
			// try again (and fail: its source is gone).
			res.Error = err.Error()
			log.Error("moved, but could not record it in the state file", "error", err)
		}
	}
	return res
}
