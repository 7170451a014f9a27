package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dmig/dmig/internal/drain"
	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/vmm/qemu"
)

// drainQEMU is a bare QEMU TCG VM (firmware only, 64 MiB) for drain tests.
type drainQEMU struct {
	cmd  *exec.Cmd
	qmp  string
	ram  string
	exit chan struct{}
}

const (
	drainQEMUSize = 64 << 20
	// The pattern's span of guest RAM: the firmware, idle without a boot
	// disk, uses only the lowest MiB and the top of RAM.
	patternOff, patternLen = 16 << 20, 32 << 20
)

// startDrainQEMU starts a bare VM whose QMP socket is qmp, its RAM shared
// or not, with extra arguments.
func startDrainQEMU(t *testing.T, qmp string, share bool, extra ...string) *drainQEMU {
	t.Helper()
	shm, err := os.MkdirTemp("/dev/shm", "dmig-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	on := "off"
	if share {
		on = "on"
	}
	q := &drainQEMU{qmp: qmp, ram: filepath.Join(shm, "ram0"), exit: make(chan struct{})}
	args := append([]string{"-machine", "q35,accel=tcg", "-m", "64M", "-nodefaults", "-display", "none",
		"-object", "memory-backend-file,id=ram0,size=64M,mem-path=" + q.ram + ",share=" + on,
		"-machine", "memory-backend=ram0", "-qmp", "unix:" + qmp + ",server=on,wait=off"}, extra...)
	q.cmd = exec.Command("qemu-system-x86_64", args...)
	q.cmd.Stderr = prefixWriter(t, "qemu "+filepath.Base(qmp)+": ")
	if err := q.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { q.cmd.Wait(); close(q.exit) }()
	t.Cleanup(func() { q.cmd.Process.Kill(); <-q.exit; os.RemoveAll(shm) })
	deadline := time.Now().Add(30 * time.Second)
	for vmStatusOK(qmp) != "running" {
		if time.Now().After(deadline) {
			t.Fatalf("qemu at %s not running within 30s", qmp)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return q
}

// vmStatusOK is QEMU's run state, "" if its QMP socket does not answer.
func vmStatusOK(qmp string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m, err := qemu.Dial(ctx, qmp)
	if err != nil {
		return ""
	}
	defer m.Close()
	st, err := m.QueryStatus(ctx)
	if err != nil {
		return ""
	}
	return st.Status
}

// pattern is the content the test writes into the VM's RAM and expects in
// every copy of it.
func pattern() []byte {
	b := make([]byte, patternLen)
	r := rand.NewChaCha8([32]byte{'d', 'r', 'a', 'i', 'n'})
	r.Read(b)
	return b
}

func writePattern(t *testing.T, ram string) {
	t.Helper()
	f, err := os.OpenFile(ram, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(pattern(), patternOff); err != nil {
		t.Fatal(err)
	}
}

// checkPattern fails the test unless ram holds the pattern, page for page.
func checkPattern(t *testing.T, what, ram string) {
	t.Helper()
	f, err := os.Open(ram)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := make([]byte, patternLen)
	if _, err := f.ReadAt(got, patternOff); err != nil {
		t.Fatal(err)
	}
	want, bad, first := pattern(), 0, -1
	for p := 0; p < patternLen; p += 4096 {
		if !bytes.Equal(got[p:p+4096], want[p:p+4096]) {
			if first < 0 {
				first = p
			}
			bad++
		}
	}
	if bad > 0 {
		t.Fatalf("%s: %d of %d pages differ from what the VM held, the first at RAM offset %#x", what, bad, patternLen/4096, patternOff+first)
	}
}

// killQEMUsUnder kills the QEMUs whose command line mentions dir: the
// destination VMs serve started, detached, outlive the test otherwise.
func killQEMUsUnder(dir string) {
	found, _ := qemu.FindRunning()
	for _, r := range found {
		if b, err := os.ReadFile("/proc/" + strconv.Itoa(r.Pid) + "/cmdline"); err == nil && strings.Contains(string(b), dir) {
			syscall.Kill(r.Pid, syscall.SIGKILL)
		}
	}
}

// findFiles lists the regular files under dir of the given size.
func findFiles(t *testing.T, dir string, size int64) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Size() == size {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// TestDrainQEMU drains a directory of QEMU VMs and a process guest: the
// one QEMU VM that can move has its link cut midway, the process guest
// moves; the VM with private RAM and the one with a disk on local storage
// are skipped with their reasons and never reach the destination. The cut
// VM runs on at the source with its memory intact, and the summary and
// the exit status (3) say so. The rerun skips the moved guest and moves
// the VM, whose RAM at the destination holds what it held here.
func TestDrainQEMU(t *testing.T) {
	dir := t.TempDir()
	srv := startServe(t, "--insecure")
	t.Cleanup(func() { killQEMUsUnder(srv.dir) })
	link := startProxy(t, srv.addr, 8<<20) // the VM's 32 MiB pass takes 4 s
	qmpDir := filepath.Join(dir, "qmp")
	if err := os.Mkdir(qmpDir, 0o700); err != nil {
		t.Fatal(err)
	}
	vm := startDrainQEMU(t, filepath.Join(qmpDir, "a.sock"), true)
	// The firmware may still be writing RAM as the VM starts (a failed run
	// under load found 33 pages of the pattern overwritten): write it,
	// let the firmware settle, write it again, and check it before the
	// migration, so that a difference after it is the migration's.
	writePattern(t, vm.ram)
	time.Sleep(2 * time.Second)
	writePattern(t, vm.ram)
	checkPattern(t, "the source VM before its migration", vm.ram)
	startDrainQEMU(t, filepath.Join(qmpDir, "b-private.sock"), false)
	disk := filepath.Join(dir, "c.raw") // on the test's local file system
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	startDrainQEMU(t, filepath.Join(qmpDir, "c-disk.sock"), true, "-drive", "file="+disk+",format=raw,if=virtio")
	pg := startSource(t, guestOpts{size: 48 << 20, writeRate: 2000}) // not the VM's size: its RAM file is told apart by it
	pgStats := filepath.Join(dir, "pg.stats")
	killDestGuest(t, pgStats)

	cfg := drain.Config{VMs: []drain.VM{
		{QMPDir: qmpDir, To: link.addr(), Mode: "precopy"},
		{Name: "pg", Pid: pg.pid(), RAM: []string{pg.ram}, DestCmd: destCommand(pgStats), To: srv.addr, Mode: "precopy"},
	}}
	b, _ := json.Marshal(cfg)
	conf := filepath.Join(dir, "drain.json")
	if err := os.WriteFile(conf, b, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	common := []string{"drain", "--config", conf, "--state", filepath.Join(dir, "state.json"), "--lock-dir", filepath.Join(dir, "locks"),
		"--insecure", "--recover-timeout", "1s", "--report", filepath.Join(dir, "summary.json")}

	// Cut the VM's link once its first pass is under way.
	cut := make(chan struct{})
	go func() {
		defer close(cut)
		for link.forwarded() < 2<<20 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Millisecond):
			}
		}
		link.cut()
	}()
	code, out := dmigRun(t, ctx, common...)
	<-cut
	sum := readSummary(t, filepath.Join(dir, "summary.json"))
	t.Logf("first drain: exit %d\n%s", code, out)
	want := []struct {
		name string
		st   drain.Status
		why  string
	}{{"a", drain.StatusFailed, ""}, {"b-private", drain.StatusSkipped, "not a shared memory backend"},
		{"c-disk", drain.StatusSkipped, "local file system"}, {"pg", drain.StatusMoved, ""}}
	if code != 3 || len(sum.VMs) != 4 {
		t.Fatalf("drain: exit %d, want 3; summary %+v\n%s", code, sum, out)
	}
	for i, w := range want {
		r := sum.VMs[i]
		if r.Name != w.name || r.Status != w.st || !strings.Contains(r.Error, w.why) {
			t.Fatalf("summary line %d: %+v, want %s %s (%q)", i, r, w.name, w.st, w.why)
		}
	}
	if a := sum.VMs[0]; a.Outcome != report.Aborted || a.Report == nil || a.Error == "" || sum.VMs[1].Report != nil || sum.VMs[2].Report != nil {
		t.Fatalf("summary %+v", sum)
	}
	if sum.Moved != 1 || sum.Failed != 1 || sum.Skipped != 2 {
		t.Fatalf("summary counts %+v", sum)
	}
	waitDestRunning(t, pgStats)
	if st := vmStatusOK(vm.qmp); st != "running" {
		t.Fatalf("the VM whose migration failed is %q, want running", st)
	}
	checkPattern(t, "the source VM after its failed migration", vm.ram)

	// The link is back: the rerun skips the moved guest and moves the VM.
	link.restore()
	code, out = dmigRun(t, ctx, common...)
	sum = readSummary(t, filepath.Join(dir, "summary.json"))
	t.Logf("second drain: exit %d\n%s", code, out)
	want[0].st, want[3].st = drain.StatusMoved, drain.StatusAlreadyMoved
	if code != 3 {
		t.Fatalf("rerun: exit %d, want 3 (two VMs skipped)\n%s", code, out)
	}
	for i, w := range want {
		if r := sum.VMs[i]; r.Name != w.name || r.Status != w.st || !strings.Contains(r.Error, w.why) {
			t.Fatalf("rerun: summary line %d: %+v, want %s %s (%q)", i, r, w.name, w.st, w.why)
		}
	}
	if r := sum.VMs[0].Report; r == nil || r.Outcome != report.Completed || r.GuestPages != drainQEMUSize/4096 {
		t.Fatalf("rerun: the VM's report %+v", r)
	}
	select {
	case <-vm.exit:
	case <-time.After(10 * time.Second):
		t.Fatal("the source VM still runs after it moved")
	}
	rams := findFiles(t, srv.dir, drainQEMUSize)
	if len(rams) != 1 {
		t.Fatalf("the destination holds RAM files %v, want the VM's", rams)
	}
	// Its QMP socket is serve's (QEMU serves one client at a time): the
	// destination VM is its QEMU process, alive, which serve resumed.
	var dests []int
	found, _ := qemu.FindRunning()
	for _, r := range found {
		if b, err := os.ReadFile("/proc/" + strconv.Itoa(r.Pid) + "/cmdline"); err == nil && strings.Contains(string(b), srv.dir) {
			dests = append(dests, r.Pid)
		}
	}
	if len(dests) != 1 || !strings.Contains(srv.log.String(), `"guest resumed","@module":"serve","@timestamp"`) {
		t.Fatalf("destination QEMUs %v, want 1 resumed", dests)
	}
	checkPattern(t, "the destination VM", rams[0])
	// Two sessions for the VM (cut, then moved), one for the process guest:
	// the skipped VMs never reached the destination.
	if n := len(srv.sessions(t)); n != 3 {
		t.Fatalf("%d sessions reached the destination, want 3", n)
	}
}
