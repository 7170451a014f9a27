package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/dmig/dmig/compare"
	"github.com/dmig/dmig/internal/bandwidth"
	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/vmm/qemu"
)

type compareCmd struct {
	QMP        string         `name:"qmp" xor:"vm" required:"" placeholder:"SOCKET" help:"QMP socket of the running QEMU VM."`
	Pid        int            `name:"pid" xor:"vm" required:"" help:"pid of the running QEMU (its QMP socket is read from its command line)."`
	Modes      []string       `default:"hybrid,precopy,postcopy,qemu-precopy,qemu-multifd,qemu-multifd-zstd,qemu-postcopy,qemu-postcopy-preempt" help:"Modes to run, in order (comma-separated): hybrid, precopy, postcopy (dmig's); qemu-precopy, qemu-multifd, qemu-multifd-zstd, qemu-postcopy, qemu-postcopy-preempt (QEMU's own)."`
	Rounds     int            `default:"1" help:"Run every mode this many times, in turn."`
	Dir        string         `default:"/var/tmp/dmig-compare" help:"Directory for the destinations' sockets and logs (one subdirectory per migration)."`
	RAMDir     string         `name:"ram-dir" default:"/dev/shm" help:"tmpfs directory for the destinations' RAM files."`
	Workload   string         `placeholder:"CMD" help:"Shell command loading the guest for the whole run: sysbench ... --report-interval=1 --time=0 run (its interval lines give the throughput)."`
	Warmup     time.Duration  `default:"10s" help:"Workload time before each migration (the 'before' throughput)."`
	Cooldown   time.Duration  `default:"10s" help:"Workload time after each migration (the 'after' throughput)."`
	Check      string         `placeholder:"CMD" help:"Shell command whose output must not change across migrations (e.g. mariadb -e 'CHECKSUM TABLE ...' on tables the workload only reads)."`
	Layout     string         `placeholder:"ADDR" help:"Guest agent layout endpoint for hybrid (default: the VM's org.dmig.agent virtio-serial socket)."`
	LayoutWait time.Duration  `name:"layout-timeout" default:"5s" help:"Give up a layout fetch after this long (a TCG guest needs longer)."`
	Downtime   time.Duration  `default:"50ms" help:"Downtime budget of dmig's modes and QEMU's downtime-limit."`
	MaxBW      bandwidth.Rate `name:"max-bandwidth" placeholder:"RATE" help:"Cap every mode's migration traffic at RATE bytes/s (125M, 1Gi, 125MB/s), dmig's and QEMU's alike (QEMU's max-bandwidth and max-postcopy-bandwidth). Default none: QEMU then gets max-bandwidth 10 GiB/s, since its own default is 128 MiB/s."`
	MaxIter    int            `name:"max-iterations" default:"30" help:"dmig's pre-copy passes at most."`
	Compress   bool           `help:"Compress dmig's page data (--codec); of QEMU's modes only qemu-multifd-zstd compresses."`
	Codec      string         `enum:"zstd,s2" default:"zstd" help:"Codec of --compress: zstd sends the fewest bytes (links of about 1 Gbit/s and below, cores to spare); s2 1.5-2x as many at a quarter of the CPU (a busy host, faster links)."`
	Channels   int            `default:"2" help:"multifd-channels of QEMU's multifd modes (dmig's modes use 2 bulk connections)."`
	QEMUBinary string         `name:"qemu-binary" placeholder:"PATH" help:"Start the destination QEMUs with this binary (default: the source's own). It must be the VM's QEMU version: start the VM with it too (make qemu10 installs QEMU 10 as /opt/dmig/qemu10/bin/qemu-system-x86_64)."`
	AllowBuggy bool           `name:"allow-buggy-qemu" help:"Run QEMU's own modes on a TCG VM of a QEMU older than 9.0, whose migration loses pages (fixed by QEMU commit 03bfc2188f)."`
	Rate       string         `placeholder:"RATE" help:"Shape the migration traffic on the loopback to a link of this rate (tc syntax, e.g. 1gbit), dmig's and QEMU's alike; replaces lo's root qdisc during the run."`
	Timeout    time.Duration  `default:"15m" help:"Give up a migration after this long (QEMU's pre-copy never does)."`
	JSON       string         `name:"json" placeholder:"FILE" help:"Write the result as JSON ('-': stdout, instead of the table)."`
	CSV        string         `name:"csv" placeholder:"FILE" help:"Write one CSV row per migration ('-': stdout, instead of the table)."`
	Plot       string         `placeholder:"FILE" help:"Draw the comparison into FILE.png or FILE.svg."`
}

func (c *compareCmd) Run(g *globals, ctx context.Context) error {
	moreProcs()
	log := g.logger("compare")
	sock := c.QMP
	if c.Pid != 0 {
		var err error
		if sock, err = qemu.QMPSocket(c.Pid); err != nil {
			return &statusError{exitUsage, err}
		}
	}
	res, err := compare.Run(ctx, compare.Config{
		QMP: sock, Modes: c.Modes, Rounds: c.Rounds, Dir: c.Dir, RAMDir: c.RAMDir,
		Workload: c.Workload, Warmup: c.Warmup, Cooldown: c.Cooldown, Check: c.Check,
		Rate: c.Rate, Layout: c.Layout, LayoutTimeout: c.LayoutWait, Downtime: c.Downtime, MaxBandwidth: uint64(c.MaxBW), MaxIterations: c.MaxIter, Compress: c.Compress, Codec: codecOf(c.Codec),
		Channels: c.Channels, QEMUBinary: c.QEMUBinary, AllowBuggyQEMU: c.AllowBuggy,
		Timeout: c.Timeout, Logger: log,
		Done: func(m compare.Migration) {
			log.Info("migration done", "mode", m.Mode, "round", m.Round, "seconds", m.EndS-m.StartS, "check", m.Check, "error", m.Error)
		},
	})
	if errors.Is(err, compare.ErrMode) || errors.Is(err, compare.ErrBuggyQEMU) || errors.Is(err, compare.ErrQEMUVersion) {
		return &statusError{exitUsage, err}
	}
	if res == nil {
		return err
	}
	if werr := c.write(res); werr != nil {
		err = errors.Join(err, werr)
	}
	if err != nil {
		for _, m := range res.Migrations {
			if m.Report != nil && m.Report.Outcome == report.FailedAfterResume {
				return &statusError{exitAfterResume, err}
			}
		}
		return err
	}
	if !res.OK() {
		bad := 0
		for i := range res.Migrations {
			if !res.Migrations[i].OK() {
				bad++
			}
		}
		return fmt.Errorf("comparison: %d of %d migrations failed, changed the check's output or saw workload errors (the VM runs at %s)", bad, len(res.Migrations), res.QMP)
	}
	fmt.Fprintf(os.Stderr, "the VM now runs at %s\n", res.QMP)
	return nil
}

func (c *compareCmd) write(res *compare.Result) error {
	var errs []error
	if c.JSON != "-" && c.CSV != "-" {
		errs = append(errs, compare.WriteTable(os.Stdout, res))
	}
	errs = append(errs, writeJSON(c.JSON, res))
	if c.CSV != "" {
		errs = append(errs, writeWith(c.CSV, func(f *os.File) error { return compare.WriteCSV(f, res) }))
	}
	if c.Plot != "" {
		errs = append(errs, compare.WritePlot(c.Plot, res))
	}
	return errors.Join(errs...)
}

// writeWith writes a file with fn ("-": stdout).
func writeWith(path string, fn func(*os.File) error) error {
	if path == "-" {
		return fn(os.Stdout)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := fn(f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}
