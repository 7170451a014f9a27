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
	// StatusSkipped: the guest cannot be migrated (Result.Error says why):
	// not attempted, it runs on here.
	StatusSkipped Status = "skipped"
)

// Migrate moves one guest whose pid has been resolved (0 for a QEMU VM). It
// is the engine as the CLI wires it. A guest it finds it cannot migrate,
// before touching it, is an error wrapping ErrCannotMigrate.
type Migrate func(ctx context.Context, vm VM, pid int) (*report.Report, error)

// Expand lists the VMs a template entry (VM.Template) stands for, each a
// copy of the template with Name and QMP set (and Skip, for one found that
// cannot be migrated).
type Expand func(ctx context.Context, template VM) ([]VM, error)

// Options configure a drain.
type Options struct {
	Parallel int    // guests migrated at once, default 1
	LockDir  string // per-guest locks, default /run/dmig
	State    string // state file; "" keeps no state (nothing is skipped as moved)
	Migrate  Migrate
	Expand   Expand // needed by configs with templates
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
	Skipped      int       `json:"skipped"`
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
	sum := &Summary{Started: time.Now()}
	vms, pre := o.expand(ctx, cfg.VMs)
	sum.VMs = make([]Result, len(vms))
	sched := newScheduler(cfg.Destinations, vms)
	var wg sync.WaitGroup
	for range min(o.Parallel, len(vms)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i, ok := sched.next()
				if !ok {
					return
				}
				if r, ok := pre[i]; ok {
					sum.VMs[i] = r
				} else {
					sum.VMs[i] = o.one(ctx, vms[i])
				}
				sched.done(i)
			}
		}()
	}
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
		case StatusSkipped:
			sum.Skipped++
		}
	}
	return sum, nil
}

// expand replaces each template of vms by the VMs it stands for, in place.
// A template that fails to expand, and a VM whose name another already
// has, become results at once (pre, by index of the list returned).
func (o Options) expand(ctx context.Context, vms []VM) ([]VM, map[int]Result) {
	var out []VM
	pre := map[int]Result{}
	names := map[string]bool{}
	for _, vm := range vms {
		if !vm.Template() {
			names[vm.Name] = true
		}
	}
	for _, vm := range vms {
		if !vm.Template() {
			out = append(out, vm)
			continue
		}
		what := "qmp_dir " + vm.QMPDir
		if vm.Discover != "" {
			what = "discover " + vm.Discover
		}
		var found []VM
		err := errors.New("no expansion of templates configured")
		if o.Expand != nil {
			found, err = o.Expand(ctx, vm)
		}
		if err != nil {
			o.Logger.Error("find the VMs of a template", "entry", what, "error", err)
			pre[len(out)] = Result{Name: what, To: vm.To, Status: StatusFailed, Error: err.Error()}
			out = append(out, vm)
			continue
		}
		o.Logger.Info("VMs found", "entry", what, "count", len(found))
		for _, f := range found {
			if names[f.Name] {
				pre[len(out)] = Result{Name: f.Name, To: f.To, Status: StatusSkipped,
					Error: fmt.Sprintf("%s found a VM named %s, which another entry already names: give it its own -name", what, f.Name)}
			}
			names[f.Name] = true
			out = append(out, f)
		}
	}
	return out, pre
}

// scheduler hands out guests in list order, keeping each destination's
// MaxConcurrent: a guest whose destination is full waits, and a later one
// to another destination goes first.
type scheduler struct {
	mu      sync.Mutex
	cond    *sync.Cond
	pending []int
	to      []string
	running map[string]int
	limit   map[string]int
}

func newScheduler(dests map[string]Destination, vms []VM) *scheduler {
	s := &scheduler{running: map[string]int{}, limit: map[string]int{}}
	s.cond = sync.NewCond(&s.mu)
	for i, vm := range vms {
		s.pending = append(s.pending, i)
		s.to = append(s.to, vm.To)
	}
	for addr, d := range dests {
		if d.MaxConcurrent > 0 {
			s.limit[addr] = d.MaxConcurrent
		}
	}
	return s
}

// next returns the first pending guest whose destination has room,
// waiting while none has; false when none is left.
func (s *scheduler) next() (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.pending) > 0 {
		for k, i := range s.pending {
			to := s.to[i]
			if l, ok := s.limit[to]; ok && s.running[to] >= l {
				continue
			}
			s.pending = append(s.pending[:k], s.pending[k+1:]...)
			s.running[to]++
			return i, true
		}
		s.cond.Wait()
	}
	return 0, false
}

// done frees guest i's place at its destination.
func (s *scheduler) done(i int) {
	s.mu.Lock()
	s.running[s.to[i]]--
	s.mu.Unlock()
	s.cond.Broadcast()
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
		if err == nil || o.Retryable == nil || !o.Retryable(err) || errors.Is(err, ErrCannotMigrate) || time.Now().After(deadline) ||
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
		switch {
		case errors.Is(err, ErrLocked):
			res.Status = StatusBusy
		case errors.Is(err, ErrCannotMigrate):
			res.Status = StatusSkipped
			log.Warn("skipped: cannot be migrated", "reason", err)
			return res
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
	if vm.Skip != "" {
		return fail(fmt.Errorf("%w: %s", ErrCannotMigrate, vm.Skip))
	}
	pid, err := vm.PID()
	if err != nil {
		return fail(err)
	}
	log.Info("migrating", "pid", pid, "qmp", vm.QMP, "mode", vm.Mode)
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
