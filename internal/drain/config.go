package drain

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/dmig/dmig/internal/bandwidth"
)

// VM is one guest to move.
type VM struct {
	// Name identifies the guest in locks, state and the summary: letters,
	// digits, '-', '_' and '.'.
	Name string `yaml:"name" json:"name"`
	// Pid of the guest process, or PidFile holding it (read when the guest's
	// turn comes, so cron configs survive guest restarts).
	Pid     int    `yaml:"pid,omitempty" json:"pid,omitempty"`
	PidFile string `yaml:"pid_file,omitempty" json:"pid_file,omitempty"`
	// RAM files of the guest.
	RAM []string `yaml:"ram" json:"ram"`
	// DestCmd starts the guest on the destination (argv).
	DestCmd []string `yaml:"dest_cmd" json:"dest_cmd"`
	// To is the destination's 'dmig serve' address.
	To string `yaml:"to" json:"to"`
	// Mode: precopy, postcopy or hybrid (default hybrid).
	Mode string `yaml:"mode,omitempty" json:"mode,omitempty"`
	// Downtime budget (default the engine's).
	Downtime time.Duration `yaml:"downtime,omitempty" json:"downtime,omitempty"`
	// MaxBandwidth caps this guest's migration, bytes/s ("125M", "1Gi";
	// bandwidth.Parse), within the drain's total; 0: only the total.
	MaxBandwidth bandwidth.Rate `yaml:"max_bandwidth,omitempty" json:"max_bandwidth,omitempty"`
}

// Config is a drain config file (YAML, or JSON which is YAML too).
type Config struct {
	// State is the state file (see Options.State); a flag may override it.
	State string `yaml:"state,omitempty" json:"state,omitempty"`
	// LockDir holds the per-guest locks; a flag may override it.
	LockDir string `yaml:"lock_dir,omitempty" json:"lock_dir,omitempty"`
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
		bad := func(format string, a ...any) error {
			return fmt.Errorf("%w: vm %d (%q): %s", ErrConfig, i, vm.Name, fmt.Sprintf(format, a...))
		}
		switch {
		case !validName(vm.Name):
			return bad("name must be non-empty letters, digits, '-', '_' or '.'")
		case seen[vm.Name]:
			return bad("name listed twice")
		case (vm.Pid > 0) == (vm.PidFile != ""):
			return bad("give exactly one of pid and pid_file")
		case len(vm.RAM) == 0:
			return bad("no ram files")
		case len(vm.DestCmd) == 0:
			return bad("no dest_cmd")
		case vm.To == "":
			return bad("no to address")
		}
		switch vm.Mode {
		case "", "precopy", "postcopy", "hybrid":
		default:
			return bad("mode %q: want precopy, postcopy or hybrid", vm.Mode)
		}
		seen[vm.Name] = true
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
