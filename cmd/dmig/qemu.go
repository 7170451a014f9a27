package main

import (
	"context"
	"encoding/json"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/dmig/dmig/precopy"
	"github.com/dmig/dmig/vmm/proc"
	"github.com/dmig/dmig/vmm/qemu"
)

// qemuGuest connects to the QEMU VM behind the QMP socket qmp and finds
// its RAM: the source of 'dmig migrate --qmp' and of a drain's QEMU VMs.
// The caller closes the Source.
func qemuGuest(ctx context.Context, qmp string) (guardedGuest, *qemu.Source, error) {
	src, err := qemu.NewSource(ctx, qmp)
	if err != nil {
		return guardedGuest{}, nil, err
	}
	guest := guardedGuest{Guest: src, ref: guestRef{qmp: qmp}, release: func() { src.Close() }}
	guest.running = func(ctx context.Context) (bool, error) {
		st, err := src.Monitor().QueryStatus(ctx)
		return st.Running, err
	}
	return guest, src, nil
}

// procGuest is the source of a process guest; call the func returned when
// the migration is over.
func procGuest(pid int, ram, destCmd []string) (guardedGuest, func(), error) {
	src, err := proc.NewSource(pid, ram, destCmd)
	if err != nil {
		return guardedGuest{}, nil, err
	}
	h, err := proc.Open(pid)
	if err != nil {
		return guardedGuest{}, nil, err
	}
	return guardedGuest{Guest: src, ref: guestRef{pid: pid}, running: h.Running}, func() { h.Close() }, nil
}

// agentLayout is the layout endpoint of a QEMU VM named without one: in
// hybrid mode, its guest agent's virtio-serial socket from its command
// line, as 'dmig compare' finds it.
func agentLayout(log hclog.Logger, mode precopy.Mode, src *qemu.Source) string {
	if mode != precopy.ModeHybrid {
		return ""
	}
	if a, ok := src.AgentAddr(); ok {
		log.Info("layout endpoint from the VM's command line", "layout", a)
		return a
	}
	log.Warn("the VM has no " + qemu.AgentChannel + " virtio-serial port and no layout endpoint was given: every page goes as data")
	return ""
}

// qemuCmd is `dmig qemu`: operator tools for QEMU guests.
type qemuCmd struct {
	Discover qemuDiscoverCmd `cmd:"" help:"Print a running QEMU's RAM blocks, its mappings of them and the guest-physical map, as JSON."`
	Migrate  qemuMigrateCmd  `cmd:"" help:"Run QEMU's own migration (qemu-precopy, qemu-postcopy) for comparison; prints the report as JSON."`
}

type qemuDiscoverCmd struct {
	QMP string `name:"qmp" xor:"vm" required:"" help:"QMP unix socket of the running QEMU."`
	Pid int    `name:"pid" xor:"vm" required:"" help:"pid of the running QEMU (its QMP socket is read from its command line)."`
}

func (c *qemuDiscoverCmd) Run(ctx context.Context) error {
	sock := c.QMP
	if c.Pid != 0 {
		var err error
		if sock, err = qemu.QMPSocket(c.Pid); err != nil {
			return err
		}
	}
	src, err := qemu.NewSource(ctx, sock)
	if err != nil {
		return err
	}
	defer src.Close()
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(src.Machine())
}

type qemuMigrateCmd struct {
	Mode          string        `help:"qemu-precopy, qemu-multifd, qemu-multifd-zstd, qemu-postcopy or qemu-postcopy-preempt." enum:"qemu-precopy,qemu-multifd,qemu-multifd-zstd,qemu-postcopy,qemu-postcopy-preempt" default:"qemu-precopy"`
	From          string        `name:"from" required:"" help:"QMP socket of the source QEMU."`
	To            string        `name:"to" required:"" help:"QMP socket of the destination QEMU (started with -incoming defer)."`
	URI           string        `name:"uri" default:"tcp:127.0.0.1:4444" help:"Address the destination listens on for the migration stream."`
	Bandwidth     uint64        `help:"max-bandwidth in MiB/s." default:"1024"`
	Downtime      time.Duration `help:"downtime-limit." default:"300ms"`
	PostcopyAfter time.Duration `name:"postcopy-after" help:"Switch to post-copy after this long even if the first pass has not ended (0: after the first pass)."`
	Channels      int           `help:"multifd-channels of the multifd modes." default:"2"`
}

func (c *qemuMigrateCmd) Run(ctx context.Context) error {
	src, err := qemu.Dial(ctx, c.From)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := qemu.Dial(ctx, c.To)
	if err != nil {
		return err
	}
	defer dst.Close()
	res, err := qemu.MigrateNative(ctx, src, dst, qemu.NativeConfig{
		Mode: c.Mode, URI: c.URI, MaxBandwidth: c.Bandwidth << 20,
		DowntimeLimit: uint64(c.Downtime.Milliseconds()), PostcopyAfter: c.PostcopyAfter, Channels: c.Channels,
	})
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(res.Report)
}
