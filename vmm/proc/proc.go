// Package proc drives process guests: programs whose whole state lives in
// RAM files they map MAP_SHARED (see docs/architecture.md, "Process
// guests"). Source pauses and resumes one with SIGSTOP/SIGCONT; Target
// creates the RAM files on the destination and starts the guest's command
// with DMIG_INCOMING=1 and DMIG_RAM=path[:path...], waiting for it to stop
// itself before any page is placed.
package proc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dmig/dmig/precopy"
	"github.com/dmig/dmig/wire"
)

// Environment of an incoming guest.
const (
	EnvIncoming = "DMIG_INCOMING"
	EnvRAM      = "DMIG_RAM"
)

// Source is a running process guest on the source host.
type Source struct {
	pid     int
	name    string
	blocks  []precopy.Block
	destCmd []string
}

var _ precopy.Guest = (*Source)(nil)

// NewSource describes the process pid whose RAM is the files ram (each a
// block named after its file's base name); destCmd is the command the
// destination starts it with.
func NewSource(pid int, ram []string, destCmd []string) (*Source, error) {
	if err := unix.Kill(pid, 0); err != nil {
		return nil, fmt.Errorf("guest pid %d: %w", pid, err)
	}
	s := &Source{pid: pid, destCmd: destCmd}
	seen := map[string]bool{}
	for _, p := range ram {
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("RAM file: %w", err)
		}
		if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("RAM file %s is not a regular file", p)
		}
		name := filepath.Base(p)
		if seen[name] {
			return nil, fmt.Errorf("two RAM files named %s: block names must differ", name)
		}
		seen[name] = true
		s.blocks = append(s.blocks, precopy.Block{Name: name, Path: p, Size: uint64(st.Size())})
	}
	if len(s.blocks) == 0 {
		return nil, errors.New("no RAM file given")
	}
	s.name = fmt.Sprintf("%s:%d", s.blocks[0].Name, pid)
	return s, nil
}

func (s *Source) Name() string          { return s.name }
func (s *Source) Pid() int              { return s.pid }
func (s *Source) RAM() []precopy.Block  { return s.blocks }
func (s *Source) DestCommand() []string { return s.destCmd }
func (s *Source) Resume(context.Context) error {
	if err := unix.Kill(s.pid, unix.SIGCONT); err != nil {
		return fmt.Errorf("resume guest pid %d: %w", s.pid, err)
	}
	return nil
}

// Pause sends SIGSTOP and waits until every thread of the guest stopped.
func (s *Source) Pause(ctx context.Context) error {
	if err := unix.Kill(s.pid, unix.SIGSTOP); err != nil {
		return fmt.Errorf("pause guest pid %d: %w", s.pid, err)
	}
	return waitStopped(ctx, s.pid)
}

// Finish kills the source guest: the destination runs it now.
func (s *Source) Finish(context.Context) error {
	if err := unix.Kill(s.pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("end source guest pid %d: %w", s.pid, err)
	}
	return nil
}

// waitStopped polls /proc until every thread of pid is stopped.
func waitStopped(ctx context.Context, pid int) error {
	for {
		all, err := allStopped(pid)
		if err != nil {
			return err
		}
		if all {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for guest pid %d to stop: %w", pid, ctx.Err())
		case <-time.After(100 * time.Microsecond):
		}
	}
}

func allStopped(pid int) (bool, error) {
	tasks, err := readTasks(pid)
	if err != nil {
		return false, err
	}
	for _, t := range tasks {
		st, err := taskState(pid, t)
		if err != nil {
			continue // thread exited
		}
		switch st {
		case "T", "t":
		case "Z", "X":
			return false, fmt.Errorf("guest pid %d exited", pid)
		default:
			return false, nil
		}
	}
	return true, nil
}

// readTasks lists the thread ids of pid.
func readTasks(pid int) ([]string, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil, fmt.Errorf("guest pid %d: %w", pid, err)
	}
	names := make([]string, len(ents))
	for i, e := range ents {
		names[i] = e.Name()
	}
	return names, nil
}

func taskState(pid int, tid string) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, tid))
	if err != nil {
		return "", err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) == 0 {
		return "", fmt.Errorf("malformed stat of %d/%s", pid, tid)
	}
	return f[0], nil
}

// Target is a process guest about to arrive on the destination host.
type Target struct {
	dir    string
	cmd    []string
	paths  []string
	proc   *exec.Cmd
	log    *os.File
	exited <-chan struct{}
	reaped bool
}

// NewTarget prepares a guest whose RAM files go in dir and which is started
// with cmd. The guest's output goes to dir/NAME.log.
func NewTarget(dir string, cmd []string) (*Target, error) {
	if len(cmd) == 0 {
		return nil, errors.New("no guest command: a process guest needs the command to start it with")
	}
	// The directory is made by Create, once the session is set up: a
	// session dropped before then leaves nothing behind.
	return &Target{dir: dir, cmd: cmd}, nil
}

// ResumesBySignal reports that Resume is SIGCONT: a serve that adopts
// this guest after its own death can resume it (dbrestore.SignalResumer).
func (t *Target) ResumesBySignal() bool { return true }

// Paths are the RAM files Create made.
func (t *Target) Paths() []string { return t.paths }

// Pid is the guest's pid once started.
func (t *Target) Pid() int {
	if t.proc == nil || t.proc.Process == nil {
		return 0
	}
	return t.proc.Process.Pid
}

// Create makes sparse RAM files named after the blocks. An existing file is
// an error: it may be another guest's memory.
func (t *Target) Create(_ context.Context, blocks []wire.Block) ([]string, error) {
	// The files start sparse; writing into a mapping of a full filesystem
	// would kill dmig with SIGBUS mid-migration. Refuse up front instead.
	if err := os.MkdirAll(t.dir, 0o700); err != nil {
		return nil, fmt.Errorf("create RAM directory: %w", err)
	}
	var need uint64
	for _, b := range blocks {
		need += b.Size
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(t.dir, &fs); err != nil {
		return nil, fmt.Errorf("check space in %s: %w", t.dir, err)
	}
	if fs.Type != unix.TMPFS_MAGIC && fs.Type != unix.HUGETLBFS_MAGIC {
		return nil, fmt.Errorf("%s is not on tmpfs or hugetlbfs (type %#x): userfaultfd can take over only shared-memory RAM files: %w", t.dir, fs.Type, ErrNotShmem)
	}
	if free := fs.Bavail * uint64(fs.Bsize); free < need {
		return nil, fmt.Errorf("%s has %d MiB free, the guest's RAM needs %d MiB: %w", t.dir, free>>20, need>>20, ErrNoSpace)
	}
	for _, b := range blocks {
		if strings.ContainsAny(b.Name, "/\x00") || b.Name == "." || b.Name == ".." {
			return nil, fmt.Errorf("RAM block name %q is not a file name", b.Name)
		}
		p := filepath.Join(t.dir, b.Name)
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			t.removeFiles()
			return nil, fmt.Errorf("create RAM file for block %s: %w", b.Name, err)
		}
		t.paths = append(t.paths, p)
		err = f.Truncate(int64(b.Size))
		f.Close()
		if err != nil {
			t.removeFiles()
			return nil, fmt.Errorf("size RAM file %s: %w", p, err)
		}
	}
	return t.paths, nil
}

func (t *Target) removeFiles() {
	for _, p := range t.paths {
		os.Remove(p)
	}
	t.paths = nil
}

// Start runs the guest command incoming and waits until it stopped itself.
func (t *Target) Start(ctx context.Context) (int, error) {
	logPath := filepath.Join(t.dir, filepath.Base(t.paths[0])+".log")
	lf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return 0, fmt.Errorf("open guest log: %w", err)
	}
	t.log = lf
	c := exec.Command(t.cmd[0], t.cmd[1:]...)
	c.Env = append(os.Environ(), EnvIncoming+"=1", EnvRAM+"="+strings.Join(t.paths, ":"))
	c.Stdout, c.Stderr = lf, lf
	// Its own session: a terminal's signals do not reach it. It dies with
	// this dmig until uffd.AttachKept clears the signal (a guest that never
	// resumed must not outlive a dead serve); from then on it outlives it.
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	if err := c.Start(); err != nil {
		return 0, fmt.Errorf("start guest %q: %w", t.cmd[0], err)
	}
	t.proc = c
	pid := c.Process.Pid
	if t.exited, err = Exited(pid); err != nil {
		c.Process.Kill()
		return 0, err
	}
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	for {
		if st, err := taskState(pid, fmt.Sprint(pid)); err == nil && (st == "T" || st == "t") {
			if all, _ := allStopped(pid); all {
				return pid, nil
			}
		}
		select {
		case <-t.exited:
			return 0, fmt.Errorf("guest exited before it was ready (%v); see %s", c.ProcessState, logPath)
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-deadline.C:
			return 0, fmt.Errorf("guest did not stop itself within 30s after mapping its RAM; see %s", logPath)
		case <-time.After(200 * time.Microsecond):
		}
	}
}

// Resume sends SIGCONT.
func (t *Target) Resume(context.Context) error {
	if err := t.proc.Process.Signal(syscall.SIGCONT); err != nil {
		return fmt.Errorf("resume guest pid %d: %w", t.Pid(), err)
	}
	return nil
}

// Kill ends the guest, waits for it, and removes its RAM files.
func (t *Target) Kill() error {
	if t.proc != nil {
		t.proc.Process.Kill()
		select {
		case <-t.exited:
			t.ExitCode() // reap
		case <-time.After(10 * time.Second):
			return fmt.Errorf("guest pid %d did not die within 10s of SIGKILL", t.Pid())
		}
	}
	if t.log != nil {
		t.log.Close()
	}
	t.removeFiles()
	return nil
}

// Exited is closed when the guest process has exited (nil before Start).
func (t *Target) Exited() <-chan struct{} { return t.exited }

// ExitCode is the guest's exit status once Exited is closed (-1 before).
func (t *Target) ExitCode() int {
	if t.proc == nil || t.exited == nil {
		return -1
	}
	select {
	case <-t.exited:
	default:
		return -1
	}
	if !t.reaped {
		t.reaped = true
		t.proc.Wait()
	}
	return t.proc.ProcessState.ExitCode()
}
