package drain

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/dmig/dmig/internal/bandwidth"
	"github.com/dmig/dmig/wire"
)

// VM is one guest to move: a process guest (Pid or PidFile, RAM, DestCmd),
// a QEMU VM (QMP), or a template standing for several QEMU VMs found when
// the drain runs (QMPDir, Discover), each of which inherits the template's
// other fields.
type VM struct {
	// Name identifies the guest in locks, state and the summary: letters,
	// digits, '-', '_' and '.'. A template has none: each VM it finds is
	// named after itself (see ExpandedName).
	Name string `yaml:"name,omitempty" json:"name,omitempty"`
	// Pid of the guest process, or PidFile holding it (read when the guest's
	// turn comes, so cron configs survive guest restarts).
	Pid     int    `yaml:"pid,omitempty" json:"pid,omitempty"`
	PidFile string `yaml:"pid_file,omitempty" json:"pid_file,omitempty"`
	// RAM files of the guest.
	RAM []string `yaml:"ram,omitempty" json:"ram,omitempty"`
	// DestCmd starts the guest on the destination (argv).
	DestCmd []string `yaml:"dest_cmd,omitempty" json:"dest_cmd,omitempty"`
	// QMP is the QMP unix socket of a QEMU VM: its RAM, command line and
	// devices are found through it, as by 'dmig migrate --qmp'.
	QMP string `yaml:"qmp,omitempty" json:"qmp,omitempty"`
	// QMPDir makes the entry a template: every unix socket in the
	// directory is a QEMU VM's QMP socket.
	QMPDir string `yaml:"qmp_dir,omitempty" json:"qmp_dir,omitempty"`
	// Discover "qemu" makes the entry a template: every QEMU process on
	// this host with a QMP unix socket on its command line. Those whose RAM
	// is not a shared memory backend are reported as skipped.
	Discover string `yaml:"discover,omitempty" json:"discover,omitempty"`
	// To is the destination's 'dmig serve' address.
	To string `yaml:"to" json:"to"`
	// Mode: precopy, postcopy or hybrid (default hybrid).
	Mode string `yaml:"mode,omitempty" json:"mode,omitempty"`
	// Downtime budget (default the engine's).
	Downtime time.Duration `yaml:"downtime,omitempty" json:"downtime,omitempty"`
	// Compress page data, as --compress does for every guest.
	Compress bool `yaml:"compress,omitempty" json:"compress,omitempty"`
	// Codec compresses it with: zstd or s2 (wire.CodecNames; default the
	// drain's --codec), as --codec does.
	Codec string `yaml:"codec,omitempty" json:"codec,omitempty"`
	// MaxBandwidth caps this guest's migration, bytes/s ("125M", "1Gi";
	// bandwidth.Parse), within its destination's and the drain's totals; 0: only the total.
	MaxBandwidth bandwidth.Rate `yaml:"max_bandwidth,omitempty" json:"max_bandwidth,omitempty"`
	// Layout is the guest agent's layout endpoint (HOST:PORT or
	// unix:SOCKET). A QEMU VM's default is its org.dmig.agent
	// virtio-serial socket, found on its command line.
	Layout string `yaml:"layout,omitempty" json:"layout,omitempty"`
	// LayoutTimeout bounds one layout fetch (default the engine's 5 s): the
	// agent walks the whole buffer pool, which a TCG guest does slowly.
	LayoutTimeout time.Duration `yaml:"layout_timeout,omitempty" json:"layout_timeout,omitempty"`
	// SharedStorage lists the directories (or block devices) the
	// destination opens as the same files: a QEMU VM with a disk outside
	// them is skipped. Empty: a disk must be on a network or cluster file
	// system, or a block device (see qemu.CheckSharedDisks).
	SharedStorage []string `yaml:"shared_storage,omitempty" json:"shared_storage,omitempty"`

	// Skip, set by an expansion, is why a VM it found cannot be migrated:
	// it is reported as skipped, never attempted.
	Skip string `yaml:"-" json:"-"`
}

// Template reports whether the entry stands for VMs found at run time.
func (vm VM) Template() bool { return vm.QMPDir != "" || vm.Discover != "" }

// IsQEMU reports whether the entry is a QEMU VM (or a template of them).
func (vm VM) IsQEMU() bool { return vm.QMP != "" || vm.Template() }

// Destination are the limits on one destination, across every guest a
// drain sends there.
type Destination struct {
	// MaxConcurrent: at most this many migrations to the destination at
	// once (default: no limit beyond --parallel).
	MaxConcurrent int `yaml:"max_concurrent,omitempty" json:"max_concurrent,omitempty"`
	// MaxBandwidth caps the guests sent to the destination together,
	// bytes/s, within the drain's total (0: only the total): a limit of
	// the destination's link.
	MaxBandwidth bandwidth.Rate `yaml:"max_bandwidth,omitempty" json:"max_bandwidth,omitempty"`
}

// Config is a drain config file (YAML, or JSON which is YAML too).
type Config struct {
	// State is the state file (see Options.State); a flag may override it.
	State string `yaml:"state,omitempty" json:"state,omitempty"`
	// LockDir holds the per-guest locks; a flag may override it.
	LockDir string `yaml:"lock_dir,omitempty" json:"lock_dir,omitempty"`
	// Destinations are limits per destination address (a VM's To).
	Destinations map[string]Destination `yaml:"destinations,omitempty" json:"destinations,omitempty"`
	// MaxBandwidth caps the drain's guests together, bytes/s: the
	// migrations running at once share it (0: no total); a flag may
	// override it.
	MaxBandwidth bandwidth.Rate `yaml:"max_bandwidth,omitempty" json:"max_bandwidth,omitempty"`
	VMs          []VM           `yaml:"vms" json:"vms"`
}

// LoadConfig reads and checks a drain config. Unknown keys are errors: a
// misspelt key in a cron job's config must not silently change what moves.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read drain config: %w", err)
	}
	c, err := ParseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("drain config %s: %w", path, err)
	}
	return c, nil
}

// ParseConfig parses and checks a drain config's text.
func ParseConfig(b []byte) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("parse: %w: %v", ErrConfig, err)
	}
	if err := c.check(); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *Config) check() error {
	if len(c.VMs) == 0 {
		return fmt.Errorf("%w: no vms", ErrConfig)
	}
	seen := map[string]bool{}
	for i, vm := range c.VMs {
		if err := vm.check(); err != nil {
			return fmt.Errorf("%w: vm %d (%q): %w", ErrConfig, i, vm.Name, err)
		}
		if !vm.Template() {
			if seen[vm.Name] {
				return fmt.Errorf("%w: vm %d (%q): name listed twice", ErrConfig, i, vm.Name)
			}
			seen[vm.Name] = true
		}
	}
	for addr, d := range c.Destinations {
		if addr == "" || d.MaxConcurrent < 0 {
			return fmt.Errorf("%w: destination %q: want an address and max_concurrent >= 0", ErrConfig, addr)
		}
	}
	return nil
}

// check verifies one entry by its kind.
func (vm VM) check() error {
	kinds := 0
	for _, set := range []bool{vm.Pid > 0 || vm.PidFile != "", vm.QMP != "", vm.QMPDir != "", vm.Discover != ""} {
		if set {
			kinds++
		}
	}
	switch {
	case kinds != 1:
		return errors.New("give exactly one of pid, pid_file, qmp, qmp_dir and discover")
	case vm.Template() && vm.Name != "":
		return errors.New("an entry with qmp_dir or discover has no name: each VM found is named after itself")
	case !vm.Template() && !validName(vm.Name):
		return errors.New("name must be non-empty letters, digits, '-', '_' or '.'")
	case vm.Pid > 0 && vm.PidFile != "":
		return errors.New("give exactly one of pid and pid_file")
	case vm.Discover != "" && vm.Discover != "qemu":
		return fmt.Errorf("discover %q: the only kind is qemu", vm.Discover)
	case vm.To == "":
		return errors.New("no to address")
	case vm.Pid < 0:
		return errors.New("pid must be positive")
	}
	if vm.IsQEMU() {
		if len(vm.RAM) > 0 || len(vm.DestCmd) > 0 {
			return errors.New("a QEMU VM has no ram or dest_cmd: they are found through its QMP socket")
		}
	} else {
		switch {
		case len(vm.RAM) == 0:
			return errors.New("no ram files")
		case len(vm.DestCmd) == 0:
			return errors.New("no dest_cmd")
		case len(vm.SharedStorage) > 0:
			return errors.New("shared_storage is for QEMU VMs")
		}
	}
	switch vm.Mode {
	case "", "precopy", "postcopy", "hybrid":
	default:
		return fmt.Errorf("mode %q: want precopy, postcopy or hybrid", vm.Mode)
	}
	if vm.Codec != "" {
		if _, err := wire.ParseCodec(vm.Codec); err != nil {
			return err
		}
	}
	if vm.Downtime < 0 || vm.LayoutTimeout < 0 {
		return errors.New("downtime and layout_timeout must not be negative")
	}
	return nil
}

func validName(s string) bool {
	if s == "" || s == "." || s == ".." {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}

// PID is the guest's pid: Pid, or the number in PidFile.
func (vm VM) PID() (int, error) {
	if vm.PidFile == "" {
		return vm.Pid, nil
	}
	b, err := os.ReadFile(vm.PidFile)
	if err != nil {
		return 0, fmt.Errorf("read pid file of %s: %w", vm.Name, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("read pid file of %s: %q is not a pid", vm.Name, bytes.TrimSpace(b))
	}
	return pid, nil
}

// ExpandedName is the drain name of a VM a template found: its own name
// (QEMU's -name, else its QMP socket's file name without extension), with
// any character a name may not have replaced by '_'.
func ExpandedName(name string) string {
	b := []byte(name)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			b[i] = '_'
		}
	}
	if s := string(b); validName(s) {
		return s
	}
	return "vm_" + string(b)
}
