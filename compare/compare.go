package compare

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/dmig/dmig/dbrestore"
	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/precopy"
	"github.com/dmig/dmig/vmm/qemu"
	"github.com/dmig/dmig/wire"
)

// Modes a comparison can run: dmig's three and QEMU's own (qemu.NativeModes:
// pre-copy, multifd, multifd with zstd, post-copy, post-copy with preempt).
var Modes = append([]string{string(precopy.ModeHybrid), string(precopy.ModePrecopy), string(precopy.ModePostcopy)}, qemu.NativeModes...)

// Config configures a comparison run.
type Config struct {
	// QMP is the running VM's QMP socket. The VM hops to a new QEMU on this
	// host at every migration; Result.QMP says where it ends.
	QMP string
	// Modes in the order to run them (default: all of Modes).
	Modes []string
	// Rounds: each mode runs this many times, in turn (default 1).
	Rounds int
	// Dir holds each destination's sockets and logs, one subdirectory per
	// migration.
	Dir string
	// RAMDir holds the destinations' RAM files: a tmpfs (default /dev/shm).
	RAMDir string
	// Workload is a shell command generating load in the guest during the
	// whole comparison: sysbench with --report-interval=1 (its interval
	// lines are sampled) and --time=0 (it is stopped at the end). Empty:
	// no workload.
	Workload string
	// Warmup is the workload time before each migration its "before"
	// throughput is averaged over; Cooldown the time after, for "after"
	// (defaults 10 s each).
	Warmup, Cooldown time.Duration
	// Check is a shell command run before the first migration and after
	// each: its output must stay the same (e.g. CHECKSUM TABLE of tables
	// the workload only reads). Empty: none.
	Check string
	// Layout is the guest agent's layout endpoint for hybrid mode (default:
	// the host end of the VM's org.dmig.agent virtio-serial port).
	Layout string
	// LayoutTimeout bounds each layout fetch (see precopy.Config).
	LayoutTimeout time.Duration
	// Downtime is dmig's downtime budget and QEMU's downtime-limit
	// (default 50 ms).
	Downtime time.Duration
	// MaxBandwidth caps every mode's migration traffic in bytes/s: dmig's
	// (precopy.Config.MaxBandwidth) and QEMU's (its max-bandwidth, and
	// max-postcopy-bandwidth for the post-copy phase) alike. 0: no cap;
	// QEMU then gets max-bandwidth 10 GiB/s, a cap no link here reaches,
	// since its own default is 128 MiB/s.
	MaxBandwidth uint64
	// Rate, if set, shapes the migration traffic on this host's loopback to
	// a link of that rate (tc syntax: 1gbit), both dmig's and QEMU's: see
	// shaper. It replaces lo's root qdisc for the run. Empty: unshaped.
	Rate string
	// MaxIterations bounds dmig's pre-copy passes (default 30).
	MaxIterations int
	// Compress: dmig's modes send page data compressed with Codec
	// (precopy.Config.Compress). QEMU's compress only in qemu-multifd-zstd.
	Compress bool
	Codec    wire.Codec
	// Channels is the number of connections of QEMU's multifd modes
	// (multifd-channels; default dmig's bulk connections, 2).
	Channels int
	// QEMUBinary, if set, starts every destination QEMU instead of the
	// source's own binary. It must be the source VM's QEMU version: the
	// source VM is started by the same QEMU (ErrQEMUVersion).
	QEMUBinary string
	// AllowBuggyQEMU runs QEMU's own modes on a TCG VM of a QEMU older than
	// 9.0 (ErrBuggyQEMU).
	AllowBuggyQEMU bool
	// Timeout bounds each migration (default 15 minutes): QEMU's pre-copy
	// never gives up on a guest that dirties memory faster than it sends.
	Timeout time.Duration
	Logger  hclog.Logger
	// Done, if set, is called after each migration.
	Done func(Migration)
}

func (c *Config) defaults() {
	if len(c.Modes) == 0 {
		c.Modes = Modes
	}
	if c.Rounds <= 0 {
		c.Rounds = 1
	}
	if c.RAMDir == "" {
		c.RAMDir = "/dev/shm"
	}
	if c.Warmup <= 0 {
		c.Warmup = 10 * time.Second
	}
	if c.Cooldown <= 0 {
		c.Cooldown = 10 * time.Second
	}
	if c.Downtime <= 0 {
		c.Downtime = 50 * time.Millisecond
	}
	if c.Timeout <= 0 {
		c.Timeout = 15 * time.Minute
	}
	if c.Channels <= 0 {
		c.Channels = 2
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
}

// Migration is one migration of the comparison.
type Migration struct {
	Mode  string `json:"mode"`
	Round int    `json:"round"`
	// StartS and EndS are seconds since the comparison began.
	StartS float64        `json:"start_s"`
	EndS   float64        `json:"end_s"`
	Report *report.Report `json:"report,omitempty"`
	// Workload throughput (transactions/s) in the Warmup before, during,
	// and in the Cooldown after the migration, and its errors during and
	// after.
	TPSBefore      float64 `json:"tps_before"`
	TPSDuring      float64 `json:"tps_during"`
	TPSAfter       float64 `json:"tps_after"`
	WorkloadErrors float64 `json:"workload_errors"`
	// TPSDuringMin is the lowest 1 s throughput window during it.
	TPSDuringMin float64 `json:"tps_during_min"`
	// Oracle is the RAM check: the destination's RAM before it ran
	// against the source's at switchover (nil: not checked).
	Oracle *Oracle `json:"oracle,omitempty"`
	// Check is "same" or "differs" (Check's output against the first), or
	// empty without a check.
	Check       string `json:"check,omitempty"`
	CheckOutput string `json:"check_output,omitempty"`
	// GuestCrash is the first kernel crash line the destination guest's
	// console logged by the end of the cooldown (its -serial file).
	GuestCrash string `json:"guest_crash,omitempty"`
	Error      string `json:"error,omitempty"`
	// QMP is where the VM runs afterwards.
	QMP string `json:"qmp"`
}

// OK reports whether the migration completed, the check (if any) held,
// the RAM oracle (if any) found no page differing, the guest's kernel did
// not crash and the workload saw no errors.
func (m *Migration) OK() bool {
	return m.Error == "" && m.Check != "differs" && m.WorkloadErrors == 0 && m.GuestCrash == "" &&
		(m.Oracle == nil || m.Oracle.PagesDiffer == 0)
}

// Oracle is a migration's RAM check: the destination's RAM before its
// guest ran, page for page against the source's at switchover (both
// paused). QEMU's modes are checked in full (the destination starts with
// -S); dmig's pre-copy too (at the destination's resume, the source
// paused); dmig's post-copy and hybrid only for the pages placed by the
// resume (the others arrive later, PagesUnchecked).
type Oracle struct {
	PagesChecked   uint64 `json:"pages_checked"`
	PagesDiffer    uint64 `json:"pages_differ"`
	PagesUnchecked uint64 `json:"pages_unchecked,omitempty"`
	// FirstDiffer is the RAM-file offset of the first page that differs.
	FirstDiffer *int64 `json:"first_differ,omitempty"`
	// PauseMS is how long the check kept the destination paused: time the
	// guest did not run that no mode's downtime figure counts. dmig's
	// modes check inside the downtime window and have it taken out; QEMU's
	// check after the destination's run point, outside it.
	PauseMS float64 `json:"pause_ms"`
}

// Result is a whole comparison.
type Result struct {
	Started time.Time `json:"started"`
	// QEMU is the source VM's QEMU version; TCG whether it runs without
	// hardware acceleration.
	QEMU       string      `json:"qemu,omitempty"`
	TCG        bool        `json:"tcg,omitempty"`
	Rate       string      `json:"rate,omitempty"`
	Workload   string      `json:"workload,omitempty"`
	Check      string      `json:"check,omitempty"`
	Baseline   string      `json:"check_baseline,omitempty"`
	Migrations []Migration `json:"migrations"`
	// Samples are the workload's interval reports over the whole run.
	Samples []Sample `json:"samples,omitempty"`
	// WorkloadFailures are lines where the workload said it failed.
	WorkloadFailures []string `json:"workload_failures,omitempty"`
	// QMP is where the VM runs at the end.
	QMP string `json:"qmp"`
}

// OK reports whether every migration was OK and the workload never failed.
func (r *Result) OK() bool {
	for i := range r.Migrations {
		if !r.Migrations[i].OK() {
			return false
		}
	}
	return len(r.WorkloadFailures) == 0
}

// Run migrates the VM behind cfg.QMP once per mode and round, each time
// to a new QEMU on this host, under one workload, and returns the figures.
// A migration that fails with the source intact is recorded and the run
// goes on from the source; one that fails after the destination resumed
// ends the run (the VM's state needs an operator). The result is returned
// with any error, as far as it got.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	cfg.defaults()
	for _, m := range cfg.Modes {
		if !validMode(m) {
			return nil, fmt.Errorf("%w: %q (want one of %s)", ErrMode, m, strings.Join(Modes, ", "))
		}
	}
	if cfg.Dir == "" {
		return nil, errors.New("compare: no directory for the destinations")
	}
	r := &runner{cfg: cfg, log: cfg.Logger, cur: cfg.QMP}
	r.res = &Result{Started: time.Now(), Workload: cfg.Workload, Check: cfg.Check, QMP: cfg.QMP, Rate: cfg.Rate}
	if err := r.checkQEMU(ctx); err != nil {
		return nil, err
	}
	if cfg.Rate != "" {
		sh, err := newShaper("lo", cfg.Rate)
		if err != nil {
			return nil, err
		}
		r.shaper = sh
		defer func() {
			if err := sh.close(); err != nil {
				r.log.Warn("remove the loopback shaping", "error", err)
			}
		}()
	}
	err := r.run(ctx)
	if r.w != nil {
		r.w.stop()
		r.res.Samples, r.res.WorkloadFailures = r.w.snapshot()
	}
	r.res.QMP = r.cur
	return r.res, err
}

func validMode(m string) bool {
	for _, v := range Modes {
		if m == v {
			return true
		}
	}
	return false
}

type runner struct {
	cfg    Config
	log    hclog.Logger
	res    *Result
	w      *workload
	cur    string  // QMP socket of the VM now
	shaper *shaper // nil: unshaped
	// console is the current VM's console log, if this run started it.
	console string
	// owned are the RAM files of the current VM if this run made them: they
	// are removed once the VM has left them.
	owned []string
	seq   int
	// oracle is the current migration's RAM check, if it ran.
	oracle *Oracle
}

func (r *runner) since() float64 { return time.Since(r.res.Started).Seconds() }

// sleep waits d, failing early if the context ends or the workload dies.
func (r *runner) sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	var done <-chan struct{}
	if r.w != nil {
		done = r.w.done
	}
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-done:
		return r.w.alive()
	case <-t.C:
		return nil
	}
}

func (r *runner) run(ctx context.Context) error {
	if r.cfg.Workload != "" {
		w, err := startWorkload(r.cfg.Workload, r.res.Started)
		if err != nil {
			return err
		}
		r.w = w
		r.log.Info("workload started", "command", r.cfg.Workload)
	}
	if r.cfg.Check != "" {
		out, err := runCheck(ctx, r.cfg.Check)
		if err != nil {
			return err
		}
		r.res.Baseline = out
	}
	lastEnd := 0.0
	for round := 1; round <= r.cfg.Rounds; round++ {
		for _, mode := range r.cfg.Modes {
			if r.w != nil {
				// The "before" window: Warmup of workload since the last
				// migration (the cooldown counts).
				if wait := r.cfg.Warmup - time.Duration((r.since()-lastEnd)*float64(time.Second)); wait > 0 {
					if err := r.sleep(ctx, wait); err != nil {
						return err
					}
				}
			}
			m := Migration{Mode: mode, Round: round, StartS: r.since()}
			r.log.Info("migrating", "mode", mode, "round", round, "qmp", r.cur)
			r.oracle = nil
			rep, err := r.migrate(ctx, mode)
			m.EndS, m.Report, m.Oracle = r.since(), rep, r.oracle
			if o := m.Oracle; o != nil && o.PagesDiffer > 0 {
				r.log.Error("the destination's RAM differs from the source's", "mode", mode, "pages_differ", o.PagesDiffer, "pages_checked", o.PagesChecked)
			}
			lastEnd = m.EndS
			if err != nil {
				m.Error = err.Error()
				r.log.Error("migration failed", "mode", mode, "round", round, "error", err)
			}
			m.QMP = r.cur
			if r.w != nil {
				werr := r.sleep(ctx, r.cfg.Cooldown)
				r.w.waitSamples(ctx, m.EndS+r.cfg.Cooldown.Seconds(), 5*time.Second)
				r.fillTPS(&m)
				if werr != nil {
					r.res.Migrations = append(r.res.Migrations, m)
					return fmt.Errorf("after %s migration: %w", mode, werr)
				}
			}
			if err == nil && r.console != "" {
				m.GuestCrash = qemu.ConsoleCrash(r.console)
				if m.GuestCrash != "" {
					r.log.Error("the guest's kernel crashed after the migration", "mode", mode, "console", r.console, "line", m.GuestCrash)
				}
			}
			if r.cfg.Check != "" {
				out, cerr := runCheck(ctx, r.cfg.Check)
				m.CheckOutput = out
				switch {
				case cerr != nil:
					m.Check = "differs"
					m.CheckOutput = cerr.Error()
				case out == r.res.Baseline:
					m.Check = "same"
				default:
					m.Check = "differs"
				}
			}
			r.res.Migrations = append(r.res.Migrations, m)
			if r.cfg.Done != nil {
				r.cfg.Done(m)
			}
			if rep != nil && rep.Outcome == report.FailedAfterResume {
				return fmt.Errorf("%s migration failed after the destination resumed: %w", mode, err)
			}
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
		}
	}
	return nil
}

func (r *runner) fillTPS(m *Migration) {
	s, _ := r.w.snapshot()
	m.TPSBefore, _, _ = window(s, m.StartS-r.cfg.Warmup.Seconds(), m.StartS)
	// A migration shorter than an interval still has the interval it ends
	// in.
	end := max(m.EndS, m.StartS+1)
	m.TPSDuring, _, _ = window(s, m.StartS, end+0.999)
	m.TPSDuringMin = minWindow(s, m.StartS, end+0.999)
	m.TPSAfter, _, _ = window(s, end+0.999, m.EndS+r.cfg.Cooldown.Seconds()+0.5)
	m.WorkloadErrors = errorsIn(s, m.StartS, m.EndS+r.cfg.Cooldown.Seconds()+0.5)
}

// runCheck runs the check command and returns its output.
func runCheck(ctx context.Context, command string) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(cctx, "sh", "-c", command).Output()
	if err != nil {
		msg := ""
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			msg = strings.TrimSpace(string(ee.Stderr))
		}
		return "", fmt.Errorf("%w: %q: %v %s", ErrCheck, command, err, msg)
	}
	return strings.TrimSpace(string(out)), nil
}

// migrate moves the VM once in mode to a new QEMU on this host.
func (r *runner) migrate(ctx context.Context, mode string) (*report.Report, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, r.cfg.Timeout, fmt.Errorf("%w after %s", ErrTimeout, r.cfg.Timeout))
	defer cancel()
	src, err := qemu.NewSource(ctx, r.cur)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	cmd := src.DestCommand()
	r.seq++
	// The directory's name also names the RAM files: unique per run.
	tg := &qemu.Target{Command: cmd, Dir: filepath.Join(r.cfg.Dir, fmt.Sprintf("%d-%02d-%s", r.res.Started.Unix(), r.seq, mode)),
		RAMDir: r.cfg.RAMDir, SourcePid: src.Pid(), Ports: map[int]int{}, Binary: r.cfg.QEMUBinary}
	for _, p := range qemu.HostForwardPorts(cmd[1:]) {
		np, err := freePort()
		if err != nil {
			return nil, err
		}
		tg.Ports[p] = np
		r.log.Warn("user-network port forward moves: connections to it end (bridge the guest to keep them)", "port", p, "new_port", np)
	}
	var rep *report.Report
	if strings.HasPrefix(mode, "qemu-") {
		rep, err = r.native(ctx, mode, src, tg)
	} else {
		rep, err = r.dmig(ctx, precopy.Mode(mode), src, tg)
	}
	if err != nil {
		return rep, err
	}
	// The VM now runs at the destination; the old QEMU has quit.
	for _, p := range r.owned {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			r.log.Warn("remove the old RAM file", "path", p, "error", err)
		}
	}
	r.owned = append(r.owned[:0], tg.RAMFiles()...)
	// QEMU serves one QMP client at a time: the next migration's.
	tg.VM().Mon.Close()
	r.cur = tg.VM().QMP
	r.console = filepath.Join(tg.Dir, "serial.log")
	return rep, nil
}

// dmig runs one of dmig's modes through a destination served in this
// process over loopback.
func (r *runner) dmig(ctx context.Context, mode precopy.Mode, src *qemu.Source, tg *qemu.Target) (*report.Report, error) {
	l, err := wire.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer l.Close()
	if err := r.shape(l.Addr().(*net.TCPAddr).Port); err != nil {
		return nil, err
	}
	served := make(chan error, 1)
	ot := newOracleTarget(tg, r, src, mode != precopy.ModePrecopy)
	go func() {
		served <- dbrestore.Serve(ctx, l, dbrestore.Config{Logger: r.log.Named("dest"), NewGuest: func(h *wire.Hello) (dbrestore.Guest, error) {
			tg.Command = h.Command
			return ot, nil
		}}, true, nil)
	}()
	lay := r.cfg.Layout
	if lay == "" && mode == precopy.ModeHybrid {
		if a, ok := src.AgentAddr(); ok {
			lay = a
		} else {
			r.log.Warn("the VM has no org.dmig.agent port and no --layout was given: hybrid sends every page")
		}
	}
	start := time.Now()
	rep, err := precopy.Run(ctx, precopy.Config{To: l.Addr().String(), Mode: mode, Downtime: r.cfg.Downtime,
		MaxIterations: r.cfg.MaxIterations, Compress: r.cfg.Compress, Codec: r.cfg.Codec, LayoutAddr: lay, LayoutTimeout: r.cfg.LayoutTimeout, Logger: r.log.Named("source"),
		MaxBandwidth: r.cfg.MaxBandwidth}, src)
	serr := <-served
	ot.finish()
	if rep != nil {
		pause := 0.0
		if o := r.oracle; o != nil {
			// The oracle ran inside the switchover: its pause is the
			// measurement's, not the mode's.
			pause = o.PauseMS
			rep.DowntimeMS = max(0, rep.DowntimeMS-pause)
			rep.TotalMS = max(0, rep.TotalMS-pause)
		}
		if rep.Outcome == report.Completed && tg.VM() != nil {
			// The oracle ran before the destination's cont: inside
			// the window from the source's STOP to its RESUME.
			r.guestDowntime(rep, src.Monitor(), tg.VM().Mon, start, qemu.RunResume, pause)
		}
	}
	if err == nil && serr != nil {
		err = fmt.Errorf("destination: %w", serr)
	}
	return rep, err
}

// guestDowntime makes rep's downtime guest-visible (qemu.SetGuestDowntime),
// from the events src and dst recorded since start, pauseMS of the
// oracle's taken out; a missing event leaves the tool's own figure, with
// a warning in rep and the log.
func (r *runner) guestDowntime(rep *report.Report, src, dst *qemu.Monitor, start time.Time, run qemu.RunPoint, pauseMS float64) {
	if err := qemu.SetGuestDowntime(rep, src.RecentEvents(), dst.RecentEvents(), start, run, pauseMS); err != nil {
		r.log.Warn("downtime is the tool's own figure, not guest-visible", "mode", rep.Mode, "error", err)
	}
}

// native runs QEMU's own migration to a destination QEMU started here.
func (r *runner) native(ctx context.Context, mode string, src *qemu.Source, tg *qemu.Target) (*report.Report, error) {
	var blocks []wire.Block
	for _, b := range src.RAM() {
		blocks = append(blocks, wire.Block{Name: b.Name, Size: b.Size})
	}
	if _, err := tg.Create(ctx, blocks); err != nil {
		return nil, err
	}
	// Paused after the migration (-S): the RAM oracle compares both sides
	// before the destination's guest runs.
	tg.Paused = true
	if _, err := tg.Start(ctx); err != nil {
		_ = tg.Kill()
		return nil, err
	}
	port, err := freePort()
	if err == nil {
		err = r.shape(port)
	}
	if err != nil {
		_ = tg.Kill()
		return nil, err
	}
	res, err := qemu.MigrateNative(ctx, src.Monitor(), tg.VM().Mon, qemu.NativeConfig{Mode: mode,
		URI: fmt.Sprintf("tcp:127.0.0.1:%d", port), MaxBandwidth: cmp.Or(r.cfg.MaxBandwidth, 10<<30), MaxPostcopyBandwidth: r.cfg.MaxBandwidth,
		DowntimeLimit: uint64(r.cfg.Downtime.Milliseconds()), Channels: r.cfg.Channels})
	if err != nil {
		rep := &report.Report{Mode: mode, Guest: src.Name(), Outcome: report.Aborted, Error: err.Error()}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		st, serr := src.Monitor().QueryStatus(sctx)
		cancel()
		if serr == nil && st.Status == "postmigrate" {
			// Post-copy had switched: the source cannot take the guest back.
			rep.Outcome = report.FailedAfterResume
		} else {
			_ = tg.Kill()
		}
		return rep, err
	}
	res.Report.Guest = src.Name()
	if w := res.Report.DowntimeWarning; w != "" {
		r.log.Warn("downtime is QEMU's own figure, not guest-visible", "mode", mode, "warning", w)
	}
	// The oracle runs after the destination's run point (MigrateNative
	// measured to it): no part of its pause is in the downtime.
	r.checkRAM(src, tg, false)
	if err := tg.VM().Mon.Cont(ctx); err != nil {
		// The source has handed over: the guest is the destination's.
		rep := res.Report
		rep.Outcome, rep.Error = report.FailedAfterResume, err.Error()
		return rep, fmt.Errorf("cont the destination: %w", err)
	}
	if err := src.Finish(ctx); err != nil {
		r.log.Warn("quit the source qemu", "error", err)
	}
	return res.Report, nil
}

// shape puts a migration's port behind the rate limit, if there is one.
func (r *runner) shape(port int) error {
	if r.shaper == nil {
		return nil
	}
	return r.shaper.shape(port)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
