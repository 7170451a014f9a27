package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/dmig/dmig/dbrestore"
	"github.com/dmig/dmig/internal/bandwidth"
	"github.com/dmig/dmig/internal/ctl"
	"github.com/dmig/dmig/internal/keeper"
	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/layout"
	"github.com/dmig/dmig/vmm/proc"
	"github.com/dmig/dmig/vmm/qemu"
	"github.com/dmig/dmig/wire"
)

type serveCmd struct {
	Listen         string         `required:"" help:"Address to accept migrations on (host:port)."`
	Dir            string         `default:"/dev/shm/dmig" help:"Directory of session state, one subdirectory per session: its journal and lock, the RAM files of the arriving guest, and for QEMU guests also their QMP socket and logs. A restarted serve must be given the same --dir to adopt sessions in post-copy."`
	Once           bool           `help:"Exit after the first migration, with its status."`
	FaultWorkers   int            `default:"4" name:"fault-workers" help:"Post-copy faults resolved at once."`
	RecoverTimeout time.Duration  `default:"30s" name:"recover-timeout" help:"After Go, how long a migration whose link to the source failed waits for the source to reconnect, and how long a guest left in post-copy by a dead serve waits for a restarted serve (same --dir) before it is killed. 0: no recovery."`
	LinkTimeout    time.Duration  `name:"link-timeout" default:"15s" help:"How long a connection from a source may go unanswered before it is taken for lost."`
	Disks          []string       `name:"disk" sep:"none" placeholder:"NAME=PATH" help:"Shared disk to restore storage-referenced pages from: the layout's disk name and its file or block device here (repeatable). Without it those pages come from the source."`
	RestoreRate    bandwidth.Rate `name:"restore-rate" placeholder:"RATE" help:"Cap the background restore of storage references once the guest runs here at RATE bytes/s, leaving the shared disk and the CPU to the guest's own I/O (units as for migrate --max-bandwidth: 200M, 1Gi; 0: no cap). A fault on a page still to restore is read at once whatever the cap."`
	tlsFlags
	VMM      string `default:"auto" enum:"auto,process,qemu" help:"How to start arriving guests: qemu (a QEMU with the source's command line rewritten, -incoming defer), process, or auto (qemu when the source's command is qemu-system-*)."`
	Insecure bool   `help:"Accept migrations without TLS. Anyone who can connect can then run commands and write guest memory on this host: test benches only." group:"Security"`
	ctlFlags
}

// serveLinger is how long dmig status lists a finished session with its
// outcome.
const serveLinger = 10 * time.Minute

func (c *serveCmd) Run(g *globals, ctx context.Context) error {
	moreProcs()
	log := g.logger("serve")
	tc, err := c.server()
	switch {
	case errors.Is(err, errNoTLS) && !c.Insecure:
		return &statusError{exitUsage, errors.New("refusing to serve without TLS: give --tls-cert, --tls-key and --tls-ca, or --insecure")}
	case errors.Is(err, errNoTLS):
		log.Warn("serving WITHOUT TLS (--insecure): any peer can start commands and write guest memory on this host")
	case err != nil:
		return &statusError{exitUsage, err}
	}
	l, err := wire.Listen(ctx, c.Listen)
	if err != nil {
		return &statusError{exitUsage, err}
	}
	defer l.Close()
	l.TLS = tc
	l.LinkTimeout = c.LinkTimeout
	disks := map[string]string{}
	for _, d := range c.Disks {
		name, path, err := layout.ParseDiskFlag(d)
		if err != nil {
			return &statusError{exitUsage, err}
		}
		disks[name] = path
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find this program for the sessions' keepers: %w", err)
	}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return &statusError{exitUsage, fmt.Errorf("session directory: %w", err)}
	}
	srv := c.listen("serve", serveLinger, log)
	defer srv.Close()
	log.Info("listening", "addr", l.Addr().String())
	cfg := dbrestore.Config{
		Watch: func(snap func() report.Live) func(error) {
			h := srv.Add(ctl.Registration{Live: snap})
			return func(err error) {
				outcome := report.Completed
				switch {
				case err != nil && snap().GoSent:
					outcome = report.FailedAfterResume
				case err != nil:
					outcome = report.Aborted
				}
				h.End(outcome, err)
			}
		},
		FaultWorkers:        c.FaultWorkers,
		Disks:               disks,
		PostcopyRestoreRate: int64(c.RestoreRate),
		Logger:              log,
		Dir:                 c.Dir,
		RecoverTimeout:      c.RecoverTimeout,
		Keeper: func(k keeper.Config) (io.WriteCloser, error) {
			return keeper.Spawn(exe, k)
		},
		NewGuest: func(h *wire.Hello) (dbrestore.Guest, error) {
			dir := dbrestore.SessionDir(c.Dir, h.Session)
			if c.VMM == "qemu" || c.VMM == "auto" && qemu.IsCommand(h.Command) {
				// KillWithParent until attached: see proc.Target.Start.
				return &qemu.Target{Command: h.Command, Dir: dir, Session: h.Session, KillWithParent: true}, nil
			}
			return proc.NewTarget(dir, h.Command)
		},
	}
	// Each session logs its own outcome ("migration complete", "migration
	// failed") with its figures; nothing more to say per result here.
	err = dbrestore.Serve(ctx, l, cfg, c.Once, nil)
	if err != nil {
		return &statusError{exitAborted, fmt.Errorf("migration: %w", err)}
	}
	return nil
}
