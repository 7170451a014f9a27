package ramfile

import (
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseMapsLine(t *testing.T) {
	m, err := parseMapsLine("7f2c4c000000-7f2c4c021000 rw-s 00003000 00:1a 123456                     /dev/shm/my ram (deleted)")
	if err != nil {
		t.Fatal(err)
	}
	want := Mapping{Start: 0x7f2c4c000000, End: 0x7f2c4c021000, Perms: "rw-s", Offset: 0x3000,
		Dev: unix.Mkdev(0, 0x1a), Inode: 123456, Path: "/dev/shm/my ram", Deleted: true}
	if m != want {
		t.Errorf("got %+v, want %+v", m, want)
	}
	if !m.Shared() || !m.Writable() || m.Len() != 0x21000 {
		t.Errorf("accessors wrong for %+v", m)
	}
	m, err = parseMapsLine("7ffc1000-7ffc3000 r-xp 00000000 00:00 0                          [vdso]")
	if err != nil || m.Path != "[vdso]" || m.Shared() {
		t.Errorf("vdso line: %+v %v", m, err)
	}
	if _, err := parseMapsLine("garbage"); err == nil {
		t.Error("garbage line parsed")
	}
	if _, err := parseMapsLine("zz-10 rw-p 0 00:00 0"); err == nil {
		t.Error("bad address parsed")
	}
}

func TestFileMappings(t *testing.T) {
	f := newRAM(t, 4)
	mem, err := Map(f, PageSize, 2*PageSize, false)
	if err != nil {
		t.Fatal(err)
	}
	defer Unmap(mem)
	ms, err := FileMappings(os.Getpid(), f.Name())
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 {
		t.Fatalf("found %d mappings of %s, want 1", len(ms), f.Name())
	}
	if ms[0].Offset != PageSize || ms[0].Len() != 2*PageSize || !ms[0].Shared() || ms[0].Writable() {
		t.Errorf("mapping %+v", ms[0])
	}
	if _, err := Mappings(1 << 30); !errors.Is(err, ErrNoProcess) {
		t.Errorf("mappings of a pid that cannot exist: %v, want ErrNoProcess", err)
	}
}

// TestLockMapped: the lock of a file this process maps shared is found
// through /proc/PID/map_files, deleted or not: held elsewhere it is
// ErrLocked, free it is taken until the files are closed.
func TestLockMapped(t *testing.T) {
	f := newRAM(t, 4)
	mem, err := Map(f, 0, 4*PageSize, true)
	if err != nil {
		t.Fatal(err)
	}
	defer Unmap(mem)
	os.Remove(f.Name()) // a deleted RAM file is still the guest's
	if err := Lock(f); err != nil {
		t.Fatal(err)
	}
	if files, err := LockMapped(os.Getpid()); !errors.Is(err, ErrLocked) {
		for _, g := range files {
			g.Close()
		}
		t.Fatalf("LockMapped with the RAM file locked: %v, want ErrLocked", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	files, err := LockMapped(os.Getpid())
	if err != nil || len(files) == 0 {
		t.Fatalf("LockMapped with the RAM file free: %d files, %v", len(files), err)
	}
	if err := Lock(f); !errors.Is(err, ErrLocked) {
		t.Fatalf("Lock while LockMapped holds it: %v, want ErrLocked", err)
	}
	for _, g := range files {
		g.Close()
	}
	if err := Lock(f); err != nil {
		t.Fatalf("Lock once LockMapped's files are closed: %v", err)
	}
}
