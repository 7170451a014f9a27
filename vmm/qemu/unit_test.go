package qemu

import (
	"errors"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
)

// Captured from QEMU 7.2 (pc, 2 GiB memory-backend-file ram0).
const flatView = `FlatView #0
 AS "memory", root: system
 AS "cpu-memory-0", root: system
 Root memory region: system
  0000000000000000-00000000000bffff (prio 0, ram): ram0
  00000000000c0000-00000000000dffff (prio 1, rom): pc.rom
  00000000000e0000-00000000000fffff (prio 0, rom): pc.bios @0000000000020000
  0000000000100000-000000007fffffff (prio 0, ram): ram0 @0000000000100000
  00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios

FlatView #1
 AS "I/O", root: io
 Root memory region: io
  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan

FlatView #2
 AS "virtio-net-pci", root: bus master container
 Root memory region: bus master container
  0000000000000000-00000000000bffff (prio 0, ram): other
`

func TestParseFlatView(t *testing.T) {
	got, err := parseFlatView(flatView)
	if err != nil {
		t.Fatal(err)
	}
	want := []GPARange{{0, 0xc0000, 0}, {0x100000, 0x80000000 - 0x100000, 0x100000}}
	if !slices.Equal(got["ram0"], want) {
		t.Fatalf("ram0 ranges %+v, want %+v", got["ram0"], want)
	}
	if len(got) != 1 {
		t.Fatalf("regions %v: only the memory address space's RAM counts", got)
	}
	m := &Machine{Blocks: []RAMBlock{{ID: "ram0", GPA: got["ram0"]}}}
	for _, c := range []struct {
		gpa, off uint64
		ok       bool
	}{{0x1000, 0x1000, true}, {0xc0000, 0, false}, {0x7fffffff, 0x7fffffff, true}, {0x80000000, 0, false}} {
		b, off, ok := m.Block(c.gpa)
		if ok != c.ok || (ok && (b.ID != "ram0" || off != c.off)) {
			t.Errorf("Block(%#x) = %v, %#x, %v; want ram0, %#x, %v", c.gpa, b, off, ok, c.off, c.ok)
		}
	}
	if _, err := parseFlatView("FlatView #1\n AS \"I/O\", root: io\n"); err == nil {
		t.Fatal("a map without the memory address space parsed")
	}
}

func TestOpts(t *testing.T) {
	p := opts("memory-backend-file,id=ram0,mem-path=/a,,b,share=on")
	if want := []string{"memory-backend-file", "id=ram0", "mem-path=/a,b", "share=on"}; !slices.Equal(p, want) {
		t.Fatalf("opts = %q, want %q", p, want)
	}
	if j := joinOpts(p); j != "memory-backend-file,id=ram0,mem-path=/a,,b,share=on" {
		t.Fatalf("joinOpts = %q", j)
	}
}

func TestDestArgs(t *testing.T) {
	c := Config{Dir: "/run/a", Image: "/img/g,1.raw", Kernel: "/k", Initrd: "/i", MemPath: "/dev/shm/a",
		Forward: []Forward{{13306, 3306}, {17070, 7070}}, AgentSocket: "/run/a/agent.sock"}
	src := append(c.Args(), "-daemonize", "-pidfile", "/run/a/pid", "-S")
	p, err := DestArgs(src, DestOptions{Dir: "/run/b", MemPaths: map[string]string{"ram0": "/dev/shm/b"}, Ports: map[int]int{13306: 23306}})
	if err != nil {
		t.Fatal(err)
	}
	want := Config{Dir: "/run/b", Image: "/img/g,1.raw", Kernel: "/k", Initrd: "/i", MemPath: "/dev/shm/b",
		Forward: []Forward{{23306, 3306}, {17070, 7070}}, AgentSocket: "/run/b/agent0.sock", Incoming: "defer"}
	wa := want.Args()
	// -name is the operator's and stays.
	wa[slices.Index(wa, "-name")+1] = "a"
	wa = slices.Insert(wa, len(wa)-2, "-S")
	if !slices.Equal(p.Args, wa) {
		t.Fatalf("destination args\n%q\nwant\n%q", p.Args, wa)
	}
	if p.QMP != "/run/b/qmp.sock" || p.Serial != "/run/b/serial.log" {
		t.Fatalf("plan paths %+v", p)
	}
	if d := Disks(p.Args); !slices.Equal(d, []string{"/img/g,1.raw"}) {
		t.Fatalf("Disks = %q", d)
	}

	// A libvirt-style control chardev and a second -qmp: each gets its own
	// socket, the first is dmig's; no -qmp at all: one is added.
	p, err = DestArgs([]string{"-chardev", "socket,id=mon0,path=/run/a/lv.sock,server=on,wait=off", "-mon", "chardev=mon0,mode=control",
		"-qmp", "unix:/run/a/q.sock,server=on,wait=off"}, DestOptions{Dir: "/run/b"})
	if err != nil {
		t.Fatal(err)
	}
	want2 := []string{"-chardev", "socket,id=mon0,path=/run/b/qmp.sock,server=on,wait=off", "-mon", "chardev=mon0,mode=control",
		"-qmp", "unix:/run/b/qmp1.sock,server=on,wait=off", "-incoming", "defer"}
	if !slices.Equal(p.Args, want2) || p.QMP != "/run/b/qmp.sock" {
		t.Fatalf("two monitors: %q (QMP %s)", p.Args, p.QMP)
	}
	p, err = DestArgs([]string{"-m", "1G"}, DestOptions{Dir: "/run/b"})
	if err != nil {
		t.Fatal(err)
	}
	if want3 := []string{"-m", "1G", "-qmp", "unix:/run/b/qmp.sock,server=on,wait=off", "-incoming", "defer"}; !slices.Equal(p.Args, want3) {
		t.Fatalf("no monitor: %q", p.Args)
	}
}

func TestCheckDisks(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "guest.raw")
	if err := os.WriteFile(img, []byte("disk"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.raw")
	if err := os.Link(img, link); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "other", "guest.raw") // same name, another file
	if err := os.MkdirAll(filepath.Dir(other), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(other, []byte("disk"), 0o644); err != nil {
		t.Fatal(err)
	}
	args := func(p string) []string { return []string{"-drive", "file=" + p + ",format=raw,if=virtio"} }
	pid := os.Getpid()
	if err := CheckDisks(pid, args(img), args(link)); err != nil {
		t.Fatalf("hard link refused: %v", err)
	}
	if err := CheckDisks(pid, args(img), args(other)); !errors.Is(err, ErrDiskMismatch) {
		t.Fatalf("another file under the same name: %v, want ErrDiskMismatch", err)
	}
	if err := CheckDisks(pid, args(img), nil); !errors.Is(err, ErrDiskMismatch) {
		t.Fatalf("no disk: %v, want ErrDiskMismatch", err)
	}
}

func TestQMPSocketOf(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-m", "1G", "-qmp", "unix:/run/q,,1.sock,server=on,wait=off"}, "/run/q,1.sock"},
		{[]string{"-chardev", "socket,id=m,path=/run/lv.sock,server=on", "-mon", "chardev=m,mode=control"}, "/run/lv.sock"},
		{[]string{"-chardev", "socket,id=m,path=/run/hmp.sock,server=on", "-mon", "chardev=m,mode=readline"}, ""},
		{[]string{"-qmp", "tcp:127.0.0.1:4444,server=on"}, ""},
	} {
		got, ok := qmpSocketOf(c.args)
		if got != c.want || ok != (c.want != "") {
			t.Errorf("qmpSocketOf(%q) = %q, %v; want %q", c.args, got, ok, c.want)
		}
	}
}

func TestGuestDiskNames(t *testing.T) {
	got := GuestDiskNames([]string{
		"-drive", "file=/img/root,,1.raw,format=raw,if=virtio",
		"-drive", "file=/img/cd.iso,media=cdrom", // IDE: not a vdX
		"--drive", "if=virtio,file=/img/data.raw,serial=D1",
		"-drive", "if=virtio,file=", // an empty virtio drive still takes vdc
		"-drive", "file=/img/logs.raw,if=virtio",
	})
	want := map[string]string{"vda": "/img/root,1.raw", "vdb": "/img/data.raw", "serial:D1": "/img/data.raw", "vdd": "/img/logs.raw"}
	if !maps.Equal(got, want) {
		t.Fatalf("GuestDiskNames = %v, want %v", got, want)
	}
}

func TestAgentSocketAndForwards(t *testing.T) {
	c := Config{Dir: "/run/a", Image: "/img", Kernel: "/k", Initrd: "/i",
		Forward: []Forward{{13306, 3306}, {17070, 22}}, AgentSocket: "/run/a/agent,1.sock"}
	args := c.Args()
	if p, ok := AgentSocket(args); !ok || p != "/run/a/agent,1.sock" {
		t.Fatalf("AgentSocket = %q, %v", p, ok)
	}
	if p, ok := AgentSocket([]string{"-chardev", "socket,id=c0,path=/x.sock", "-device", "virtserialport,chardev=c0,name=org.qemu.guest_agent.0"}); ok {
		t.Fatalf("another port's socket taken for the agent's: %q", p)
	}
	if got := HostForwardPorts(args); !slices.Equal(got, []int{13306, 17070}) {
		t.Fatalf("HostForwardPorts = %v", got)
	}
	if got := HostForwardPorts([]string{"-nic", "user,hostfwd=tcp::2222-:22,hostfwd=udp:127.0.0.1:5353-:53"}); !slices.Equal(got, []int{2222, 5353}) {
		t.Fatalf("HostForwardPorts(-nic) = %v", got)
	}
}

// TestDiskMarks: across hosts, device and inode numbers say nothing; the
// source's mark on its disk files, set just before the session, does. A
// copy made before the mark, or a file the source never marked, is
// refused.
func TestDiskMarks(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "guest.raw")
	if err := os.WriteFile(img, []byte("disk"), 0o644); err != nil {
		t.Fatal(err)
	}
	args := func(p string) []string { return []string{"-drive", "file=" + p + ",format=raw,if=virtio"} }
	if err := CheckDiskMarks(args(img), "s1"); !errors.Is(err, ErrDiskMismatch) {
		t.Fatalf("unmarked disk: %v, want ErrDiskMismatch", err)
	}
	if err := MarkDisks(os.Getpid(), args(img), "s1"); err != nil {
		t.Fatalf("mark %s (does this file system keep user xattrs?): %v", img, err)
	}
	if err := CheckDiskMarks(args(img), "s1"); err != nil {
		t.Fatalf("the marked disk itself: %v", err)
	}
	// A copy with its attributes, then the next migration marks the source.
	cp := filepath.Join(dir, "copy.raw")
	if out, err := exec.Command("cp", "--preserve=xattr", img, cp).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	if err := MarkDisks(os.Getpid(), args(img), "s2"); err != nil {
		t.Fatal(err)
	}
	if err := CheckDiskMarks(args(cp), "s2"); !errors.Is(err, ErrDiskMismatch) {
		t.Fatalf("a copy marked by an earlier migration: %v, want ErrDiskMismatch", err)
	}
	if err := CheckDiskMarks(args(img), "s2"); err != nil {
		t.Fatal(err)
	}
	// A relative path is the source's, resolved in its working directory.
	if err := MarkDisks(os.Getpid(), args("no-such-disk.raw"), "s3"); err == nil {
		t.Fatal("marking a missing disk succeeded")
	}
}
