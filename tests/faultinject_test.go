//go:build faultinject

package tests

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dmig/dmig/internal/keeper"
	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/internal/testguest"
)

// TestFaultInject migrates small test guests between real `dmig migrate`
// and `dmig serve` processes, through a proxy, with one fault per run at a
// random instant of a random phase, and checks what issue 11 promises
// (docs/testing.md, "Fault injection"): no guest reads a wrong page; a
// source whose destination never ran runs again with RAM that verifies; a
// link that comes back and a serve restarted in time end `completed`; no
// stopped orphan and no RAM file are left behind.
//
// Built only with -tags faultinject (make fault-test, make fault-soak): the
// engine does not keep all of these promises yet, so `make test` leaves it
// out; it is not weakened to pass.
func TestFaultInject(t *testing.T) {
	fc := faultConfigFromEnv(t)
	feat := detectFeatures(t, fc.bin)
	sweepDeadRuns()
	fmt.Printf("fault injection: %d runs, %s=%#x (a failing run prints its own %s), binary %s\n",
		len(fc.specs), envFaultSeed, fc.seed, envFaultRunSeed, fc.bin)
	fmt.Printf("features: %s; expectations are the same without them\n", feat)
	tally := newFaultTally()
	start := time.Now()
	t.Run("run", func(t *testing.T) {
		for _, s := range fc.specs {
			t.Run(s.name(), func(t *testing.T) {
				t.Parallel()
				r := &faultRun{t: t, spec: s, feat: feat, bin: fc.bin}
				r.run()
				tally.add(r)
			})
		}
	})
	tally.print(os.Stdout, time.Since(start))
}

// Environment of TestFaultInject.
const (
	envFaultRuns    = "DMIG_FAULT_RUNS"     // number of runs (default 200)
	envFaultSeed    = "DMIG_FAULT_SEED"     // seed of the whole set of runs (default: the clock)
	envFaultRunSeed = "DMIG_FAULT_RUN_SEED" // run exactly the one run with this seed
	envFaultKinds   = "DMIG_FAULT_KINDS"    // comma-separated fault kinds to run (default all)
	envFaultModes   = "DMIG_FAULT_MODES"    // comma-separated modes to run (default all)
	envFaultBin     = "DMIG_FAULT_BIN"      // dmig binary (default: the one TestMain built)
	envFaultLogs    = "DMIG_FAULT_LOGS"     // non-empty: print every run's logs, not only a failed one's
)

// Sizes and timings of a run: small guests so that 200 runs fit in CI's
// ten minutes, a link slow enough that every phase lasts long enough to be
// hit (a 32 MiB post-copy takes about a second at 40 MiB/s).
const (
	fiGuestSize       = 32 << 20
	fiLinkRate        = 16 << 20 // bytes/s per connection (migrate opens three), migrate → serve
	fiWriteRate       = 2000     // guest page writes/s
	fiRecoverTimeout  = 2 * time.Second
	fiMaxOutage       = 1200 * time.Millisecond // recoverable faults: well within fiRecoverTimeout
	fiMigrateDeadline = 90 * time.Second        // a migrate that runs longer hangs
	fiAfterFault      = 30 * time.Second        // so does one that runs this long after the fault (connect timeout 10 s, recover timeout 2 s)
	// fiGrace bounds how long the system may take to reach its final state
	// after the migration ended: a guardian's second, the recover timeout.
	fiGrace = fiRecoverTimeout + 3*time.Second
	// fiCleanGrace bounds how long serve may take to remove RAM files once
	// their guests are gone.
	fiCleanGrace = 3 * time.Second
)

type faultKind string

const (
	fkKillServe     faultKind = "kill-serve"      // SIGKILL of dmig serve
	fkKillMigrate   faultKind = "kill-migrate"    // SIGKILL of dmig migrate
	fkKillDestGuest faultKind = "kill-dest-guest" // SIGKILL of the destination guest
	fkCutLink       faultKind = "cut-link"        // every connection reset, for good
	fkStallLink     faultKind = "stall-link"      // no byte passes for a while, connections intact
	fkFlapLink      faultKind = "flap-link"       // every connection reset, new ones refused for a while
	fkRestartServe  faultKind = "restart-serve"   // serve SIGKILLed and started again on its --dir and address
)

var faultKinds = []faultKind{fkKillServe, fkKillMigrate, fkKillDestGuest, fkCutLink, fkStallLink, fkFlapLink, fkRestartServe}

// recoverable faults must end `completed`: the link comes back, or serve
// does, within the recover timeout.
func (k faultKind) recoverable() bool {
	return k == fkStallLink || k == fkFlapLink || k == fkRestartServe
}

var faultModes = []string{"precopy", "postcopy", "hybrid"}

// A fault's instant is a phase's event plus an offset.
type faultPhase string

const (
	phStart      faultPhase = "start"      // migrate started
	phPrecopy    faultPhase = "precopy"    // a share of the guest's size went through the link
	phSwitchover faultPhase = "switchover" // the source guest stopped for switchover
	phPostcopy   faultPhase = "postcopy"   // the destination guest resumed (post-copy in postcopy and hybrid modes)
	phDone       faultPhase = "done"       // migrate exited
)

// faultSpec is one run, all of it drawn from seed.
type faultSpec struct {
	index  int
	seed   uint64
	mode   string
	kind   faultKind
	phase  faultPhase
	offset time.Duration // after the phase's event
	share  float64       // phPrecopy: bytes through the link, as a share of the guest's size
	outage time.Duration // recoverable faults: how long the link or serve is gone
}

// loopback is the run's own loopback address (all of 127/8 reaches lo).
// Its serve and proxy listen there: when a fault frees one of their ports
// (a killed serve, a cut link), a run beside it cannot take the port and
// receive this run's migration, since its listeners are on another address.
func (s faultSpec) loopback() string {
	return fmt.Sprintf("127.77.%d.%d", s.index/250, s.index%250+1)
}

func specFromSeed(seed uint64) faultSpec {
	r := rand.New(rand.NewPCG(seed, splitmix(seed)))
	s := faultSpec{seed: seed, mode: faultModes[r.IntN(len(faultModes))], kind: faultKinds[r.IntN(len(faultKinds))]}
	phases := []faultPhase{phStart, phPrecopy, phSwitchover, phPostcopy, phPostcopy, phDone}
	if s.mode == "postcopy" {
		phases = []faultPhase{phStart, phSwitchover, phPostcopy, phPostcopy, phPostcopy, phDone}
	}
	s.phase = phases[r.IntN(len(phases))]
	switch s.phase {
	case phStart:
		s.offset = randDur(r, 250*time.Millisecond)
	case phPrecopy:
		s.share = 0.05 + 1.2*r.Float64()
	case phSwitchover:
		s.offset = randDur(r, 25*time.Millisecond)
	case phPostcopy:
		w := 300 * time.Millisecond
		if s.mode == "postcopy" {
			w = 700 * time.Millisecond
		}
		s.offset = randDur(r, w)
	case phDone:
		s.offset = randDur(r, 100*time.Millisecond)
	}
	if s.kind.recoverable() {
		s.outage = 100*time.Millisecond + randDur(r, fiMaxOutage-100*time.Millisecond)
	}
	return s
}

func randDur(r *rand.Rand, max time.Duration) time.Duration {
	return time.Duration(r.Int64N(int64(max)))
}

func (s faultSpec) name() string {
	return fmt.Sprintf("%03d-%s-%s-%s", s.index, s.mode, s.kind, s.phase)
}

func (s faultSpec) String() string {
	at := fmt.Sprintf("%s+%v", s.phase, s.offset.Round(time.Millisecond))
	if s.phase == phPrecopy {
		at = fmt.Sprintf("%s at %.0f%% of the guest through the link", s.phase, 100*s.share)
	}
	out := ""
	if s.outage > 0 {
		out = fmt.Sprintf(", back after %v", s.outage.Round(time.Millisecond))
	}
	return fmt.Sprintf("seed %#x: %s, %s at %s%s", s.seed, s.mode, s.kind, at, out)
}

type faultConfig struct {
	seed  uint64
	specs []faultSpec
	bin   string
}

// faultConfigFromEnv draws the runs: slot i wants kind i mod 7 and mode
// (i + i/7) mod 3, so that every pair comes up once in 21 runs; its seed is the first
// of a seeded sequence whose spec has them (a spec is a function of its
// seed alone, so DMIG_FAULT_RUN_SEED reproduces any run).
func faultConfigFromEnv(t *testing.T) faultConfig {
	fc := faultConfig{bin: dmigBin}
	if b := os.Getenv(envFaultBin); b != "" {
		fc.bin = b
	}
	parse := func(name string) (uint64, bool) {
		v := os.Getenv(name)
		if v == "" {
			return 0, false
		}
		n, err := strconv.ParseUint(v, 0, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", name, v, err)
		}
		return n, true
	}
	if seed, ok := parse(envFaultRunSeed); ok {
		fc.seed = seed
		fc.specs = []faultSpec{specFromSeed(seed)}
		return fc
	}
	runs, ok := parse(envFaultRuns)
	if !ok {
		runs = 200
	}
	if fc.seed, ok = parse(envFaultSeed); !ok {
		fc.seed = uint64(time.Now().UnixNano())
	}
	kinds := filterList(t, envFaultKinds, faultKinds)
	modes := filterList(t, envFaultModes, faultModes)
	next := splitmix(fc.seed)
	for i := range int(runs) {
		kind, mode := kinds[i%len(kinds)], modes[(i+i/len(kinds))%len(modes)]
		for {
			next++
			s := specFromSeed(splitmix(next))
			if s.kind == kind && s.mode == mode {
				s.index = i
				fc.specs = append(fc.specs, s)
				break
			}
		}
	}
	return fc
}

func filterList[T ~string](t *testing.T, env string, all []T) []T {
	v := os.Getenv(env)
	if v == "" {
		return all
	}
	var out []T
	for _, w := range strings.Split(v, ",") {
		if !slices.Contains(all, T(w)) {
			t.Fatalf("%s: unknown %q (have %v)", env, w, all)
		}
		out = append(out, T(w))
	}
	return out
}

// features are the recovery features being written now, found in dmig's
// help. A run only passes a flag dmig has; what it expects does not change.
type features struct {
	recoverMigrate, recoverServe bool // --recover-timeout
	resume                       bool // `dmig resume`
	guardian                     bool // migrate --help mentions the guardian
}

func detectFeatures(t *testing.T, bin string) features {
	help := func(args ...string) string {
		out, err := exec.Command(bin, append(args, "--help")...).CombinedOutput()
		if err != nil && len(args) > 0 && args[0] != "resume" {
			t.Fatalf("%s %v --help: %v\n%s", bin, args, err, out)
		}
		return string(out)
	}
	mig, srv := help("migrate"), help("serve")
	top := help()
	return features{
		recoverMigrate: strings.Contains(mig, "--recover-timeout"),
		recoverServe:   strings.Contains(srv, "--recover-timeout"),
		resume:         regexp.MustCompile(`(?m)^\s+resume\b`).MatchString(top),
		guardian:       strings.Contains(strings.ToLower(mig), "guardian"),
	}
}

func (f features) String() string {
	has := func(b bool) string {
		if b {
			return "present"
		}
		return "absent"
	}
	return fmt.Sprintf("migrate --recover-timeout %s, serve --recover-timeout %s, dmig resume %s, guardian %s",
		has(f.recoverMigrate), has(f.recoverServe), has(f.resume), has(f.guardian))
}

// runLog is a log file of the run. Processes write to the file itself:
// what they start (serve's keepers, a guardian) shares it and may outlive
// them, and through a pipe their Wait would wait for those too.
type runLog struct{ f *os.File }

func newRunLog(t *testing.T, path string) *runLog {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &runLog{f: f}
}

func (l *runLog) Write(p []byte) (int, error) { return l.f.Write(p) }

func (l *runLog) String() string {
	b, _ := os.ReadFile(l.f.Name())
	return string(b)
}

// faultServe is a `dmig serve` that can be killed and started again on the
// same --dir and address, as systemd's Restart= does.
type faultServe struct {
	bin  string
	args []string
	addr string
	dir  string
	log  *runLog

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{}
	starts int
}

func (s *faultServe) start() error {
	s.mu.Lock()
	s.starts++
	fmt.Fprintf(s.log, "--- dmig serve start %d at %s ---\n", s.starts, time.Now().Format("15:04:05.000"))
	s.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for {
		cmd := exec.Command(s.bin, s.args...)
		cmd.Stderr = s.log.f
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			return err
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		s.mu.Lock()
		s.cmd, s.done = cmd, done
		s.mu.Unlock()
		if s.listening(done, deadline) {
			return nil
		}
		select {
		case <-done:
			// It exited at start (the address still held?): again.
		default:
			return fmt.Errorf("dmig serve not listening on %s after 10s", s.addr)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dmig serve exits at start: %v", cmd.ProcessState)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// listening waits until serve accepts connections, exits (done), or the
// deadline passes.
func (s *faultServe) listening(done <-chan struct{}, deadline time.Time) bool {
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", s.addr, time.Second); err == nil {
			c.Close()
			return true
		}
		select {
		case <-done:
			return false
		case <-time.After(5 * time.Millisecond):
		}
	}
	return false
}

func (s *faultServe) kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	<-done
	fmt.Fprintf(s.log, "--- dmig serve killed at %s ---\n", time.Now().Format("15:04:05.000"))
}

func (s *faultServe) alive() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// stop ends serve with SIGTERM (SIGKILL for its group after 10 s).
func (s *faultServe) stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// faultRun is one migration with one fault.
type faultRun struct {
	t    *testing.T
	spec faultSpec
	feat features
	bin  string

	dir, serveDir               string // the run's directory under /dev/shm, serve's --dir in it
	destStats, destLog, repPath string
	g                           *srcGuest
	srcLog                      *lockedBuffer
	serve                       *faultServe
	px                          *proxy

	mig     *exec.Cmd
	migLog  *runLog
	migDone chan struct{}

	start    time.Time
	injected time.Duration // since start
	note     string        // what the injection found
	restored chan struct{} // closed once a recoverable fault is over
	killed   []int         // destination guests the fault killed (they may take a moment to go)

	outcome    string
	violations []string
	// settleBy is when every promise must hold: fiGrace after migrate
	// ended (a guardian, a recover timeout and serve's clean-up all run
	// meanwhile).
	settleBy time.Time
}

// violate records that the run broke a promise (kind is the table's
// column) and fails it.
func (r *faultRun) violate(kind, format string, args ...any) {
	r.t.Helper()
	r.violations = append(r.violations, kind)
	r.t.Errorf("%s: %s", kind, fmt.Sprintf(format, args...))
}

func (r *faultRun) run() {
	t := r.t
	s := r.spec
	dir, err := os.MkdirTemp("/dev/shm", fmt.Sprintf("fi-%d-", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	r.dir = dir
	t.Cleanup(func() {
		for _, pid := range procsWith(dir, true) {
			syscall.Kill(pid, syscall.SIGCONT)
			syscall.Kill(pid, syscall.SIGKILL)
		}
		os.RemoveAll(dir)
	})
	t.Cleanup(r.dumpOnFailure)
	srcDir := filepath.Join(dir, "src")
	r.serveDir = filepath.Join(dir, "serve")
	for _, d := range []string{srcDir, r.serveDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	r.destStats, r.destLog, r.repPath = filepath.Join(dir, "dst.stats"), filepath.Join(dir, "dst-guest.log"), filepath.Join(dir, "report.json")
	r.srcLog, r.migLog = new(lockedBuffer), newRunLog(t, filepath.Join(dir, "migrate.log"))

	// The source guest; in hybrid mode a database-mode guest whose data
	// file (the "shared storage") the destination restores clean pages from.
	var layoutAddr, dataFile string
	if s.mode == "hybrid" {
		dg := startDBSource(t, dir, dbOpts{size: fiGuestSize, poolPart: 0.5, readRate: 1000, modifyRate: 300, flushRate: 250,
			writeRate: fiWriteRate, shm: srcDir, stderr: r.srcLog})
		r.g, layoutAddr, dataFile = dg.srcGuest, dg.layout, dg.dataFile
	} else {
		r.g = startSource(t, guestOpts{size: fiGuestSize, writeRate: fiWriteRate, fill: 1, shm: srcDir, stderr: r.srcLog})
	}

	args := append([]string{"serve", "--listen", "", "--dir", r.serveDir, "--log-format", "text"}, insecureFlag()...)
	if r.feat.recoverServe {
		args = append(args, "--recover-timeout", fiRecoverTimeout.String())
	}
	if dataFile != "" {
		args = append(args, "--disk", "data="+dataFile)
	}
	r.serve = &faultServe{bin: r.bin, addr: freeAddrOn(t, r.spec.loopback()), dir: r.serveDir, log: newRunLog(t, filepath.Join(dir, "serve.log"))}
	args[2] = r.serve.addr
	r.serve.args = args
	if err := r.serve.start(); err != nil {
		t.Fatalf("start dmig serve: %v\n%s", err, r.serve.log)
	}
	t.Cleanup(r.serve.stop)
	r.px = startProxyOn(t, r.spec.loopback(), r.serve.addr, fiLinkRate)

	margs := []string{"migrate", "--to", r.px.addr(), "--mode", s.mode, "--pid", strconv.Itoa(r.g.pid()), "--ram", r.g.ram,
		"--report", r.repPath, "--no-progress", "--log-format", "text", "--connect-timeout", "10s"}
	if r.feat.recoverMigrate {
		margs = append(margs, "--recover-timeout", fiRecoverTimeout.String())
	}
	if layoutAddr != "" {
		margs = append(margs, "--layout", layoutAddr)
	}
	// The destination guest logs to a file of the run, which outlives
	// whatever serve does with its session directory.
	for _, w := range []string{"/bin/sh", "-c", `exec "$0" testguest run --stats "$1" --stats-every 0 >>"$2" 2>&1`, r.bin, r.destStats, r.destLog} {
		margs = append(margs, "--dest-cmd="+w)
	}
	r.mig = exec.Command(r.bin, margs...)
	r.mig.Stderr, r.mig.Stdout = r.migLog.f, r.migLog.f
	r.mig.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	r.start = time.Now()
	if err := r.mig.Start(); err != nil {
		t.Fatal(err)
	}
	r.migDone = make(chan struct{})
	go func() { r.mig.Wait(); close(r.migDone) }()
	t.Cleanup(func() {
		syscall.Kill(-r.mig.Process.Pid, syscall.SIGKILL)
		<-r.migDone
	})

	r.inject()
	r.finish()
	r.check()
	fmt.Printf("%-40s %-22s %6.1fs %s\n", s.name(), r.outcome, time.Since(r.start).Seconds(), verdict(r))
}

// sweepDeadRuns removes what runs of a test binary that was killed (a
// timeout skips cleanups) left: /dev/shm/fi-PID-* of a dead PID, and the
// processes using them.
func sweepDeadRuns() {
	dirs, _ := filepath.Glob("/dev/shm/fi-*-*")
	for _, d := range dirs {
		f := strings.SplitN(filepath.Base(d), "-", 3)
		pid, err := strconv.Atoi(f[1])
		if err != nil || syscall.Kill(pid, 0) == nil {
			continue
		}
		for _, p := range procsWith(d, true) {
			syscall.Kill(p, syscall.SIGCONT)
			syscall.Kill(p, syscall.SIGKILL)
		}
		fmt.Printf("removed %s, left by dead test process %d\n", d, pid)
		os.RemoveAll(d)
	}
}

func verdict(r *faultRun) string {
	if !r.t.Failed() {
		return "ok"
	}
	v := r.violations
	if len(v) == 0 {
		v = []string{"setup"}
	}
	return "FAIL " + strings.Join(v, ",")
}

func (r *faultRun) migExited() bool {
	select {
	case <-r.migDone:
		return true
	default:
		return false
	}
}

// waitPhase waits for the spec's event, then its offset. If migrate exits
// first, the fault comes then (and says so).
func (r *faultRun) waitPhase() {
	s := r.spec
	deadline := time.Now().Add(fiMigrateDeadline)
	until := func(ok func() bool) bool {
		for !ok() {
			if (r.migExited() || time.Now().After(deadline)) && !ok() {
				r.note = fmt.Sprintf("migrate exited before the %s event; ", s.phase)
				return false
			}
			time.Sleep(time.Millisecond)
		}
		return true
	}
	var reached bool
	switch s.phase {
	case phStart:
		reached = true
	case phPrecopy:
		reached = until(func() bool { return float64(r.px.forwarded()) >= s.share*fiGuestSize })
	case phSwitchover:
		reached = until(func() bool { return procState(r.g.pid()) == "T" })
	case phPostcopy:
		// Serve logs it as it sends SIGCONT (the guest's own stats come
		// a little later).
		reached = until(func() bool { return strings.Contains(r.serve.log.String(), "guest resumed") })
	case phDone:
		select {
		case <-r.migDone:
			reached = true
		case <-time.After(fiMigrateDeadline):
		}
	}
	if reached {
		time.Sleep(s.offset)
	}
}

func (r *faultRun) inject() {
	s := r.spec
	r.waitPhase()
	r.injected = time.Since(r.start)
	switch s.kind {
	case fkKillServe:
		r.serve.kill()
	case fkKillMigrate:
		r.mig.Process.Kill()
	case fkKillDestGuest:
		deadline := time.Now().Add(10 * time.Second)
		for {
			if pids := guestsUnder(r.serveDir); len(pids) > 0 {
				for _, pid := range pids {
					syscall.Kill(pid, syscall.SIGKILL)
				}
				r.killed = pids
				r.note += fmt.Sprintf("killed destination guest %v", pids)
				break
			}
			if r.migExited() || time.Now().After(deadline) {
				r.note += "no destination guest to kill"
				break
			}
			time.Sleep(time.Millisecond)
		}
	case fkCutLink:
		r.px.cut()
	case fkStallLink:
		r.px.stall(s.outage)
	case fkFlapLink:
		r.px.flap(s.outage)
	case fkRestartServe:
		r.serve.kill()
		r.restored = make(chan struct{})
		go func() {
			defer close(r.restored)
			time.Sleep(s.outage)
			if err := r.serve.start(); err != nil {
				fmt.Fprintf(r.serve.log, "--- restart failed: %v ---\n", err)
			}
		}()
	}
	if r.note == "" {
		r.note = "injected"
	}
	r.note = fmt.Sprintf("%s at %v", r.note, r.injected.Round(time.Millisecond))
}

// finish waits for migrate's end and names the outcome.
func (r *faultRun) finish() {
	if r.restored != nil {
		<-r.restored
	}
	wait := min(fiMigrateDeadline-time.Since(r.start), r.injected+fiAfterFault-time.Since(r.start))
	hung := false
	select {
	case <-r.migDone:
	case <-time.After(wait):
		r.violate("migrate-hung", "dmig migrate still running %v after it started, %v after the fault", time.Since(r.start).Round(time.Second), (time.Since(r.start) - r.injected).Round(time.Second))
		syscall.Kill(-r.mig.Process.Pid, syscall.SIGKILL)
		<-r.migDone
		hung = true
	}
	st := r.mig.ProcessState
	var rep report.Report
	b, rerr := os.ReadFile(r.repPath)
	if rerr == nil {
		rerr = json.Unmarshal(b, &rep)
	}
	ws, _ := st.Sys().(syscall.WaitStatus)
	switch {
	case hung:
		r.outcome = "migrate-hung"
	case ws.Signaled():
		r.outcome = "migrate-killed"
		if r.spec.kind != fkKillMigrate {
			r.violate("migrate-died", "dmig migrate died of %v", ws.Signal())
		}
	case rerr != nil:
		r.outcome = fmt.Sprintf("exit-%d-no-report", st.ExitCode())
	default:
		r.outcome = string(rep.Outcome)
		want := map[report.Outcome]int{report.Completed: 0, report.Aborted: 3, report.FailedAfterResume: 4}[rep.Outcome]
		if st.ExitCode() != want {
			r.violate("exit-status", "dmig migrate exited %d with outcome %s (README: %d)", st.ExitCode(), rep.Outcome, want)
		}
	}
	if r.spec.kind.recoverable() && r.outcome != string(report.Completed) {
		r.violate("not-completed", "a recoverable fault (%s, gone %v) ended %s, want completed", r.spec.kind, r.spec.outage.Round(time.Millisecond), r.outcome)
	}
}

// destRan reports whether a destination guest resumed: it says so (it
// writes its stats file first thing after SIGCONT), or one runs (not
// stopped: it may not have written yet), or migrate's report says
// completed. Serve's "guest resumed" is no proof: SIGCONT to a guest
// killed meanwhile succeeds.
func (r *faultRun) destRan(running []int) bool {
	st, err := testguest.ReadStats(r.destStats)
	return err == nil && st.Resumed || len(running) > 0 || r.outcome == string(report.Completed)
}

// runningDest lists the destination guests that run: alive, not stopped,
// and (within 2 s) saying in their stats that they resumed. A guest serve
// or the fault has just killed shows R for a moment.
func (r *faultRun) runningDest() []int {
	deadline := time.Now().Add(2 * time.Second)
	for {
		var alive, confirmed []int
		st, err := testguest.ReadStats(r.destStats)
		for _, pid := range guestsUnder(r.serveDir) {
			if s := procState(pid); s == "T" || s == "gone" || s == "Z" || slices.Contains(r.killed, pid) {
				continue
			}
			alive = append(alive, pid)
			if err == nil && st.Resumed && st.PID == pid {
				confirmed = append(confirmed, pid)
			}
		}
		if len(confirmed) == len(alive) {
			return confirmed
		}
		if time.Now().After(deadline) {
			return alive // running without a word for 2 s: running still
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// destComplete reports whether serve finished a migration: every page is
// placed, so the destination's RAM file can be verified offline (before,
// its missing pages read as zeros through the file). Serve journals it
// before it says so: a serve killed in between left the journal only.
func (r *faultRun) destComplete() bool {
	if r.outcome == string(report.Completed) || strings.Contains(r.serve.log.String(), "migration complete") {
		return true
	}
	ents, _ := os.ReadDir(r.serveDir)
	for _, e := range ents {
		if j, err := keeper.ReadJournal(filepath.Join(r.serveDir, e.Name())); err == nil && j.State == keeper.Completed {
			return true
		}
	}
	return false
}

// check settles the run and asserts its promises.
func (r *faultRun) check() {
	t := r.t
	r.settleBy = time.Now().Add(fiGrace)
	// The destination guests end running or gone, none left waiting.
	for {
		var stopped []int
		for _, pid := range guestsUnder(r.serveDir) {
			if procState(pid) == "T" {
				stopped = append(stopped, pid)
			}
		}
		if len(stopped) == 0 {
			break
		}
		if time.Now().After(r.settleBy) {
			r.violate("dest-stopped", "destination guest(s) %v still stopped %v after the migration ended", stopped, fiGrace)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.checkOrphans()
	running := r.runningDest()
	ran := r.destRan(running)
	// The source, if it is not paused, may be dying (migrate kills it
	// once the destination has it all): give it a moment.
	for end := time.Now().Add(2 * time.Second); ran && time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if st := procState(r.g.pid()); st == "T" || st == "gone" || st == "Z" {
			break
		}
	}
	// A destination guest whose pages did not all arrive may run until
	// serve sees the source gone (it kills it), or a recovery completes
	// its migration: both by settleBy.
	for len(running) > 0 && !r.destComplete() && time.Now().Before(r.settleBy) {
		time.Sleep(20 * time.Millisecond)
		running = slices.DeleteFunc(running, func(pid int) bool {
			st := procState(pid)
			return st == "T" || st == "gone" || st == "Z"
		})
	}
	srcAlive := func() bool { st := procState(r.g.pid()); return st != "gone" && st != "Z" }
	completed := r.outcome == string(report.Completed)
	switch {
	case !ran:
		// The destination never ran: the source must, by itself or by
		// the one command dmig told the operator.
		r.checkSourceRuns()
	case len(running) > 0:
		if srcAlive() && procState(r.g.pid()) != "T" {
			r.violate("split-brain", "source guest runs (state %s) while destination guest(s) %v run", procState(r.g.pid()), running)
		}
		// Migrate killed, serve killed or the link cut for good: serve
		// may have placed every page and its word been lost, and then
		// its guest rightly runs (its RAM is verified below) while
		// migrate, unable to hear, reports the failure it saw.
		unheard := r.spec.kind == fkKillMigrate || r.spec.kind == fkKillServe || r.spec.kind == fkCutLink
		if !completed && !(unheard && r.destComplete()) {
			// A destination that runs although the migration failed.
			r.violate("dest-runs-after-failure", "destination guest(s) %v run %v after migrate ended with %s, serve has not placed every page", running, fiGrace, r.outcome)
		}
		if r.destComplete() {
			for _, pid := range running {
				r.verifyGuest("destination", pid, r.destRAM(pid), true)
			}
		}
	case completed:
		if r.spec.kind != fkKillDestGuest {
			r.violate("completed-dest-gone", "outcome completed but no destination guest runs (state of source: %s)", procState(r.g.pid()))
		}
	default:
		// The destination ran and is gone: the source must be paused
		// with its memory intact (resuming it would undo what the
		// destination did).
		switch st := procState(r.g.pid()); st {
		case "T":
			r.verifySourceAfterDest()
		case "gone", "Z":
			r.violate("guest-lost", "the destination guest ran and is gone, and so is the source")
		default:
			r.violate("source-rolled-back", "the destination guest ran and is gone, and the source runs again (state %s)", st)
		}
	}
	if completed && srcAlive() && procState(r.g.pid()) != "T" {
		r.violate("split-brain", "outcome completed and the source guest still runs (state %s)", procState(r.g.pid()))
	}

	// The guests end (as guests do); then nothing of theirs may remain
	// in serve's --dir, once serve (restarted, as systemd would, if the
	// fault killed it) has had fiCleanGrace.
	r.g.cmd.Process.Signal(syscall.SIGCONT)
	r.g.cmd.Process.Kill()
	<-r.g.exit
	for _, pid := range guestsUnder(r.serveDir) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	r.checkWrongPages()
	if !r.serve.alive() {
		if err := r.serve.start(); err != nil {
			t.Errorf("restart dmig serve to reclaim %s: %v", r.serveDir, err)
		}
	}
	deadline := time.Now().Add(fiCleanGrace)
	for {
		ram, dirs := r.ramLeft()
		if len(ram)+len(dirs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			if len(ram) > 0 {
				r.violate("ram-left", "RAM files %v after the guests exited and serve had %v", ram, fiCleanGrace)
			}
			if len(dirs) > 0 {
				r.violate("dir-left", "session directories %v after the guests exited and serve had %v", dirs, fiCleanGrace)
			}
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkSourceRuns: the destination never ran, so the source guest must
// run (within fiGrace: a guardian resumes it) with RAM that verifies. If it
// is paused and dmig printed a `dmig resume` command, that is run first,
// as the operator would.
func (r *faultRun) checkSourceRuns() {
	pid := r.g.pid()
	for procState(pid) == "T" && time.Now().Before(r.settleBy) {
		time.Sleep(20 * time.Millisecond)
	}
	if procState(pid) == "T" {
		if cmd := r.resumeCommand(); cmd != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			out, err := exec.CommandContext(ctx, cmd[0], cmd[1:]...).CombinedOutput()
			cancel()
			fmt.Fprintf(r.migLog, "--- test ran %q: %v\n%s", cmd, err, out)
			for end := time.Now().Add(2 * time.Second); procState(pid) == "T" && time.Now().Before(end); {
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	switch st := procState(pid); st {
	case "gone", "Z":
		r.violate("guest-lost", "the destination never ran and the source guest is gone")
		return
	case "T":
		r.violate("source-stopped", "the destination never ran and the source guest is still stopped %v later (dmig resume %v)", fiGrace, r.feat.resume)
		// Its memory must still be intact.
		r.verifyGuest("source", pid, []string{r.g.ram}, false)
		return
	}
	if !r.g.progressing(r.t) {
		r.violate("source-stuck", "the destination never ran and the source guest makes no progress (state %s)", procState(pid))
	}
	r.verifyGuest("source", pid, []string{r.g.ram}, true)
}

// resumeCommand is the `dmig resume ...` command dmig's output told the
// operator, with this binary for dmig (nil: none).
func (r *faultRun) resumeCommand() []string {
	re := regexp.MustCompile(`dmig resume[^\n"'` + "`" + `]*`)
	for _, out := range []string{r.migLog.String(), r.serve.log.String()} {
		if m := re.FindString(out); m != "" {
			f := strings.Fields(m)
			return append([]string{r.bin}, f[1:]...)
		}
	}
	return nil
}

// verifyGuest checks a live test guest's RAM (it is stopped for that, and
// continued if cont).
func (r *faultRun) verifyGuest(which string, pid int, ram []string, cont bool) {
	if len(ram) == 0 {
		r.violate("wrong-pages", "%s guest %d: its RAM files are not found", which, pid)
		return
	}
	if err := stopAndVerify(pid, ram, cont); err != nil {
		if st := procState(pid); st == "gone" || st == "Z" {
			return // it exited meanwhile: what it said is in its log
		}
		kind := "verify-error"
		if errors.Is(err, testguest.ErrMismatch) {
			kind = "wrong-pages"
		}
		r.violate(kind, "%s guest %d RAM %v: %v", which, pid, ram, err)
	}
}

// verifySourceAfterDest verifies the paused source's RAM once the
// destination guest has run: in hybrid mode that guest wrote the shared
// data file, so the disk is ahead of the source's RAM (one more reason
// never to resume the source then); only the RAM itself must hold.
func (r *faultRun) verifySourceAfterDest() {
	pid := r.g.pid()
	err := stopAndVerify(pid, []string{r.g.ram}, false)
	var me *testguest.MismatchError
	if errors.As(err, &me) && me.Report.More == 0 {
		me.Report.Mismatches = slices.DeleteFunc(me.Report.Mismatches, func(m testguest.Mismatch) bool { return m.Region == "disk" })
		if len(me.Report.Mismatches) == 0 {
			return
		}
	}
	if err != nil {
		r.violate("wrong-pages", "source guest %d RAM %s, the destination having run: %v", pid, r.g.ram, err)
	}
}

// destRAM names the RAM files of destination guest pid: its DMIG_RAM, or
// for a file already unlinked, the mapping in /proc/PID/map_files.
func (r *faultRun) destRAM(pid int) []string {
	env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	var paths []string
	for _, kv := range strings.Split(string(env), "\x00") {
		if v, ok := strings.CutPrefix(kv, "DMIG_RAM="); ok {
			paths = strings.Split(v, ":")
		}
	}
	maps, _ := os.ReadDir(fmt.Sprintf("/proc/%d/map_files", pid))
	for i, p := range paths {
		if _, err := os.Stat(p); err == nil {
			continue
		}
		for _, m := range maps {
			link := fmt.Sprintf("/proc/%d/map_files/%s", pid, m.Name())
			if target, _ := os.Readlink(link); target == p+" (deleted)" {
				paths[i] = link
				break
			}
		}
	}
	return paths
}

// checkOrphans: no process of this run is stopped with init for a parent.
func (r *faultRun) checkOrphans() {
	for {
		var orphans []string
		for _, pid := range procsWith(r.dir, true) {
			if st, ppid := procStatePPid(pid); st == "T" && ppid == 1 {
				cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
				orphans = append(orphans, fmt.Sprintf("%d (%s)", pid, strings.ReplaceAll(strings.TrimRight(string(cmd), "\x00"), "\x00", " ")))
			}
		}
		if len(orphans) == 0 {
			return
		}
		if time.Now().After(r.settleBy) {
			r.violate("stopped-orphan", "stopped process(es) with parent 1: %s", strings.Join(orphans, "; "))
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func procStatePPid(pid int) (string, int) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "gone", 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 2 {
		return "gone", 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return f[0], ppid
}

// checkWrongPages looks at what the guests said: the source's exit status
// and output, the destination guests' output and stats.
func (r *faultRun) checkWrongPages() {
	mismatch := testguest.ErrMismatch.Error()
	if st := r.g.cmd.ProcessState; st != nil && st.ExitCode() == testguest.ExitMismatch || strings.Contains(r.srcLog.String(), mismatch) {
		r.violate("wrong-pages", "the source guest read a wrong page (exit %v)", r.g.cmd.ProcessState)
	}
	if b, _ := os.ReadFile(r.destLog); strings.Contains(string(b), mismatch) {
		r.violate("wrong-pages", "a destination guest read a wrong page:\n%s", tail(string(b), 40))
	}
	if st, err := testguest.ReadStats(r.destStats); err == nil && st.State == "failed" {
		r.violate("dest-failed", "a destination guest failed: %+v", st)
	}
}

// ramLeft lists what the guests left in serve's --dir: RAM files, and
// session directories without one (a file at its top, such as a
// journal, is serve's own).
func (r *faultRun) ramLeft() (ram, dirs []string) {
	block := filepath.Base(r.g.ram)
	withRAM := map[string]bool{}
	var all []string
	filepath.WalkDir(r.serveDir, func(p string, d os.DirEntry, err error) error {
		if err != nil || p == r.serveDir {
			return nil
		}
		rel, _ := filepath.Rel(r.serveDir, p)
		switch {
		case d.IsDir():
			all = append(all, rel)
		case d.Name() == block:
			ram = append(ram, rel)
			withRAM[filepath.Dir(rel)] = true
		}
		return nil
	})
	for _, d := range all {
		if !withRAM[d] {
			dirs = append(dirs, d)
		}
	}
	return ram, dirs
}

func (r *faultRun) dumpOnFailure() {
	if !r.t.Failed() && os.Getenv(envFaultLogs) == "" {
		return
	}
	s := r.spec
	dst, _ := os.ReadFile(r.destLog)
	stats, _ := os.ReadFile(r.destStats)
	var src, mig, srv string
	if r.srcLog != nil {
		src = r.srcLog.String()
	}
	if r.migLog != nil {
		mig = r.migLog.String()
	}
	if r.serve != nil {
		srv = r.serve.log.String()
	}
	r.t.Logf(`%s %s
fault: %s (%s); outcome %s; violations %v
reproduce: %s=%#x make fault-test
--- dmig migrate ---
%s
--- dmig serve ---
%s
--- source guest ---
%s
--- destination guest(s) ---
%s
--- destination stats ---
%s`, map[bool]string{true: "FAILED", false: "passed"}[r.t.Failed()], s.name(), s, r.note, r.outcome, r.violations, envFaultRunSeed, s.seed,
		tail(mig, 150), tail(srv, 150), tail(src, 40), tail(string(dst), 80), stats)
}

// faultTally counts runs per fault kind, by outcome and by violation.
type faultTally struct {
	mu         sync.Mutex
	outcomes   map[faultKind]map[string]int
	violations map[faultKind]map[string]int
	runs, ok   map[faultKind]int
	failed     []string
}

func newFaultTally() *faultTally {
	return &faultTally{outcomes: map[faultKind]map[string]int{}, violations: map[faultKind]map[string]int{},
		runs: map[faultKind]int{}, ok: map[faultKind]int{}}
}

func (ft *faultTally) add(r *faultRun) {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	k := r.spec.kind
	ft.runs[k]++
	if ft.outcomes[k] == nil {
		ft.outcomes[k], ft.violations[k] = map[string]int{}, map[string]int{}
	}
	out := r.outcome
	if out == "" {
		out = "setup-failed"
	}
	ft.outcomes[k][out]++
	if !r.t.Failed() {
		ft.ok[k]++
		return
	}
	ft.failed = append(ft.failed, fmt.Sprintf("%s (%s): %s", r.spec.name(), r.spec, verdict(r)))
	seen := map[string]bool{}
	for _, v := range r.violations {
		if !seen[v] {
			seen[v] = true
			ft.violations[k][v]++
		}
	}
	if len(r.violations) == 0 {
		ft.violations[k]["setup"]++
	}
}

func (ft *faultTally) print(w *os.File, took time.Duration) {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	table := func(title string, m map[faultKind]map[string]int, lead string, leadv func(faultKind) int) {
		cols := map[string]bool{}
		for _, row := range m {
			for c := range row {
				cols[c] = true
			}
		}
		names := slices.Sorted(func(yield func(string) bool) {
			for c := range cols {
				if !yield(c) {
					return
				}
			}
		})
		fmt.Fprintf(w, "\n%s\n%-16s %5s %5s", title, "fault", "runs", lead)
		for _, c := range names {
			fmt.Fprintf(w, " %*s", max(len(c), 4), c)
		}
		fmt.Fprintln(w)
		total := map[string]int{}
		var runs, leads int
		for _, k := range faultKinds {
			if ft.runs[k] == 0 {
				continue
			}
			fmt.Fprintf(w, "%-16s %5d %5d", k, ft.runs[k], leadv(k))
			runs, leads = runs+ft.runs[k], leads+leadv(k)
			for _, c := range names {
				fmt.Fprintf(w, " %*d", max(len(c), 4), m[k][c])
				total[c] += m[k][c]
			}
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "%-16s %5d %5d", "total", runs, leads)
		for _, c := range names {
			fmt.Fprintf(w, " %*d", max(len(c), 4), total[c])
		}
		fmt.Fprintln(w)
	}
	okv := func(k faultKind) int { return ft.ok[k] }
	failv := func(k faultKind) int { return ft.runs[k] - ft.ok[k] }
	table("outcomes (dmig migrate's report; migrate-killed: the fault killed it; migrate-hung: the test did)", ft.outcomes, "ok", okv)
	table("failed runs by broken promise (a run may break several)", ft.violations, "fail", failv)
	slices.Sort(ft.failed)
	fmt.Fprintf(w, "\n%d failed runs, wall time %v\n", len(ft.failed), took.Round(time.Second))
	for _, f := range ft.failed {
		fmt.Fprintln(w, "  "+f)
	}
}
