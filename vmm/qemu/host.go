package qemu

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Running is a QEMU process found on this host.
type Running struct {
	Pid int
	// Name is the VM's -name (its guest= value), "" if none.
	Name string
	// QMP is its QMP unix socket, "" if its command line has none.
	QMP string
	// Incoming: started with -incoming, to receive a migration (a
	// destination); it may since have received it and run.
	Incoming bool
}

// FindRunning lists the QEMU system emulators running on this host, from
// /proc: their pid, -name and QMP socket (see QMPSocket). Processes that
// end while they are read are left out.
func FindRunning() ([]Running, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var out []Running
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		bin, args, err := SourceCommand(pid)
		if err != nil || !IsCommand([]string{bin}) {
			continue
		}
		r := runningOf(pid, args)
		if r.QMP != "" && !filepath.IsAbs(r.QMP) {
			r.QMP = filepath.Join(fmt.Sprintf("/proc/%d/cwd", pid), r.QMP)
		}
		out = append(out, r)
	}
	return out, nil
}

// runningOf reads what FindRunning reports from a command line.
func runningOf(pid int, args []string) Running {
	r := Running{Pid: pid}
	r.QMP, _ = qmpSocketOf(args)
	for i := 0; i+1 < len(args); i++ {
		switch "-" + strings.TrimLeft(args[i], "-") {
		case "-name":
			parts := opts(args[i+1])
			if v, ok := optValue(parts, "guest"); ok {
				r.Name = v
			} else if !strings.Contains(parts[0], "=") {
				r.Name = parts[0]
			}
		case "-incoming":
			r.Incoming = true
		default:
			continue
		}
		i++
	}
	return r
}

// SocketsIn lists the unix sockets in dir (not its subdirectories), sorted:
// the QMP sockets of a directory of VMs.
func SocketsIn(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list QMP sockets: %w", err)
	}
	var out []string
	for _, e := range ents {
		if e.Type()&fs.ModeSocket != 0 {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	slices.Sort(out)
	return out, nil
}

// AgentAddr is the layout endpoint of the VM's guest agent, found on its
// command line (AgentSocket): unix:PATH, a relative path resolved in QEMU's
// working directory; false if the VM has no org.dmig.agent port.
func (s *Source) AgentAddr() (string, bool) {
	p, ok := AgentSocket(s.command[1:])
	if !ok {
		return "", false
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(fmt.Sprintf("/proc/%d/cwd", s.machine.Pid), p)
	}
	return "unix:" + p, true
}
