package qemu

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// SourceCommand reads a running QEMU's command line from /proc/PID/cmdline:
// the binary and its arguments.
func SourceCommand(pid int) (string, []string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return "", nil, fmt.Errorf("read qemu command line: %w", err)
	}
	parts := strings.Split(string(bytes.TrimRight(b, "\x00")), "\x00")
	if len(parts) == 0 || parts[0] == "" {
		return "", nil, fmt.Errorf("qemu pid %d has an empty command line", pid)
	}
	return parts[0], parts[1:], nil
}

// DestOptions says how a destination's command line differs from the
// source's.
type DestOptions struct {
	// Dir holds the destination's QMP socket (qmp.sock), serial log
	// (serial.log) and other sockets (<chardev id>.sock).
	Dir string
	// MemPaths gives a backend id's new mem-path; backends not listed keep
	// theirs (another host, or the same file on purpose: x-ignore-shared on
	// one host).
	MemPaths map[string]string
	// Ports maps a hostfwd host port to the destination's; ports not
	// listed are kept (right on another host, a clash on the same one).
	Ports map[int]int
}

// DestPlan is a destination's command line and where its files are.
type DestPlan struct {
	Args   []string
	QMP    string
	Serial string
	Stderr string
}

// opts splits a QEMU option string at single commas (",," is a literal
// comma).
func opts(s string) []string {
	var out []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			if i+1 < len(s) && s[i+1] == ',' {
				cur.WriteByte(',')
				i++
				continue
			}
			out = append(out, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(s[i])
	}
	return append(out, cur.String())
}

func joinOpts(parts []string) string {
	esc := make([]string, len(parts))
	for i, p := range parts {
		esc[i] = escapeOpt(p)
	}
	return strings.Join(esc, ",")
}

// optValue returns key's value in split options.
func optValue(parts []string, key string) (string, bool) {
	for _, p := range parts {
		if v, ok := strings.CutPrefix(p, key+"="); ok {
			return v, true
		}
	}
	return "", false
}

func setOpt(parts []string, key, val string) {
	for i, p := range parts {
		if strings.HasPrefix(p, key+"=") {
			parts[i] = key + "=" + val
		}
	}
}

// dropsWithValue: options a destination drops, with their value.
func dropsWithValue(flag string) bool { return flag == "-incoming" || flag == "-pidfile" }

// rewrites: options DestArgs rewrites the value of.
func rewrites(flag string) bool {
	switch flag {
	case "-object", "-qmp", "-serial", "-chardev", "-netdev", "-nic":
		return true
	}
	return false
}

// DestArgs derives a destination's command line from the source's: RAM
// mem-paths, the QMP socket, the serial file, chardev sockets and hostfwd
// ports rewritten, -daemonize/-pidfile/-incoming dropped and -incoming
// defer added. Disks are kept: check them with CheckDisks.
func DestArgs(src []string, o DestOptions) (*DestPlan, error) {
	p := &DestPlan{
		QMP:    filepath.Join(o.Dir, "qmp.sock"),
		Serial: filepath.Join(o.Dir, "serial.log"),
		Stderr: filepath.Join(o.Dir, "qemu.stderr"),
	}
	controlChardevs := map[string]bool{}
	for i := 0; i+1 < len(src); i++ {
		if src[i] == "-mon" {
			mp := opts(src[i+1])
			if m, _ := optValue(mp, "mode"); m == "control" {
				id, _ := optValue(mp, "chardev")
				controlChardevs[id] = true
			}
		}
	}
	// QEMU serves one client per QMP socket, so an operator may run
	// several (one for libvirt, one for dmig): the first is dmig's.
	nqmp := 0
	qmpPath := func() string {
		nqmp++
		if nqmp == 1 {
			return p.QMP
		}
		return filepath.Join(o.Dir, fmt.Sprintf("qmp%d.sock", nqmp-1))
	}
	a := make([]string, 0, len(src)+2)
	for i := 0; i < len(src); i++ {
		arg := src[i]
		flag := "-" + strings.TrimLeft(arg, "-") // QEMU accepts --opt too
		if flag == "-daemonize" {
			continue
		}
		if dropsWithValue(flag) {
			i++
			continue
		}
		// Only options dmig rewrites are read with their value: an
		// option it does not know may take none (-nodefaults, -S).
		if !rewrites(flag) || i+1 >= len(src) {
			a = append(a, arg)
			continue
		}
		val := src[i+1]
		switch flag {
		case "-object":
			parts := opts(val)
			id, _ := optValue(parts, "id")
			if np, ok := o.MemPaths[id]; ok && strings.HasPrefix(parts[0], "memory-backend-") {
				setOpt(parts, "mem-path", np)
				val = joinOpts(parts)
			}
		case "-qmp":
			val = "unix:" + escapeOpt(qmpPath()) + ",server=on,wait=off"
		case "-serial":
			if strings.HasPrefix(val, "file:") {
				val = "file:" + escapeOpt(p.Serial)
			}
		case "-chardev":
			parts := opts(val)
			id, _ := optValue(parts, "id")
			if _, ok := optValue(parts, "path"); ok && parts[0] == "socket" {
				np := filepath.Join(o.Dir, id+".sock")
				if controlChardevs[id] {
					np = qmpPath()
				}
				setOpt(parts, "path", np)
				val = joinOpts(parts)
			}
		case "-netdev", "-nic":
			parts := opts(val)
			for j, part := range parts {
				rule, ok := strings.CutPrefix(part, "hostfwd=")
				if !ok {
					continue
				}
				nr, err := remapHostfwd(rule, o.Ports)
				if err != nil {
					return nil, err
				}
				parts[j] = "hostfwd=" + nr
			}
			val = joinOpts(parts)
		}
		a = append(a, arg, val)
		i++
	}
	if nqmp == 0 {
		a = append(a, "-qmp", "unix:"+escapeOpt(p.QMP)+",server=on,wait=off")
	}
	p.Args = append(a, "-incoming", "defer")
	return p, nil
}

// remapHostfwd rewrites the host port of a hostfwd rule
// ([tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport).
func remapHostfwd(rule string, ports map[int]int) (string, error) {
	host, guest, ok := strings.Cut(rule, "-")
	if !ok {
		return "", fmt.Errorf("parse hostfwd rule %q", rule)
	}
	i := strings.LastIndexByte(host, ':')
	if i < 0 {
		return "", fmt.Errorf("parse hostfwd rule %q", rule)
	}
	hp, err := strconv.Atoi(host[i+1:])
	if err != nil {
		return "", fmt.Errorf("parse hostfwd port in %q: %w", rule, err)
	}
	if np, ok := ports[hp]; ok {
		hp = np
	}
	return host[:i+1] + strconv.Itoa(hp) + "-" + guest, nil
}

// Disks lists the image files a command line opens (-drive file=,
// -blockdev filename=).
func Disks(args []string) []string {
	var out []string
	for i := 0; i+1 < len(args); i++ {
		var key string
		switch "-" + strings.TrimLeft(args[i], "-") {
		case "-drive":
			key = "file"
		case "-blockdev":
			key = "filename"
		default:
			continue
		}
		if v, ok := optValue(opts(args[i+1]), key); ok && v != "" {
			out = append(out, v)
		}
		i++
	}
	return out
}

// GuestDiskNames names the virtio disks of a command line as the guest's
// Linux does (vda, vdb, ... in -drive if=virtio order: QEMU gives them PCI
// slots in that order, and the kernel names them in slot order), and as
// serial:S for a drive with serial=S: the names a guest agent's layout
// uses. name → image path. Other disks (IDE, SCSI,
// -blockdev with -device) are not named: their pages go as data.
func GuestDiskNames(args []string) map[string]string {
	out := map[string]string{}
	n := 0
	for i := 0; i+1 < len(args); i++ {
		if "-"+strings.TrimLeft(args[i], "-") != "-drive" {
			continue
		}
		parts := opts(args[i+1])
		i++
		if iface, _ := optValue(parts, "if"); iface != "virtio" {
			continue
		}
		file, ok := optValue(parts, "file")
		if ok && file != "" && n < 26 {
			out["vd"+string(rune('a'+n))] = file
			// The guest agent names a disk with a serial by it.
			if serial, ok := optValue(parts, "serial"); ok && serial != "" {
				out["serial:"+serial] = file
			}
		}
		n++
	}
	return out
}

// CheckDisks refuses a destination whose disks are not the source's own
// files: a destination started on another image reads wrong data and
// corrupts it, and QEMU does not check. The source's relative paths are
// resolved in its working directory, the destination's in ours; files are
// compared by device and inode, so a copy under the same name is refused
// and a hard link under another name accepted.
func CheckDisks(srcPid int, srcArgs, dstArgs []string) error {
	sd, dd := Disks(srcArgs), Disks(dstArgs)
	if len(sd) != len(dd) {
		return fmt.Errorf("%w: source has %d disks, destination %d", ErrDiskMismatch, len(sd), len(dd))
	}
	for i := range sd {
		sp := sd[i]
		if !filepath.IsAbs(sp) {
			sp = filepath.Join(fmt.Sprintf("/proc/%d/cwd", srcPid), sp)
		}
		var ss, ds unix.Stat_t
		if err := unix.Stat(sp, &ss); err != nil {
			return fmt.Errorf("stat source disk %s: %w", sd[i], err)
		}
		if err := unix.Stat(dd[i], &ds); err != nil {
			return fmt.Errorf("stat destination disk %s: %w", dd[i], err)
		}
		if ss.Dev != ds.Dev || ss.Ino != ds.Ino {
			return fmt.Errorf("%w: %s (device %d inode %d) is not the source's %s (device %d inode %d)",
				ErrDiskMismatch, dd[i], ds.Dev, ds.Ino, sd[i], ss.Dev, ss.Ino)
		}
	}
	return nil
}

// DiskMarkAttr is the extended attribute a source sets on its disk files to
// the migration's session ID (see MarkDisks).
const DiskMarkAttr = "user.dmig.session"

// diskPaths are a command line's disk files, relative ones resolved in the
// process pid's working directory (pid 0: ours).
func diskPaths(pid int, args []string) []string {
	var out []string
	for _, p := range Disks(args) {
		if !filepath.IsAbs(p) && pid != 0 {
			p = filepath.Join(fmt.Sprintf("/proc/%d/cwd", pid), p)
		}
		out = append(out, p)
	}
	return out
}

// MarkDisks sets DiskMarkAttr on every disk file of the source (pid and
// its arguments) to session: a destination on another host finds the mark
// on its files only if they are the same files on shared storage.
func MarkDisks(pid int, args []string, session string) error {
	for _, p := range diskPaths(pid, args) {
		if err := unix.Setxattr(p, DiskMarkAttr, []byte(session), 0); err != nil {
			return fmt.Errorf("mark disk %s: %w", p, err)
		}
	}
	return nil
}

// CheckDiskMarks refuses a destination (its arguments) whose disk files do
// not carry the session's mark: they are not the source's files (a copy, or
// another host's file of the same name), or the storage does not keep user
// xattrs. The mark is set just before the session opens, so even a copy
// made earlier does not have it.
func CheckDiskMarks(args []string, session string) error {
	for _, p := range diskPaths(0, args) {
		buf := make([]byte, 128)
		n, err := unix.Getxattr(p, DiskMarkAttr, buf)
		switch {
		case errors.Is(err, unix.ENODATA):
			return fmt.Errorf("%w: %s has no mark of this migration (%s): not the source's file on shared storage", ErrDiskMismatch, p, DiskMarkAttr)
		case err != nil:
			return fmt.Errorf("%w: read %s of %s: %v", ErrDiskMismatch, DiskMarkAttr, p, err)
		case string(buf[:n]) != session:
			return fmt.Errorf("%w: %s is marked by migration %s, this is %s: not the source's file", ErrDiskMismatch, p, buf[:n], session)
		}
	}
	return nil
}

// QMPSocket finds the QMP unix socket of the running QEMU pid from its
// command line (-qmp unix:PATH, or a socket chardev behind -mon
// mode=control); a relative path is resolved in QEMU's working directory.
func QMPSocket(pid int) (string, error) {
	_, args, err := SourceCommand(pid)
	if err != nil {
		return "", err
	}
	p, ok := qmpSocketOf(args)
	if !ok {
		return "", fmt.Errorf("qemu pid %d has no QMP unix socket: start it with -qmp unix:PATH,server=on,wait=off", pid)
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(fmt.Sprintf("/proc/%d/cwd", pid), p)
	}
	return p, nil
}

// chardevSockets maps the id of each unix socket chardev of a command line
// to its path.
func chardevSockets(args []string) map[string]string {
	paths := map[string]string{}
	for i := 0; i+1 < len(args); i++ {
		if "-"+strings.TrimLeft(args[i], "-") != "-chardev" {
			continue
		}
		parts := opts(args[i+1])
		id, _ := optValue(parts, "id")
		if p, ok := optValue(parts, "path"); ok && parts[0] == "socket" {
			paths[id] = p
		}
		i++
	}
	return paths
}

func qmpSocketOf(args []string) (string, bool) {
	control := map[string]bool{}
	for i := 0; i+1 < len(args); i++ {
		parts := opts(args[i+1])
		switch "-" + strings.TrimLeft(args[i], "-") {
		case "-qmp":
			if p, ok := strings.CutPrefix(parts[0], "unix:"); ok {
				return p, true
			}
		case "-mon":
			if m, _ := optValue(parts, "mode"); m == "control" {
				id, _ := optValue(parts, "chardev")
				control[id] = true
			}
		default:
			continue
		}
		i++
	}
	paths := chardevSockets(args)
	for id := range control {
		if p, ok := paths[id]; ok {
			return p, true
		}
	}
	return "", false
}

// AgentChannel is the name of the virtio-serial port dmig's guest agent
// serves layouts on.
const AgentChannel = "org.dmig.agent"

// AgentSocket finds, in a command line, the host end of the guest agent's
// virtio-serial port: the unix socket of the chardev behind
// "-device virtserialport,...,name=org.dmig.agent". A relative path is
// returned as written.
func AgentSocket(args []string) (string, bool) {
	var chardev string
	for i := 0; i+1 < len(args); i++ {
		if "-"+strings.TrimLeft(args[i], "-") != "-device" {
			continue
		}
		parts := opts(args[i+1])
		if n, _ := optValue(parts, "name"); parts[0] == "virtserialport" && n == AgentChannel {
			chardev, _ = optValue(parts, "chardev")
		}
		i++
	}
	p, ok := chardevSockets(args)[chardev]
	return p, ok && chardev != ""
}

// HostForwardPorts lists the host ports of a command line's user-network
// hostfwd rules: a destination on the same host needs others (see
// DestOptions.Ports).
func HostForwardPorts(args []string) []int {
	var out []int
	for i := 0; i+1 < len(args); i++ {
		switch "-" + strings.TrimLeft(args[i], "-") {
		case "-netdev", "-nic":
		default:
			continue
		}
		for _, part := range opts(args[i+1]) {
			rule, ok := strings.CutPrefix(part, "hostfwd=")
			if !ok {
				continue
			}
			host, _, _ := strings.Cut(rule, "-")
			if j := strings.LastIndexByte(host, ':'); j >= 0 {
				if p, err := strconv.Atoi(host[j+1:]); err == nil {
					out = append(out, p)
				}
			}
		}
		i++
	}
	return out
}

// sharedFS are the file systems (statfs magic numbers) another host may
// mount as the same files: network and cluster file systems. Local ones
// (ext4, xfs, btrfs, tmpfs, overlay) are not, whatever their name.
var sharedFS = map[int64]string{
	0x6969:     "nfs",
	0x00c36400: "ceph",
	0x65735546: "fuse (glusterfs, ...)",
	0x01161970: "gfs2",
	0x7461636f: "ocfs2",
	0xfe534d42: "smb2",
	0xff534d42: "cifs",
	0x0bd00bd0: "lustre",
	0x47504653: "gpfs",
	0x19830326: "beegfs",
}

// CheckSharedDisks refuses a VM (its pid and arguments) whose disks a
// destination on another host would not open as the same files, before a
// migration starts: the destination checks its disks only when it starts
// its QEMU, after the pre-copy passes (CheckDiskMarks). With shared, each
// disk must lie under one of those directories (or be one of those
// devices), as the operator declares; without, on a network or cluster
// file system, be a block device, or be a protocol URL (rbd:, iscsi://,
// nbd:, gluster://), which names storage off this host. Errors wrap
// ErrDiskNotShared.
func CheckSharedDisks(pid int, args []string, shared []string) error {
	for _, d := range Disks(args) {
		if proto, _, ok := strings.Cut(d, ":"); ok && !strings.ContainsRune(proto, '/') && proto != "" && !filepath.IsAbs(d) {
			continue // a protocol, not a file of this host
		}
		p := d
		if !filepath.IsAbs(p) {
			p = filepath.Join(fmt.Sprintf("/proc/%d/cwd", pid), p)
		}
		real, err := filepath.EvalSymlinks(p)
		if err != nil {
			return fmt.Errorf("%w: disk %s: %v", ErrDiskNotShared, d, err)
		}
		if len(shared) > 0 {
			if !under(real, shared) {
				return fmt.Errorf("%w: disk %s is not under shared_storage %v", ErrDiskNotShared, real, shared)
			}
			continue
		}
		var st unix.Stat_t
		if err := unix.Stat(real, &st); err != nil {
			return fmt.Errorf("%w: stat disk %s: %v", ErrDiskNotShared, real, err)
		}
		if st.Mode&unix.S_IFMT == unix.S_IFBLK {
			continue
		}
		var fs unix.Statfs_t
		if err := unix.Statfs(real, &fs); err != nil {
			return fmt.Errorf("%w: statfs of disk %s: %v", ErrDiskNotShared, real, err)
		}
		if _, ok := sharedFS[int64(fs.Type)]; !ok {
			return fmt.Errorf("%w: disk %s is on a local file system (type %#x); if the destination opens the same file, list its directory in shared_storage", ErrDiskNotShared, real, fs.Type)
		}
	}
	return nil
}

// under reports whether path is one of dirs or inside one.
func under(path string, dirs []string) bool {
	for _, d := range dirs {
		if r, err := filepath.EvalSymlinks(d); err == nil {
			d = r
		}
		d = filepath.Clean(d)
		if path == d || strings.HasPrefix(path, strings.TrimSuffix(d, "/")+"/") {
			return true
		}
	}
	return false
}
