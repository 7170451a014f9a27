package ramfile

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Mapping is one line of /proc/PID/maps: a range of another process's
// address space and the file behind it.
type Mapping struct {
	Start, End uintptr
	Perms      string // e.g. "rw-s": s = MAP_SHARED, p = private
	Offset     uint64 // offset in the backing file
	Dev        uint64 // backing file's device (unix.Mkdev)
	Inode      uint64
	Path       string // without a " (deleted)" suffix
	Deleted    bool
}

// Len is the mapping's length in bytes.
func (m Mapping) Len() uintptr { return m.End - m.Start }

// Shared reports whether the mapping is MAP_SHARED.
func (m Mapping) Shared() bool { return len(m.Perms) == 4 && m.Perms[3] == 's' }

// Writable reports whether the mapping is writable.
func (m Mapping) Writable() bool { return len(m.Perms) >= 2 && m.Perms[1] == 'w' }

// Mappings parses /proc/PID/maps.
func Mappings(pid int) ([]Mapping, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("read mappings of pid %d: %w", pid, ErrNoProcess)
		}
		return nil, fmt.Errorf("read mappings of pid %d: %w", pid, err)
	}
	defer f.Close()
	var out []Mapping
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		m, err := parseMapsLine(sc.Text())
		if err != nil {
			return nil, fmt.Errorf("read mappings of pid %d: %w", pid, err)
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mappings of pid %d: %w", pid, err)
	}
	return out, nil
}

func parseMapsLine(line string) (Mapping, error) {
	var m Mapping
	// address perms offset dev inode [path]; the path may contain spaces.
	fields := strings.SplitN(line, " ", 6)
	if len(fields) < 5 {
		return m, fmt.Errorf("malformed maps line %q", line)
	}
	lo, hi, ok := strings.Cut(fields[0], "-")
	if !ok {
		return m, fmt.Errorf("malformed address range in maps line %q", line)
	}
	start, err1 := strconv.ParseUint(lo, 16, 64)
	end, err2 := strconv.ParseUint(hi, 16, 64)
	off, err3 := strconv.ParseUint(fields[2], 16, 64)
	maj, min, ok2 := strings.Cut(fields[3], ":")
	dmaj, err4 := strconv.ParseUint(maj, 16, 32)
	dmin, err5 := strconv.ParseUint(min, 16, 32)
	ino, err6 := strconv.ParseUint(fields[4], 10, 64)
	if err := errors.Join(err1, err2, err3, err4, err5, err6); err != nil || !ok2 {
		return m, fmt.Errorf("malformed maps line %q: %v", line, err)
	}
	m.Start, m.End, m.Perms, m.Offset = uintptr(start), uintptr(end), fields[1], off
	m.Dev, m.Inode = unix.Mkdev(uint32(dmaj), uint32(dmin)), ino
	if len(fields) == 6 {
		m.Path = strings.TrimLeft(fields[5], " ")
		if p, ok := strings.CutSuffix(m.Path, " (deleted)"); ok {
			m.Path, m.Deleted = p, true
		}
	}
	return m, nil
}

// FileMappings returns the mappings of pid backed by the file at path,
// matched by device and inode (not by name: a RAM file may be reached by
// several names, or be deleted and replaced by another of the same name).
func FileMappings(pid int, path string) ([]Mapping, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	return mappingsOf(pid, st.Dev, st.Ino)
}

// FileMappingsOf is FileMappings for an open file.
func FileMappingsOf(pid int, f *os.File) ([]Mapping, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	return mappingsOf(pid, st.Dev, st.Ino)
}

func mappingsOf(pid int, dev, ino uint64) ([]Mapping, error) {
	all, err := Mappings(pid)
	if err != nil {
		return nil, err
	}
	var out []Mapping
	for _, m := range all {
		if m.Inode == ino && m.Dev == dev {
			out = append(out, m)
		}
	}
	return out, nil
}

// LockMapped takes the per-guest lock (Lock) of every file pid maps
// MAP_SHARED, reached through /proc/PID/map_files (so a deleted file or a
// memfd is found too): held, no migration of that guest can start, and
// ErrLocked means one runs. The caller closes the files to release the
// locks.
func LockMapped(pid int) ([]*os.File, error) {
	all, err := Mappings(pid)
	if err != nil {
		return nil, err
	}
	type id struct{ dev, ino uint64 }
	seen := map[id]bool{}
	var files []*os.File
	release := func() {
		for _, f := range files {
			f.Close()
		}
	}
	for _, m := range all {
		if !m.Shared() || m.Inode == 0 || seen[id{m.Dev, m.Inode}] {
			continue
		}
		seen[id{m.Dev, m.Inode}] = true
		f, err := os.Open(fmt.Sprintf("/proc/%d/map_files/%x-%x", pid, m.Start, m.End))
		if err != nil {
			release()
			return nil, fmt.Errorf("open %s as mapped by pid %d: %w", m.Path, pid, err)
		}
		files = append(files, f)
		if err := Lock(f); err != nil {
			release()
			return nil, fmt.Errorf("%s: %w", m.Path, err)
		}
	}
	return files, nil
}
