package qemu

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dmig/dmig/vmm/proc"
)

// Forward is one QEMU user-net hostfwd: host TCP port → guest TCP port.
type Forward struct {
	Host, Guest int
}

// Tap is a guest network on a host bridge. Unlike user networking, whose
// connections live in the QEMU process and die with it, the guest's
// kernel holds its connections: they survive a migration, and the guest
// keeps its address (QEMU announces the guest's MAC at the destination).
type Tap struct {
	// Script is run by QEMU with the new tap device's name (QEMU's
	// script=): it attaches the tap to the bridge and brings it up. No tap
	// name is given, so a destination on the same host gets its own.
	Script string
	// Addr is the guest's address with its prefix (10.77.0.2/24), given on
	// the kernel command line (ip=, read by the image's
	// systemd-network-generator).
	Addr string
	// MAC is the guest NIC's address (default 52:54:00:d1:0e:01).
	MAC string
}

// Config describes a VM dmig starts (a test VM, or a destination). The
// command line it makes is the one documented in docs/testing.md ("Guest
// image"); an operator's own command line is used as is by the destination
// (see DestArgs).
type Config struct {
	// Dir holds the QMP socket, the serial log and QEMU's stderr.
	Dir    string
	Image  string // raw disk image
	Kernel string
	Initrd string
	// Append is the kernel command line (default: root=/dev/vda rw
	// console=ttyS0 quiet).
	Append string
	// MemID is the RAM backend's id, which is also the RAM block's name in
	// migration: source and destination must agree (default ram0).
	MemID   string
	MemSize uint64 // bytes (default 2 GiB)
	// MemPath is the RAM file (default /dev/shm/dmig-<base of Dir>).
	MemPath string
	// Private maps RAM share=off: QEMU's own migration works, dmig's
	// does not (Discover refuses it).
	Private bool
	SMP     int    // default 2
	Accel   string // default tcg,thread=multi
	Forward []Forward
	// Tap, if set, puts the guest on a host bridge through a tap device
	// instead of user networking (Forward is then ignored).
	Tap *Tap
	// AgentSocket, if set, is a unix socket QEMU listens on for the guest
	// agent's virtio-serial port org.dmig.agent.
	AgentSocket string
	// Incoming, if set, is passed as -incoming (e.g. "defer").
	Incoming string
	// Binary is the QEMU executable (default qemu-system-x86_64).
	Binary string
	// KillWithParent ends QEMU when dmig's process ends (tests; a
	// destination must outlive dmig).
	KillWithParent bool
}

// Paths of the files a VM started from Config uses.
func (c *Config) QMPPath() string    { return filepath.Join(c.Dir, "qmp.sock") }
func (c *Config) SerialPath() string { return filepath.Join(c.Dir, "serial.log") }
func (c *Config) StderrPath() string { return filepath.Join(c.Dir, "qemu.stderr") }

func (c *Config) defaults() {
	if c.Append == "" {
		c.Append = "root=/dev/vda rw console=ttyS0 quiet"
	}
	if c.MemID == "" {
		c.MemID = "ram0"
	}
	if c.MemSize == 0 {
		c.MemSize = 2 << 30
	}
	if c.MemPath == "" {
		c.MemPath = "/dev/shm/dmig-" + filepath.Base(c.Dir)
	}
	if c.SMP == 0 {
		c.SMP = 2
	}
	if c.Accel == "" {
		c.Accel = "tcg,thread=multi"
	}
	if c.Binary == "" {
		c.Binary = "qemu-system-x86_64"
	}
}

// Args is the QEMU command line (without the binary) for c.
func (c Config) Args() []string {
	c.defaults()
	share := "on"
	if c.Private {
		share = "off"
	}
	netdev, nic, appendArgs := "user,id=n0", "virtio-net-pci,netdev=n0", c.Append
	for _, f := range c.Forward {
		netdev += fmt.Sprintf(",hostfwd=tcp:127.0.0.1:%d-:%d", f.Host, f.Guest)
	}
	if t := c.Tap; t != nil {
		mac := t.MAC
		if mac == "" {
			mac = "52:54:00:d1:0e:01"
		}
		netdev = "tap,id=n0,script=" + escapeOpt(t.Script) + ",downscript=no"
		nic += ",mac=" + mac
		if ip, n, err := net.ParseCIDR(t.Addr); err == nil {
			appendArgs += fmt.Sprintf(" net.ifnames=0 ip=%s:::%s::eth0:off", ip, net.IP(n.Mask))
		}
	}
	a := []string{
		"-name", filepath.Base(c.Dir),
		"-accel", c.Accel, "-cpu", "max", "-smp", strconv.Itoa(c.SMP),
		"-m", fmt.Sprintf("%dM", c.MemSize>>20),
		"-object", fmt.Sprintf("memory-backend-file,id=%s,size=%d,mem-path=%s,share=%s", c.MemID, c.MemSize, c.MemPath, share),
		"-machine", "pc,memory-backend=" + c.MemID,
		"-kernel", c.Kernel, "-initrd", c.Initrd, "-append", appendArgs,
		"-drive", "file=" + escapeOpt(c.Image) + ",format=raw,if=virtio,cache=none",
		"-netdev", netdev, "-device", nic,
		"-qmp", "unix:" + escapeOpt(c.QMPPath()) + ",server=on,wait=off",
		"-serial", "file:" + escapeOpt(c.SerialPath()),
		"-display", "none", "-vga", "none", "-nodefaults",
	}
	if c.AgentSocket != "" {
		a = append(a,
			"-device", "virtio-serial-pci,id=vser0",
			"-chardev", "socket,id=agent0,path="+escapeOpt(c.AgentSocket)+",server=on,wait=off",
			"-device", "virtserialport,bus=vser0.0,chardev=agent0,name=org.dmig.agent")
	}
	if c.Incoming != "" {
		a = append(a, "-incoming", c.Incoming)
	}
	return a
}

// escapeOpt doubles commas, QEMU's escape inside option values.
func escapeOpt(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// VM is a QEMU process dmig started. Its monitor is connected.
type VM struct {
	Mon    *Monitor
	Cmd    *exec.Cmd
	QMP    string // QMP socket path
	Stderr string // file QEMU's stderr goes to
	exited chan struct{}
	err    error // Wait's result, set before exited closes
}

// Start runs binary with args in the background (never -daemonize: that
// hides QEMU's errors), its stderr to stderrPath, and connects to the QMP
// socket qmpPath once QEMU listens on it. The VM must be Killed or Waited.
// With killWithParent, the kernel ends QEMU when this process ends
// (PR_SET_PDEATHSIG): for tests, whose cleanups a timeout skips.
func Start(ctx context.Context, binary string, args []string, qmpPath, stderrPath string, killWithParent bool) (*VM, error) {
	ef, err := os.OpenFile(stderrPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("create qemu stderr file: %w", err)
	}
	defer ef.Close()
	_ = os.Remove(qmpPath)
	cmd := exec.Command(binary, args...)
	cmd.Stderr, cmd.Stdout = ef, ef
	// Its own process group: a ^C to dmig must not kill the guest.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if killWithParent {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", binary, err)
	}
	v := &VM{Cmd: cmd, QMP: qmpPath, Stderr: stderrPath, exited: make(chan struct{})}
	// Reap QEMU only once it has exited: a wait pending meanwhile would take
	// the ptrace stops uffd.Attach needs, and dmig attaches to QEMUs it
	// started (destinations; sources in tests).
	gone, werr := proc.Exited(cmd.Process.Pid)
	go func() {
		if werr == nil {
			<-gone
		}
		v.err = cmd.Wait()
		close(v.exited)
	}()
	for {
		if _, err := os.Stat(qmpPath); err == nil {
			m, err := Dial(ctx, qmpPath)
			if err == nil {
				v.Mon = m
				return v, nil
			}
		}
		select {
		case <-v.exited:
			return nil, v.exitError()
		case <-ctx.Done():
			_ = v.Kill()
			return nil, fmt.Errorf("wait for qmp socket %s: %w", qmpPath, context.Cause(ctx))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// StartConfig starts the VM c describes.
func StartConfig(ctx context.Context, c Config) (*VM, error) {
	c.defaults()
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create vm dir: %w", err)
	}
	return Start(ctx, c.Binary, c.Args(), c.QMPPath(), c.StderrPath(), c.KillWithParent)
}

// Pid is QEMU's process id.
func (v *VM) Pid() int { return v.Cmd.Process.Pid }

// Exited is closed once QEMU has ended.
func (v *VM) Exited() <-chan struct{} { return v.exited }

func (v *VM) exitError() error {
	msg, _ := os.ReadFile(v.Stderr)
	return fmt.Errorf("%w (%v): %s", ErrExited, v.err, strings.TrimSpace(string(msg)))
}

// Wait waits for QEMU to end and returns why, with its stderr.
func (v *VM) Wait(ctx context.Context) error {
	select {
	case <-v.exited:
		return v.exitError()
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// Quit asks QEMU to exit and waits for it.
func (v *VM) Quit(ctx context.Context) error {
	err := v.Mon.Execute(ctx, "quit", nil, nil)
	select {
	case <-v.exited:
		v.Mon.Close()
		return nil
	case <-ctx.Done():
		return errors.Join(err, context.Cause(ctx))
	}
}

// Kill ends QEMU at once and waits for it.
func (v *VM) Kill() error {
	if v.Mon != nil {
		v.Mon.Close()
	}
	select {
	case <-v.exited:
		return nil
	default:
	}
	if err := v.Cmd.Process.Kill(); err != nil {
		return fmt.Errorf("kill qemu pid %d: %w", v.Pid(), err)
	}
	<-v.exited
	return nil
}
