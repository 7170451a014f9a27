package keeper

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/dmig/dmig/internal/ramfile"
	"github.com/dmig/dmig/uffd"
	"github.com/dmig/dmig/wire"
)

// envUffdGuest makes the test binary a guest that maps the RAM file the
// variable names, registers it with a userfaultfd of its own, prints the
// uffd's fd number and waits: a destination guest holding its kept uffd.
const envUffdGuest = "DMIG_KEEPER_TEST_UFFD_GUEST"

func TestMain(m *testing.M) {
	if path := os.Getenv(envUffdGuest); path != "" {
		if err := uffdGuest(path); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		return
	}
	os.Exit(m.Run())
}

func uffdGuest(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		return err
	}
	mem, err := ramfile.Map(f, 0, int(st.Size()), true)
	if err != nil {
		return err
	}
	u, err := uffd.Open(uffd.FeatureMissingShmem)
	if err != nil {
		return err
	}
	if _, err := u.Register(uffd.Range{Start: uintptr(unsafe.Pointer(&mem[0])), Len: uintptr(len(mem))}, uffd.ModeMissing); err != nil {
		return err
	}
	fmt.Println(u.Number())
	select {} // until killed
}

// registered reports whether pid maps path with userfaultfd missing-mode
// registration (VmFlags "um" in /proc/PID/smaps).
func registered(t *testing.T, pid int, path string) bool {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if fields := strings.Fields(line); len(fields) >= 6 && strings.Contains(fields[0], "-") {
			in = fields[len(fields)-1] == path
		}
		if in && strings.HasPrefix(line, "VmFlags:") {
			return strings.Contains(" "+strings.TrimPrefix(line, "VmFlags:")+" ", " um ")
		}
	}
	t.Fatalf("pid %d does not map %s", pid, path)
	return false
}

// A serve that died between Placed and Completed left a complete guest
// whose RAM is still registered: a starting serve's Reclaim releases it
// (a fault on a hole would otherwise wait for ever), journals it completed
// and returns it among the completed sessions.
func TestReclaimReleasesPlacedGuest(t *testing.T) {
	// Missing-mode registration wants shmem.
	root, err := os.MkdirTemp("/dev/shm", "dmig-keeper-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	id := wire.NewSessionID()
	dir := filepath.Join(root, id.String())
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	ram := filepath.Join(dir, "ram0")
	if err := os.WriteFile(ram, make([]byte, 16*4096), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envUffdGuest+"="+ram)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	fd, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("uffd guest: %q", line)
	}
	if !registered(t, cmd.Process.Pid, ram) {
		t.Fatal("the guest's RAM is not registered to begin with")
	}
	start, err := StartTime(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	j := &Journal{Session: id, Guest: "g", State: Placed, Pid: cmd.Process.Pid, PidStart: start, UffdFD: fd, Paths: []string{ram}}
	if err := j.Write(dir); err != nil {
		t.Fatal(err)
	}

	found, err := Reclaim(root, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(found.Orphans) != 0 || len(found.Completed) != 1 || found.Completed[0].Session != id {
		t.Fatalf("reclaim of a placed session: %+v, want it completed", found)
	}
	if registered(t, cmd.Process.Pid, ram) {
		t.Error("the complete guest's RAM is still registered with its uffd")
	}
	if now, err := ReadJournal(dir); err != nil || now.State != Completed {
		t.Errorf("journal after reclaim: %+v, %v; want completed", now, err)
	}
	if gone(cmd.Process.Pid) {
		t.Error("the complete guest was killed")
	}
}
