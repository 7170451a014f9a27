package qemu

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestRunningOf(t *testing.T) {
	r := runningOf(7, []string{"-name", "guest=db1,debug-threads=on", "-qmp", "unix:/run/db1.sock,server=on,wait=off", "-m", "1G"})
	if r.Pid != 7 || r.Name != "db1" || r.QMP != "/run/db1.sock" || r.Incoming {
		t.Fatalf("%+v", r)
	}
	r = runningOf(8, []string{"-name", "db2", "-chardev", "socket,id=mon0,path=m.sock,server=on,wait=off", "-mon", "chardev=mon0,mode=control", "-incoming", "defer"})
	if r.Name != "db2" || r.QMP != "m.sock" || !r.Incoming {
		t.Fatalf("%+v", r)
	}
	if r := runningOf(9, []string{"-m", "1G"}); r.Name != "" || r.QMP != "" {
		t.Fatalf("%+v", r)
	}
}

func TestSocketsIn(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"b.sock", "a.qmp"} {
		l, err := net.Listen("unix", filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
	}
	os.WriteFile(filepath.Join(dir, "notes.txt"), nil, 0o600)
	os.Mkdir(filepath.Join(dir, "sub"), 0o700)
	got, err := SocketsIn(dir)
	if err != nil || !slices.Equal(got, []string{filepath.Join(dir, "a.qmp"), filepath.Join(dir, "b.sock")}) {
		t.Fatalf("%v, %v", got, err)
	}
	if _, err := SocketsIn(filepath.Join(dir, "none")); err == nil {
		t.Fatal("a missing directory listed")
	}
}

// TestCheckSharedDisks: a disk on a local file system is refused unless
// shared_storage lists its directory; protocol URLs and VMs without disks
// pass.
func TestCheckSharedDisks(t *testing.T) {
	dir := t.TempDir() // a local file system
	img := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"-drive", "file=" + img + ",format=raw,if=virtio"}
	err := CheckSharedDisks(os.Getpid(), args, nil)
	if !errors.Is(err, ErrDiskNotShared) || !strings.Contains(err.Error(), "local file system") {
		t.Fatalf("local disk: %v", err)
	}
	if err := CheckSharedDisks(os.Getpid(), args, []string{dir}); err != nil {
		t.Fatalf("disk under shared_storage: %v", err)
	}
	err = CheckSharedDisks(os.Getpid(), args, []string{dir + "x", "/mnt"})
	if !errors.Is(err, ErrDiskNotShared) || !strings.Contains(err.Error(), "not under shared_storage") {
		t.Fatalf("disk outside shared_storage: %v", err)
	}
	missing := []string{"-drive", "file=" + filepath.Join(dir, "gone.raw")}
	if err := CheckSharedDisks(os.Getpid(), missing, []string{dir}); !errors.Is(err, ErrDiskNotShared) {
		t.Fatalf("missing disk: %v", err)
	}
	for _, a := range [][]string{nil, {"-m", "1G"}, {"-drive", "file=rbd:pool/img,format=raw"}, {"-drive", "file=gluster://h/vol/img"}} {
		if err := CheckSharedDisks(os.Getpid(), a, nil); err != nil {
			t.Errorf("%v: %v", a, err)
		}
	}
}

// TestAgentAddr: dmig migrate --qmp and a drain find the guest agent's
// socket on the VM's command line, a relative one in QEMU's directory.
func TestAgentAddr(t *testing.T) {
	agent := []string{"-device", "virtio-serial-pci,id=vser0", "-chardev", "socket,id=agent0,path=AGENT,server=on,wait=off",
		"-device", "virtserialport,bus=vser0.0,chardev=agent0,name=org.dmig.agent"}
	with := func(path string) []string {
		out := []string{"qemu-system-x86_64", "-m", "1G"}
		for _, a := range agent {
			out = append(out, strings.ReplaceAll(a, "AGENT", path))
		}
		return out
	}
	s := &Source{command: with("/run/vm1-agent.sock"), machine: &Machine{Pid: 42}}
	if a, ok := s.AgentAddr(); !ok || a != "unix:/run/vm1-agent.sock" {
		t.Fatalf("AgentAddr = %q, %v", a, ok)
	}
	s.command = with("vm1/agent.sock")
	if a, ok := s.AgentAddr(); !ok || a != "unix:/proc/42/cwd/vm1/agent.sock" {
		t.Fatalf("relative: AgentAddr = %q, %v", a, ok)
	}
	s.command = []string{"qemu-system-x86_64", "-m", "1G"}
	if a, ok := s.AgentAddr(); ok {
		t.Fatalf("no agent port: AgentAddr = %q", a)
	}
}
