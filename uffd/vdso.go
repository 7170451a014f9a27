package uffd

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// vdsoCode returns the start and end of pid's executable vDSO mapping, from
// /proc/PID/maps. Attach looks there for a syscall instruction to borrow.
// RAM-file mappings are internal/ramfile's business; uffd reads only this
// one line, so that it imports nothing of the project.
func vdsoCode(pid int) (start, end uintptr, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// address perms offset dev inode path
		fields := strings.Fields(sc.Text())
		if len(fields) != 6 || fields[5] != "[vdso]" || !strings.Contains(fields[1], "x") {
			continue
		}
		lo, hi, _ := strings.Cut(fields[0], "-")
		s, err1 := strconv.ParseUint(lo, 16, 64)
		e, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || e <= s {
			return 0, 0, fmt.Errorf("malformed vdso line %q", sc.Text())
		}
		return uintptr(s), uintptr(e), nil
	}
	if err := sc.Err(); err != nil {
		return 0, 0, err
	}
	return 0, 0, fmt.Errorf("pid %d has no executable vdso mapping", pid)
}
