package qemu

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
)

// QEMU10Binary is where contrib/install-qemu10.sh (make qemu10) installs
// QEMU 10, beside the system's QEMU.
const QEMU10Binary = "/opt/dmig/qemu10/bin/qemu-system-x86_64"

// Version is a QEMU release.
type Version struct{ Major, Minor, Micro int }

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro) }

// AtLeast reports whether v is major.minor or later.
func (v Version) AtLeast(major, minor int) bool {
	return v.Major > major || (v.Major == major && v.Minor >= minor)
}

// TCGDirtyFix is the first QEMU whose TCG records every guest store in
// the migration dirty bitmap: before it, QEMU's own pre-copy loses pages
// of a TCG guest (see ErrBuggyTCG).
var TCGDirtyFix = Version{9, 0, 0}

// QEMUVersion is the version the monitor's QEMU announced in its greeting.
func (m *Monitor) QEMUVersion() Version {
	q := m.Version.QEMU
	return Version{q.Major, q.Minor, q.Micro}
}

var versionLine = regexp.MustCompile(`QEMU emulator version (\d+)\.(\d+)\.(\d+)`)

// BinaryVersion runs binary --version and parses its version.
func BinaryVersion(ctx context.Context, binary string) (Version, error) {
	out, err := exec.CommandContext(ctx, binary, "--version").Output()
	if err != nil {
		return Version{}, fmt.Errorf("run %s --version: %w", binary, err)
	}
	m := versionLine.FindSubmatch(out)
	if m == nil {
		return Version{}, fmt.Errorf("parse %s --version: %q", binary, bytes.TrimSpace(out))
	}
	var v [3]int
	for i := range v {
		v[i], _ = strconv.Atoi(string(m[i+1]))
	}
	return Version{v[0], v[1], v[2]}, nil
}
