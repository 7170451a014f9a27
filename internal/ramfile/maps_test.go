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
