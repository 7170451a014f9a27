package testguest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
)

// The environment dmig gives the guest command it starts on the
// destination (see the package doc).
const (
	EnvIncoming = "DMIG_INCOMING"
	EnvRAM      = "DMIG_RAM"
)

// Config is one `dmig testguest run`.
type Config struct {
	// RAM is the RAM file(s), usually one; a new guest's RAM is split
	// evenly over them. Ignored for an incoming guest (DMIG_RAM).
	RAM []string
	// Params is the workload of a new guest; ignored when resuming.
	Params Params
	// Resume continues the guest already in RAM (after verifying it)
	// instead of creating a new one.
	Resume bool
	Run    RunOptions
}

// Start runs a test guest: an incoming one when the environment says so
// (DMIG_INCOMING=1), else a resumed one (c.Resume) or a new one. It returns
// when the workload ends (ctx done or c.Run.Duration passed), and a
// *MismatchError when the guest finds its state inconsistent.
func Start(ctx context.Context, c Config) error {
	if c.Run.Logger == nil {
		c.Run.Logger = hclog.NewNullLogger()
	}
	paths, incoming, err := incomingEnv()
	if err != nil {
		return err
	}
	switch {
	case incoming:
		return runIncoming(ctx, paths, c.Run)
	case len(c.RAM) == 0:
		return fmt.Errorf("%w: no RAM file", ErrParams)
	case c.Resume:
		g, err := mapGuest(c.RAM, true)
		if err != nil {
			return err
		}
		defer g.Close()
		return g.resume(ctx, c.Run)
	}
	if err := CreateFiles(c.RAM, c.Params); err != nil {
		return err
	}
	g, err := Open(c.RAM...)
	if err != nil {
		return err
	}
	defer g.Close()
	c.Run.Logger.Info("test guest started", "ram", strings.Join(c.RAM, ":"), "size", c.Params.Size, "data_pages", g.geo.dataPages,
		"frames", g.geo.frames, "db_pages", g.geo.dbPages, "pid", os.Getpid())
	return g.run(ctx, c.Run, Stats{})
}

// Open maps an existing guest's RAM file(s) (and data file) read-write
// without verifying them; Run then continues its workload.
func Open(paths ...string) (*Guest, error) {
	g, err := mapGuest(paths, true)
	if err != nil {
		return nil, err
	}
	if err := g.attach(); err != nil {
		g.Close()
		return nil, err
	}
	return g, nil
}

func incomingEnv() ([]string, bool, error) {
	v, ok := os.LookupEnv(EnvIncoming)
	if !ok || v == "" || v == "0" {
		return nil, false, nil
	}
	if v != "1" {
		return nil, false, fmt.Errorf("%w: %s=%q, want 1", ErrIncoming, EnvIncoming, v)
	}
	ram := os.Getenv(EnvRAM)
	if ram == "" {
		return nil, false, fmt.Errorf("%w: %s=1 without %s", ErrIncoming, EnvIncoming, EnvRAM)
	}
	return strings.Split(ram, ":"), true, nil
}

// runIncoming is the destination side of the contract: map the RAM (dmig
// created it sparse), stop until dmig has placed the pages, then verify all
// of it, redo the interrupted operations and continue the workload.
func runIncoming(ctx context.Context, paths []string, o RunOptions) error {
	g, err := mapGuest(paths, true)
	if err != nil {
		return err
	}
	defer g.Close()
	if err := stopSelf(); err != nil {
		return err
	}
	o.Logger.Info("incoming test guest resumed", "ram", strings.Join(paths, ":"), "pid", os.Getpid())
	return g.resume(ctx, o)
}

// resume verifies RAM that this process has not touched yet, finishes the
// interrupted operations and continues the workload.
func (g *Guest) resume(ctx context.Context, o RunOptions) error {
	if err := g.attach(); err != nil {
		if errors.Is(err, ErrNotGuest) {
			var r Report
			r.add(0, "header", "a test guest header", err.Error())
			return &MismatchError{Report: r}
		}
		return err
	}
	if o.SkipResumeVerify {
		// Redo still needs intents that name real pages and frames.
		r := g.checkIntents()
		if !r.OK() {
			return &MismatchError{Report: r}
		}
		o.Logger.Info("test guest resumed without verifying", "counter", g.Counter(), "interrupted", strings.Join(r.Interrupted, "; "))
		return g.run(ctx, o, Stats{Resumed: true})
	}
	if o.StatsFile != "" {
		// Verifying a large guest (every page a post-copy fault) takes a
		// while: say so, so a watcher knows the guest is alive.
		s := Stats{PID: os.Getpid(), State: "verifying", Resumed: true, Counter: g.Counter(), Time: time.Now().UTC()}
		if err := writeStats(o.StatsFile, s); err != nil {
			return err
		}
	}
	// The RAM as found, before redo writes to it: a pre-copy test compares
	// it with the source's RAM at switchover (HashRAM of the source files).
	hash := hashBytes(g.mem)
	r, err := g.verify()
	if err != nil {
		return err
	}
	if !r.OK() {
		return &MismatchError{Report: r}
	}
	o.Logger.Info("test guest verified", "pages", r.Pages, "db_file_pages", r.DBFilePages, "counter", r.Counter,
		"ram_xxh3", hash, "interrupted", strings.Join(r.Interrupted, "; "))
	return g.run(ctx, o, Stats{Resumed: true, VerifiedPages: r.Pages, ResumeRAMHash: hash})
}

// Args returns the `dmig` arguments that run c (without the binary).
func (c Config) Args() []string {
	p := c.Params
	a := []string{"testguest", "run"}
	for _, r := range c.RAM {
		a = append(a, "--ram", r)
	}
	if c.Resume {
		a = append(a, "--resume")
	} else {
		a = append(a,
			"--size", strconv.FormatInt(p.Size, 10),
			"--seed", strconv.FormatUint(p.Seed, 10),
			"--fill", ftoa(p.Fill),
			"--write-rate", strconv.FormatInt(p.WriteRate, 10),
			"--hot", ftoa(p.Hot),
			"--hot-share", ftoa(p.HotShare),
			"--read-share", ftoa(p.ReadShare))
		if p.DB.Pages > 0 {
			a = append(a,
				"--db-file", p.DB.File,
				"--db-pages", strconv.FormatInt(p.DB.Pages, 10),
				"--pool-frames", strconv.FormatInt(p.DB.Frames, 10),
				"--pool-fill", ftoa(p.DB.Fill),
				"--db-read-rate", strconv.FormatInt(p.DB.ReadRate, 10),
				"--db-modify-rate", strconv.FormatInt(p.DB.ModifyRate, 10),
				"--db-flush-rate", strconv.FormatInt(p.DB.FlushRate, 10))
			if p.DB.DiskID != "" {
				a = append(a, "--db-disk-id", p.DB.DiskID)
			}
		}
	}
	return append(a, c.Run.args()...)
}

func (o RunOptions) args() []string {
	var a []string
	if o.Duration > 0 {
		a = append(a, "--duration", o.Duration.String())
	}
	if o.StatsFile != "" {
		a = append(a, "--stats", o.StatsFile)
	}
	if o.StatsEvery > 0 {
		a = append(a, "--stats-every", o.StatsEvery.String())
	}
	if o.LayoutListen != "" {
		a = append(a, "--layout-listen", o.LayoutListen)
	}
	if o.SkipResumeVerify {
		a = append(a, "--skip-resume-verify")
	}
	return a
}

func ftoa(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// Command returns the command that runs guest c with the dmig binary at
// binary (bin/dmig after `make build`), for tests that start a guest as a
// child process. c.Run.Logger is not passed on: the child logs to its
// stderr.
func Command(ctx context.Context, binary string, c Config) *exec.Cmd {
	return exec.CommandContext(ctx, binary, c.Args()...)
}

// IncomingCommand returns the command dmig's destination would run for an
// incoming test guest on the RAM file(s) ram: `dmig testguest run` with
// DMIG_INCOMING=1 and DMIG_RAM in its environment.
func IncomingCommand(ctx context.Context, binary string, ram []string, o RunOptions) *exec.Cmd {
	cmd := exec.CommandContext(ctx, binary, append([]string{"testguest", "run"}, o.args()...)...)
	cmd.Env = append(os.Environ(), EnvIncoming+"=1", EnvRAM+"="+strings.Join(ram, ":"))
	return cmd
}
