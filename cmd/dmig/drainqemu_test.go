package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/dmig/dmig/internal/drain"
	"github.com/dmig/dmig/precopy"
	"github.com/dmig/dmig/vmm/qemu"
)

// TestExpandQEMUDiscover: discover: qemu finds a QEMU of this host by its
// -name with its QMP socket, and one without a QMP socket as skipped.
func TestExpandQEMUDiscover(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatalf("qemu-system-x86_64 is needed (.ci/run installs qemu-system-x86): %v", err)
	}
	dir := t.TempDir()
	name := fmt.Sprintf("dmig-expand-%d", os.Getpid())
	qmp := filepath.Join(dir, "qmp.sock")
	start := func(args ...string) {
		t.Helper()
		cmd := exec.Command("qemu-system-x86_64", append([]string{"-machine", "q35,accel=tcg", "-m", "16M", "-nodefaults", "-display", "none"}, args...)...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	}
	start("-name", "guest="+name, "-qmp", "unix:"+qmp+",server=on,wait=off")
	start("-name", name+"-noqmp")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(qmp); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("qemu made no QMP socket within 30s")
		}
	}
	vms, err := expandQEMU(context.Background(), drain.VM{Discover: "qemu", To: "h:1", Mode: "precopy", Compress: true})
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]drain.VM{}
	for _, vm := range vms {
		found[vm.Name] = vm
	}
	if vm, ok := found[name]; !ok || vm.QMP != qmp || vm.Skip != "" || vm.Template() || vm.To != "h:1" || !vm.Compress || vm.Mode != "precopy" {
		t.Fatalf("the VM with a QMP socket: %+v (found %v)", vm, ok)
	}
	if vm, ok := found[name+"-noqmp"]; !ok || vm.QMP != "" || vm.Skip == "" {
		t.Fatalf("the VM without a QMP socket: %+v (found %v)", vm, ok)
	}
}

// TestDrainGuestQMPHeld: a VM whose QMP socket another client holds is
// busy (drain.ErrLocked) after qmpWait, not waited for; released, it is
// the drain's source, its RAM found, with no layout in precopy.
func TestDrainGuestQMPHeld(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatalf("qemu-system-x86_64 is needed (.ci/run installs qemu-system-x86): %v", err)
	}
	shm, err := os.MkdirTemp("/dev/shm", "dmig-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(shm)
	qmp := filepath.Join(t.TempDir(), "qmp.sock")
	cmd := exec.Command("qemu-system-x86_64", "-machine", "q35,accel=tcg", "-m", "16M", "-nodefaults", "-display", "none",
		"-object", "memory-backend-file,id=ram0,size=16M,mem-path="+filepath.Join(shm, "ram0")+",share=on",
		"-machine", "memory-backend=ram0", "-qmp", "unix:"+qmp+",server=on,wait=off")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var held *qemu.Monitor
	for held == nil {
		if held, err = qemu.Dial(ctx, qmp); err != nil && ctx.Err() != nil {
			t.Fatalf("qemu's QMP never answered: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	vm := drain.VM{Name: "held", QMP: qmp, To: "h:1"}
	_, _, _, err = drainGuest(ctx, hclog.NewNullLogger(), vm, 0, precopy.ModePrecopy)
	if !errors.Is(err, drain.ErrLocked) {
		t.Fatalf("drainGuest of a VM whose QMP is held: %v, want drain.ErrLocked", err)
	}
	held.Close()
	guest, lay, closeGuest, err := drainGuest(ctx, hclog.NewNullLogger(), vm, 0, precopy.ModePrecopy)
	if err != nil {
		t.Fatal(err)
	}
	defer closeGuest()
	if rs := guest.RAM(); len(rs) != 1 || rs[0].Size != 16<<20 || lay != "" || guest.ref.qmp != qmp {
		t.Fatalf("source %+v, layout %q", rs, lay)
	}
}
