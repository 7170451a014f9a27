package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/dmig/dmig/internal/drain"
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
