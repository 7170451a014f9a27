// Command dmig live-migrates virtual machines running databases between hosts
// that share storage. This file is the CLI: kong flags become a config and a
// call into the engine packages; no migration logic lives here.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/alecthomas/kong"
	"github.com/hashicorp/go-hclog"
)

// globals are the flags every command takes.
type globals struct {
	LogLevel  string `help:"Log level: trace, debug, info, warn, error." default:"info" enum:"trace,debug,info,warn,error"`
	LogFormat string `help:"Log format: text, json, or auto (json when stderr is not a terminal)." default:"auto" enum:"auto,text,json"`
	// A profile of the command itself, for finding where a migration's
	// CPU goes on a host (go tool pprof FILE); written when it exits.
	CPUProfile string `name:"cpu-profile" help:"Write a Go CPU profile of this command to FILE when it exits (diagnostics)." type:"path" placeholder:"FILE"`
}

// logger builds the process's logger from the global flags.
func (g *globals) logger(name string) hclog.Logger {
	json := g.jsonLogs()
	return hclog.New(&hclog.LoggerOptions{
		Name:       name,
		Level:      hclog.LevelFromString(g.LogLevel),
		JSONFormat: json,
		Output:     os.Stderr,
	})
}

type cli struct {
	globals

	Migrate    migrateCmd    `cmd:"" help:"Migrate a guest to a destination running 'dmig serve' (source side)."`
	Serve      serveCmd      `cmd:"" help:"Accept migrations (destination side)."`
	Drain      drainCmd      `cmd:"" help:"Migrate every guest listed in a config off this host (for cron)."`
	Status     statusCmd     `cmd:"" help:"Show the migrations this host runs, as source or destination: phase, pass, bytes, pages left, rate, ETA."`
	Cancel     cancelCmd     `cmd:"" help:"Abort a migration this host runs as source, before Go: the source guest runs on (refused after Go)."`
	SetBW      setBWCmd      `cmd:"" name:"set-bandwidth" help:"Change (or lift) the bandwidth cap of a migration this host runs as source, while it runs."`
	Resume     resumeCmd     `cmd:"" help:"Resume a source guest a failed migration left paused (once its destination is known dead)."`
	Guardian   guardianCmd   `cmd:"" hidden:"" help:"Resume a source guest if the migration that started this dies before Go (started by migrate and drain)."`
	Version    versionCmd    `cmd:"" help:"Print the version."`
	GuestAgent guestAgentCmd `cmd:"" name:"guest-agent" help:"In-guest agent: layout of the database buffer pool (run as root in the guest)."`
	Testguest  testguestCmd  `cmd:"" help:"Self-verifying test guest (the process-guest contract)."`
	Qemu       qemuCmd       `cmd:"" name:"qemu" help:"QEMU guests: discover a VM's RAM, run QEMU's own migration for comparison."`
	Keeper     keeperCmd     `cmd:"" hidden:"" help:"Keep one arriving guest's session directory (started by serve)."`
	Compare    compareCmd    `cmd:"" help:"Migrate a QEMU VM on this host in each mode (dmig's and QEMU's) under one workload and compare: table, JSON, CSV, plot."`
}

type versionCmd struct{}

func (versionCmd) Run() error {
	fmt.Println("dmig", version)
	return nil
}

// startCPUProfile starts a CPU profile into path ("": none) and returns
// what ends it and writes the file.
func startCPUProfile(path string) (func() error, error) {
	if path == "" {
		return func() error { return nil }, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile %s: %w", path, err)
	}
	return func() error {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			return fmt.Errorf("cpu profile %s: %w", path, err)
		}
		return nil
	}, nil
}

// version is set at link time (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	var c cli
	kctx := kong.Parse(&c,
		kong.Name("dmig"),
		kong.Description("Live-migrate database VMs between hosts that share storage."),
		kong.UsageOnError(),
		kong.Exit(usageExit),
	)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	kctx.BindTo(ctx, (*context.Context)(nil))
	stopProfile, err := startCPUProfile(c.CPUProfile)
	if err == nil {
		err = kctx.Run(&c.globals)
		err = errors.Join(err, stopProfile())
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "dmig: %v\n", err)
		os.Exit(exitCode(err))
	}
}

// exitCode maps an error to the process exit status. Commands that need a
// specific status return an *exitError.
func exitCode(err error) int {
	// errors.As, not a type assertion: kong joins a command's error with
	// its hooks' (errors.Join), hiding the command's own type.
	var e interface{ ExitCode() int }
	if errors.As(err, &e) {
		return e.ExitCode()
	}
	return 1
}
