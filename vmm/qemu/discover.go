package qemu

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/dmig/dmig/internal/ramfile"
)

// RAMBlock is one RAM backend of a running QEMU: a file (or memfd) it
// maps shared, which dmig maps too.
type RAMBlock struct {
	// ID is the backend's id, which is the RAM block's name in QEMU's
	// migration stream: a destination must use the same id and size.
	ID    string `json:"id"`
	Type  string `json:"type"` // memory-backend-file or memory-backend-memfd
	Size  uint64 `json:"size"`
	Share bool   `json:"share"`
	// Path opens the backing file: the mem-path, or /proc/PID/fd/N for a
	// memfd.
	Path string `json:"path"`
	// Mappings are QEMU's mappings of the file (from /proc/PID/maps).
	Mappings []ramfile.Mapping `json:"mappings"`
	// GPA are the guest-physical ranges backed by this block, sorted.
	GPA []GPARange `json:"gpa"`
}

// GPARange maps guest-physical [GPA, GPA+Len) to [Offset, Offset+Len) of a
// RAM block.
type GPARange struct {
	GPA    uint64 `json:"gpa"`
	Len    uint64 `json:"len"`
	Offset uint64 `json:"offset"`
}

// Machine is what Discover found about a running QEMU.
type Machine struct {
	Pid    int        `json:"pid"`
	Blocks []RAMBlock `json:"blocks"`
	// DeviceRAM names RAM regions of devices (vga.vram, ...): not shared,
	// moved by QEMU with the device state.
	DeviceRAM []string `json:"device_ram"`
}

// Block returns the block backing guest-physical address gpa and the
// offset in it, or false when no RAM backs gpa (ROM, MMIO, a hole).
func (m *Machine) Block(gpa uint64) (*RAMBlock, uint64, bool) {
	for i := range m.Blocks {
		b := &m.Blocks[i]
		for _, r := range b.GPA {
			if gpa >= r.GPA && gpa-r.GPA < r.Len {
				return b, r.Offset + gpa - r.GPA, true
			}
		}
	}
	return nil, 0, false
}

// PeerPid returns the pid of the process at the other end of mon's
// socket: the QEMU the monitor talks to.
func (m *Monitor) PeerPid() (int, error) {
	uc, ok := m.conn.(*net.UnixConn)
	if !ok {
		return 0, errors.New("qmp connection is not a unix socket")
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("qmp socket: %w", err)
	}
	var cred *unix.Ucred
	var serr error
	if err := rc.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, fmt.Errorf("qmp socket: %w", err)
	}
	if serr != nil {
		return 0, fmt.Errorf("read qmp peer credentials: %w", serr)
	}
	return int(cred.Pid), nil
}

type qomProp struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

type memdev struct {
	ID    string `json:"id"`
	Size  uint64 `json:"size"`
	Share bool   `json:"share"`
}

// shareHint is how to start a QEMU whose RAM dmig can migrate.
const shareHint = "start QEMU with -object memory-backend-file,id=ram0,size=SIZE,mem-path=/dev/shm/NAME,share=on -machine memory-backend=ram0 (or memory-backend-memfd,share=on)"

// Discover finds the RAM of the QEMU behind mon (pid 0: the monitor
// socket's peer): each backend that guest RAM lives in, its backing file and
// QEMU's mapping of it, and the guest-physical map read from QEMU's own
// flat view of the "memory" address space, so nothing assumes the machine's
// layout. RAM that is not a shared file or memfd is refused (ErrNotShared).
func Discover(ctx context.Context, mon *Monitor, pid int) (*Machine, error) {
	if pid == 0 {
		p, err := mon.PeerPid()
		if err != nil {
			return nil, err
		}
		pid = p
	}
	var devs []memdev
	if err := mon.Execute(ctx, "query-memdev", nil, &devs); err != nil {
		return nil, fmt.Errorf("list memory backends: %w", err)
	}
	var objs []qomProp
	if err := mon.Execute(ctx, "qom-list", map[string]string{"path": "/objects"}, &objs); err != nil {
		return nil, fmt.Errorf("list qom objects: %w", err)
	}
	types := map[string]string{}
	for _, o := range objs {
		if t, ok := strings.CutPrefix(o.Type, "child<"); ok {
			types[o.Name] = strings.TrimSuffix(t, ">")
		}
	}
	mtree, err := mon.HMP(ctx, "info mtree -f")
	if err != nil {
		return nil, fmt.Errorf("read memory map: %w", err)
	}
	gpa, err := parseFlatView(mtree)
	if err != nil {
		return nil, err
	}
	if len(devs) == 0 {
		return nil, fmt.Errorf("%w: guest RAM has no memory backend object; %s", ErrNotShared, shareHint)
	}
	m := &Machine{Pid: pid}
	for _, d := range devs {
		if len(gpa[d.ID]) == 0 {
			continue // a backend no guest RAM maps (yet)
		}
		b := RAMBlock{ID: d.ID, Type: types[d.ID], Size: d.Size, Share: d.Share, GPA: gpa[d.ID]}
		if !d.Share || (b.Type != "memory-backend-file" && b.Type != "memory-backend-memfd") {
			return nil, fmt.Errorf("%w: backend %s is %s with share=%v; %s", ErrNotShared, d.ID, b.Type, d.Share, shareHint)
		}
		if b.Path, err = backingPath(ctx, mon, pid, b); err != nil {
			return nil, err
		}
		if b.Mappings, err = ramfile.FileMappings(pid, b.Path); err != nil {
			return nil, fmt.Errorf("find qemu's mapping of %s: %w", b.Path, err)
		}
		if len(b.Mappings) == 0 {
			return nil, fmt.Errorf("qemu pid %d does not map %s (backend %s)", pid, b.Path, b.ID)
		}
		m.Blocks = append(m.Blocks, b)
	}
	if len(m.Blocks) == 0 {
		return nil, fmt.Errorf("%w: no memory backend backs guest RAM; %s", ErrNotShared, shareHint)
	}
	// RAM regions that are no backend (video RAM, option ROMs) belong to
	// devices: QEMU moves them with the device state even under
	// x-ignore-shared.
	for id := range gpa {
		if _, ok := types[id]; !ok {
			m.DeviceRAM = append(m.DeviceRAM, id)
		}
	}
	slices.Sort(m.DeviceRAM)
	// The machine's main RAM must be among the blocks found.
	var main string
	if err := mon.Execute(ctx, "qom-get", map[string]string{"path": "/machine", "property": "memory-backend"}, &main); err == nil && main != "" {
		id := strings.TrimPrefix(main, "/objects/")
		if !slices.ContainsFunc(m.Blocks, func(b RAMBlock) bool { return b.ID == id }) {
			return nil, fmt.Errorf("the machine's RAM backend %s backs no guest-physical memory", id)
		}
	}
	return m, nil
}

func backingPath(ctx context.Context, mon *Monitor, pid int, b RAMBlock) (string, error) {
	if b.Type == "memory-backend-file" {
		var p string
		if err := mon.Execute(ctx, "qom-get", map[string]string{"path": "/objects/" + b.ID, "property": "mem-path"}, &p); err != nil {
			return "", fmt.Errorf("read mem-path of %s: %w", b.ID, err)
		}
		if !filepath.IsAbs(p) {
			p = filepath.Join(fmt.Sprintf("/proc/%d/cwd", pid), p)
		}
		st, err := os.Stat(p)
		if err != nil {
			return "", fmt.Errorf("RAM file of %s: %w", b.ID, err)
		}
		if !st.Mode().IsRegular() {
			return "", fmt.Errorf("%w: mem-path %s of %s is a directory (QEMU made an unlinked file in it); give mem-path a file name", ErrNotShared, p, b.ID)
		}
		return p, nil
	}
	// A memfd has no name in the file system, and QEMU names every one
	// "memory-backend-memfd": reach it through QEMU's fd, picked by size.
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("list qemu's fds: %w", err)
	}
	var found []string
	seen := map[[2]uint64]bool{}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		l, err := os.Readlink(p)
		if err != nil || !strings.HasPrefix(l, "/memfd:memory-backend-memfd") {
			continue
		}
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil || uint64(st.Size) != b.Size {
			continue
		}
		if id := [2]uint64{st.Dev, st.Ino}; !seen[id] {
			seen[id] = true
			found = append(found, p)
		}
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("find the memfd of backend %s in %s", b.ID, dir)
	case 1:
		return found[0], nil
	}
	return "", fmt.Errorf("backend %s: %d memfds of %d bytes in %s, cannot tell which is which; give them different sizes or use memory-backend-file", b.ID, len(found), b.Size, dir)
}

// A flat-view line: "  0000000000100000-000000007fffffff (prio 0, ram): ram0 @0000000000100000".
var flatLine = regexp.MustCompile(`^\s+([0-9a-f]+)-([0-9a-f]+) \(prio -?\d+, ([a-z]+)\): (\S+)(?: @([0-9a-f]+))?`)

// parseFlatView reads `info mtree -f` and returns, per RAM region name, the
// guest-physical ranges of the "memory" address space it backs.
func parseFlatView(out string) (map[string][]GPARange, error) {
	res := map[string][]GPARange{}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	inMem, seen := false, false
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "FlatView #"):
			inMem = false
		case strings.HasPrefix(line, ` AS "memory"`):
			inMem, seen = true, true
		case inMem:
			f := flatLine.FindStringSubmatch(line)
			if f == nil || f[3] != "ram" {
				continue
			}
			start, err1 := strconv.ParseUint(f[1], 16, 64)
			end, err2 := strconv.ParseUint(f[2], 16, 64)
			var off uint64
			var err3 error
			if f[5] != "" {
				off, err3 = strconv.ParseUint(f[5], 16, 64)
			}
			if err := errors.Join(err1, err2, err3); err != nil {
				return nil, fmt.Errorf("parse memory map line %q: %w", line, err)
			}
			res[f[4]] = append(res[f[4]], GPARange{GPA: start, Len: end - start + 1, Offset: off})
		}
	}
	if !seen {
		return nil, errors.New(`parse memory map: no flat view of address space "memory"`)
	}
	return res, nil
}
