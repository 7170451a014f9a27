package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/dmig/dmig/internal/drain"
	"github.com/dmig/dmig/precopy"
	"github.com/dmig/dmig/vmm/qemu"
)

// qmpWait bounds reaching a drain's QEMU VM over QMP and finding its RAM.
const qmpWait = 10 * time.Second

// drainGuest is the source of one drain entry and its layout endpoint: a
// process guest, or a QEMU VM found as 'dmig migrate --qmp' finds it. A VM
// that cannot be migrated is an error wrapping drain.ErrCannotMigrate,
// found before anything touches it. Call the func returned when done.
func drainGuest(ctx context.Context, log hclog.Logger, vm drain.VM, pid int, mode precopy.Mode) (guardedGuest, string, func(), error) {
	if vm.QMP == "" {
		guest, closeGuest, err := procGuest(pid, vm.RAM, vm.DestCmd)
		return guest, vm.Layout, closeGuest, err
	}
	// QEMU serves one QMP client at a time: a VM another client holds (a
	// dmig migrate of it) never greets.
	dctx, cancel := context.WithTimeout(ctx, qmpWait)
	guest, src, err := qemuGuest(dctx, vm.QMP)
	timedOut := dctx.Err() != nil && ctx.Err() == nil
	cancel()
	switch {
	case errors.Is(err, qemu.ErrNotShared):
		err = fmt.Errorf("%w: %w", drain.ErrCannotMigrate, err)
	case err != nil && timedOut:
		err = fmt.Errorf("%w: the QMP socket %s did not answer within %s: held by another client (a dmig migrate of the VM?) or QEMU is wedged", drain.ErrLocked, vm.QMP, qmpWait)
	}
	if err != nil {
		return guest, "", nil, err
	}
	if err := qemuMigratable(ctx, src, vm); err != nil {
		src.Close()
		return guest, "", nil, err
	}
	lay := vm.Layout
	if lay == "" {
		lay = agentLayout(log, mode, src)
	}
	return guest, lay, func() { src.Close() }, nil
}

// qemuMigratable refuses a VM the drain must not try: one not running or
// paused (a migration into this host under way, a VM shut down), or with a
// disk its destination would not open as the same file.
func qemuMigratable(ctx context.Context, src *qemu.Source, vm drain.VM) error {
	qctx, cancel := context.WithTimeout(ctx, qmpWait)
	defer cancel()
	st, err := src.Monitor().QueryStatus(qctx)
	if err != nil {
		return fmt.Errorf("query status of %s: %w", vm.QMP, err)
	}
	if st.Status != "running" && st.Status != "paused" {
		return fmt.Errorf("%w: the VM is %s, not running", drain.ErrCannotMigrate, st.Status)
	}
	if err := qemu.CheckSharedDisks(src.Pid(), src.DestCommand()[1:], vm.SharedStorage); err != nil {
		return fmt.Errorf("%w: %w", drain.ErrCannotMigrate, err)
	}
	return nil
}

// expandQEMU lists the QEMU VMs a template entry stands for: every unix
// socket of its qmp_dir, or every QEMU process of this host (discover:
// qemu), each named after itself.
func expandQEMU(_ context.Context, t drain.VM) ([]drain.VM, error) {
	var out []drain.VM
	add := func(name, qmp, skip string) {
		vm := t
		vm.QMPDir, vm.Discover = "", ""
		vm.Name, vm.QMP, vm.Skip = drain.ExpandedName(name), qmp, skip
		out = append(out, vm)
	}
	if t.QMPDir != "" {
		socks, err := qemu.SocketsIn(t.QMPDir)
		if err != nil {
			return nil, err
		}
		for _, s := range socks {
			add(strings.TrimSuffix(filepath.Base(s), filepath.Ext(s)), s, "")
		}
		return out, nil
	}
	found, err := qemu.FindRunning()
	if err != nil {
		return nil, err
	}
	self := os.Getpid()
	for _, r := range found {
		if r.Pid == self {
			continue
		}
		name := r.Name
		if name == "" && r.QMP != "" {
			name = strings.TrimSuffix(filepath.Base(r.QMP), filepath.Ext(r.QMP))
		}
		if name == "" {
			name = fmt.Sprintf("qemu-%d", r.Pid)
		}
		skip := ""
		if r.QMP == "" {
			skip = fmt.Sprintf("qemu pid %d has no QMP unix socket on its command line (-qmp unix:PATH,server=on,wait=off)", r.Pid)
		}
		add(name, r.QMP, skip)
	}
	return out, nil
}

// printDrainSummary prints one line per guest of a drain: what happened to
// it and, for a migration, its figures.
func printDrainSummary(g *globals, sum *drain.Summary) {
	if g.jsonLogs() {
		return
	}
	for _, r := range sum.VMs {
		line := fmt.Sprintf("%-16s %-13s to %s", r.Name, r.Status, r.To)
		if r.Outcome != "" {
			line += ": " + string(r.Outcome)
		}
		if r.Error != "" {
			line += ": " + r.Error
		}
		fmt.Fprintln(os.Stderr, line)
		if r.Report != nil {
			printSummary(r.Report)
		}
	}
}
