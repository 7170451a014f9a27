package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/dmig/dmig/dbrestore"
	"github.com/dmig/dmig/precopy"
	"github.com/dmig/dmig/wire"
)

// Source is a running QEMU on the source host, as the migration engine
// sees it. It owns its Monitor (Close it).
type Source struct {
	mon     *Monitor
	machine *Machine
	command []string
	name    string
	// prepared: the settings PrepareDeviceState replaced, nil if it has
	// not run (or UnprepareDeviceState has put them back).
	prepared *migrationSettings
}

var (
	_ precopy.Guest               = (*Source)(nil)
	_ precopy.AddressTranslator   = (*Source)(nil)
	_ precopy.DeviceStater        = (*Source)(nil)
	_ precopy.DeviceStatePreparer = (*Source)(nil)
	_ precopy.DiskMarker          = (*Source)(nil)
)

// MarkDisks labels the VM's disk files with the session (see the package
// function MarkDisks).
func (s *Source) MarkDisks(_ context.Context, session wire.SessionID) error {
	return MarkDisks(s.machine.Pid, s.command[1:], session.String())
}

// NewSource connects to the QEMU whose QMP socket is qmpPath and discovers
// its RAM (see Discover: RAM must be a shared file or memfd).
func NewSource(ctx context.Context, qmpPath string) (*Source, error) {
	mon, err := Dial(ctx, qmpPath)
	if err != nil {
		return nil, err
	}
	s, err := newSource(ctx, mon)
	if err != nil {
		mon.Close()
		return nil, err
	}
	return s, nil
}

func newSource(ctx context.Context, mon *Monitor) (*Source, error) {
	m, err := Discover(ctx, mon, 0)
	if err != nil {
		return nil, err
	}
	bin, args, err := SourceCommand(m.Pid)
	if err != nil {
		return nil, err
	}
	s := &Source{mon: mon, machine: m, command: append([]string{bin}, args...), name: "qemu:" + strconv.Itoa(m.Pid)}
	var info struct {
		Name string `json:"name"`
	}
	if err := mon.Execute(ctx, "query-name", nil, &info); err == nil && info.Name != "" {
		s.name = info.Name
	}
	return s, nil
}

func (s *Source) Name() string                     { return s.name }
func (s *Source) Pid() int                         { return s.machine.Pid }
func (s *Source) Machine() *Machine                { return s.machine }
func (s *Source) Monitor() *Monitor                { return s.mon }
func (s *Source) Close() error                     { return s.mon.Close() }
func (s *Source) Pause(ctx context.Context) error  { return s.mon.Stop(ctx) }
func (s *Source) Resume(ctx context.Context) error { return s.mon.Cont(ctx) }

// RAM lists the RAM backends; a block's name is the backend id, which is
// QEMU's RAM block name too.
func (s *Source) RAM() []precopy.Block {
	out := make([]precopy.Block, len(s.machine.Blocks))
	for i, b := range s.machine.Blocks {
		out[i] = precopy.Block{Name: b.ID, Path: b.Path, Size: b.Size}
	}
	return out
}

// Translate maps a guest-physical address (what guest-agent layouts
// carry) to a RAM block and the offset in it; false for addresses no RAM
// backs.
func (s *Source) Translate(gpa uint64) (block string, off uint64, ok bool) {
	b, off, ok := s.machine.Block(gpa)
	if !ok {
		return "", 0, false
	}
	return b.ID, off, true
}

// DestCommand is the source's own command line (binary first); the
// destination rewrites it with DestArgs.
func (s *Source) DestCommand() []string { return s.command }

// DeviceState sends the paused source's device state into w
// (x-ignore-shared), through a unix socket in dir.
func (s *Source) DeviceState(ctx context.Context, dir string, w io.Writer) (MigrationInfo, error) {
	if s.prepared != nil {
		return sendDeviceState(ctx, s.mon, dir, w)
	}
	return SendDeviceState(ctx, s.mon, dir, w)
}

// PrepareDeviceState sets the source's migration settings for the device
// state while the guest still runs: each is a QMP round trip the pause
// would otherwise wait for. What it replaces is kept for
// UnprepareDeviceState: x-ignore-shared left on would make a later QEMU
// migration of this VM (virsh migrate) skip its RAM.
func (s *Source) PrepareDeviceState(ctx context.Context) error {
	if s.prepared == nil {
		old, err := s.mon.deviceStateSettings(ctx)
		if err != nil {
			return fmt.Errorf("source %s: %w", s.name, err)
		}
		s.prepared = &old
	}
	if err := s.mon.apply(ctx, migrationSettings{caps: ignoreShared(), maxBandwidth: deviceStateBandwidth}); err != nil {
		return fmt.Errorf("source %s: %w", s.name, err)
	}
	return nil
}

// UnprepareDeviceState puts back the settings PrepareDeviceState replaced:
// the migration was abandoned and the VM stays here.
func (s *Source) UnprepareDeviceState(ctx context.Context) error {
	if s.prepared == nil {
		return nil
	}
	if err := s.mon.apply(ctx, *s.prepared); err != nil {
		return fmt.Errorf("source %s: restore migration settings: %w", s.name, err)
	}
	s.prepared = nil
	return nil
}

// IsCommand reports whether argv starts a QEMU system emulator (what a
// QEMU source puts in Hello.Command): a destination then runs a Target.
func IsCommand(argv []string) bool {
	return len(argv) > 0 && strings.HasPrefix(filepath.Base(argv[0]), "qemu-system-")
}

// SendDeviceState is DeviceState for the migration engine
// (precopy.DeviceStater), its socket in the temporary directory.
func (s *Source) SendDeviceState(ctx context.Context, w io.Writer) error {
	_, err := s.DeviceState(ctx, os.TempDir(), w)
	return err
}

// Finish ends the source QEMU once the destination runs the guest.
func (s *Source) Finish(ctx context.Context) error {
	err := s.mon.Execute(ctx, "quit", nil, nil)
	if errors.Is(err, ErrMonitorClosed) {
		err = nil // QEMU may close the socket before replying
	}
	if err != nil {
		return fmt.Errorf("quit source qemu: %w", err)
	}
	return nil
}

// Target is a destination QEMU, as the migration engine sees it: RAM files
// made by Create, QEMU started with the source's command line rewritten
// (DestArgs) and -incoming defer, device state loaded by LoadDeviceState
// (the VM stays paused: the source was) and the guest let run by Resume.
type Target struct {
	// Command is the source's command line, binary first (from the
	// source's Hello, or the operator).
	Command []string
	// Dir holds the sockets and logs.
	Dir string
	// RAMDir holds the RAM files (default Dir): tmpfs such as /dev/shm,
	// like the source's.
	RAMDir string
	// Ports maps hostfwd ports (see DestOptions).
	Ports map[int]int
	// SourcePid, if not 0, is the source QEMU on this host: its disks are
	// checked to be the destination's (CheckDisks, device and inode).
	SourcePid int
	// Session, if SourcePid is 0, is the migration's session: the source
	// marked its disk files with it, and Start refuses disks without the
	// mark (CheckDiskMarks). With neither, disks are not checked.
	Session wire.SessionID
	// KillWithParent: see Config.
	KillWithParent bool
	// Binary, if set, runs the destination instead of the source's own
	// binary (Command[0]): it must be the same QEMU version.
	Binary string
	// Paused adds -S: after a migration by QEMU's own modes the
	// destination stays paused until Cont, so that its RAM can be compared
	// with the paused source's.
	Paused bool

	mem    map[string]string
	vm     *VM
	loaded bool
	// incoming is the socket QEMU listens on for device state, once
	// PrepareDeviceState ran.
	incoming string
}

var (
	_ dbrestore.Guest               = (*Target)(nil)
	_ dbrestore.DeviceStateLoader   = (*Target)(nil)
	_ dbrestore.DeviceStatePreparer = (*Target)(nil)
	_ dbrestore.SharedDisker        = (*Target)(nil)
	_ dbrestore.AfterResumer        = (*Target)(nil)
)

// SharedDisks names the source's virtio disks as its guest does (see
// GuestDiskNames): the destination reads storage-referenced pages from
// them. Start has checked, on one host, that they are the source's files.
func (t *Target) SharedDisks() map[string]string {
	if len(t.Command) == 0 {
		return nil
	}
	return GuestDiskNames(t.Command[1:])
}

// LoadDeviceState loads the source's device state (x-ignore-shared) read
// from r into the waiting QEMU. The VM is left paused, as the source was
// when it sent the state: a failure from here until Resume leaves the
// source free to run on.
func (t *Target) LoadDeviceState(ctx context.Context, r io.Reader) error {
	if t.vm == nil {
		return errors.New("destination qemu not started")
	}
	if t.incoming == "" {
		if err := t.PrepareDeviceState(ctx); err != nil {
			return err
		}
	}
	if err := LoadDeviceState(ctx, t.vm.Mon, t.incoming, r); err != nil {
		return err
	}
	st, err := t.vm.Mon.QueryStatus(ctx)
	if err != nil {
		return fmt.Errorf("destination after device state: %w", err)
	}
	if st.Running {
		// Only a source that ran while sending gives a running VM: the
		// engine pauses the source first, so this is a misuse.
		return fmt.Errorf("%w: destination runs before cont (the source was not paused)", ErrMigrationFailed)
	}
	t.loaded = true
	return nil
}

// PrepareDeviceState has the started QEMU listen for the device state
// (ListenDeviceState), so that LoadDeviceState, inside the downtime, only
// sends it.
func (t *Target) PrepareDeviceState(ctx context.Context) error {
	if t.vm == nil {
		return errors.New("destination qemu not started")
	}
	path, err := ListenDeviceState(ctx, t.vm.Mon, t.Dir)
	if err != nil {
		return err
	}
	t.incoming = path
	return nil
}

// Create makes the RAM files, sparse, at the source's sizes.
func (t *Target) Create(_ context.Context, blocks []wire.Block) ([]string, error) {
	ramDir := t.RAMDir
	if ramDir == "" {
		ramDir = t.Dir
	}
	for _, d := range []string{t.Dir, ramDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("create destination dir: %w", err)
		}
	}
	t.mem = map[string]string{}
	var paths []string
	for _, b := range blocks {
		p := filepath.Join(ramDir, "dmig-"+filepath.Base(t.Dir)+"-"+filepath.Base(b.Name))
		f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
		if err != nil {
			return nil, fmt.Errorf("create RAM file of %s: %w", b.Name, err)
		}
		err = f.Truncate(int64(b.Size))
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("size RAM file of %s: %w", b.Name, err)
		}
		t.mem[b.Name] = p
		paths = append(paths, p)
	}
	return paths, nil
}

// Start starts QEMU waiting for device state; it maps the RAM files and
// touches none of their pages until then.
func (t *Target) Start(ctx context.Context) (int, error) {
	if len(t.Command) == 0 {
		return 0, errors.New("no source command line for the destination qemu")
	}
	plan, err := DestArgs(t.Command[1:], DestOptions{Dir: t.Dir, MemPaths: t.mem, Ports: t.Ports})
	if err != nil {
		return 0, err
	}
	switch {
	case t.SourcePid != 0:
		if err := CheckDisks(t.SourcePid, t.Command[1:], plan.Args); err != nil {
			return 0, err
		}
	case t.Session != wire.SessionID{}:
		if err := CheckDiskMarks(plan.Args, t.Session.String()); err != nil {
			return 0, err
		}
	}
	bin := t.Command[0]
	if t.Binary != "" {
		bin = t.Binary
	}
	if t.Paused {
		plan.Args = append(plan.Args, "-S")
	}
	vm, err := Start(ctx, bin, plan.Args, plan.QMP, plan.Stderr, t.KillWithParent)
	if err != nil {
		return 0, err
	}
	t.vm = vm
	return vm.Pid(), nil
}

// VM is the destination QEMU once started.
func (t *Target) VM() *VM { return t.vm }

// Resume lets the guest run (cont) once its device state is loaded.
func (t *Target) Resume(ctx context.Context) error {
	if t.vm == nil || !t.loaded {
		return errors.New("destination qemu has no device state loaded: nothing to resume")
	}
	if err := t.vm.Mon.Cont(ctx); err != nil {
		return fmt.Errorf("cont destination qemu: %w", err)
	}
	return nil
}

// AfterResume clears, the guest running, the x-ignore-shared capability
// the device-state load set: left on, a later QEMU migration of this VM
// (virsh migrate) would skip its RAM.
func (t *Target) AfterResume(ctx context.Context) error {
	if t.vm == nil || t.incoming == "" {
		return nil
	}
	if err := t.vm.Mon.SetCapabilities(ctx, map[string]bool{CapIgnoreShared: false}); err != nil {
		return fmt.Errorf("destination qemu pid %d: clear %s after the device-state load: %w", t.vm.Pid(), CapIgnoreShared, err)
	}
	return nil
}

// Kill ends QEMU at once and removes the RAM files.
func (t *Target) Kill() error {
	var err error
	if t.vm != nil {
		err = t.vm.Kill()
	}
	for _, p := range t.mem {
		if rerr := os.Remove(p); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
	}
	return err
}

// RAMFile is the RAM file Create made for block name.
func (t *Target) RAMFile(name string) (string, bool) {
	p, ok := t.mem[name]
	return p, ok
}

// RAMFiles are the RAM files Create made.
func (t *Target) RAMFiles() []string {
	var out []string
	for _, p := range t.mem {
		out = append(out, p)
	}
	return out
}
