package compare

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// fakeQMP serves QMP connections on a unix socket as a QEMU of version
// major.minor.0 that runs kvm or not.
func fakeQMP(t *testing.T, major, minor int, kvm bool) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, `{"QMP": {"version": {"qemu": {"micro": 0, "minor": %d, "major": %d}, "package": ""}, "capabilities": []}}`+"\n", minor, major)
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					var cmd map[string]any
					if json.Unmarshal(sc.Bytes(), &cmd) != nil {
						return
					}
					ret := `{}`
					if cmd["execute"] == "query-kvm" {
						ret = fmt.Sprintf(`{"enabled": %v, "present": true}`, kvm)
					}
					fmt.Fprintf(c, `{"return": %s, "id": %q}`+"\n", ret, cmd["id"])
				}
			}()
		}
	}()
	return path
}

func TestCheckQEMU(t *testing.T) {
	for _, c := range []struct {
		name         string
		major, minor int
		kvm          bool
		modes        []string
		allow        bool
		want         error
	}{
		{"7.2 tcg, qemu's modes", 7, 2, false, []string{"hybrid", "qemu-precopy"}, false, ErrBuggyQEMU},
		{"7.2 tcg, forced", 7, 2, false, []string{"qemu-precopy"}, true, nil},
		{"7.2 tcg, dmig's modes only", 7, 2, false, []string{"hybrid", "precopy", "postcopy"}, false, nil},
		{"7.2 kvm", 7, 2, true, []string{"qemu-multifd"}, false, nil},
		{"8.2 tcg", 8, 2, false, []string{"qemu-postcopy"}, false, ErrBuggyQEMU},
		{"9.0 tcg", 9, 0, false, []string{"qemu-postcopy"}, false, nil},
		{"10.0 tcg", 10, 0, false, Modes, false, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			qmp := fakeQMP(t, c.major, c.minor, c.kvm)
			r := &runner{cfg: Config{Modes: c.modes, AllowBuggyQEMU: c.allow}, log: hclog.NewNullLogger(), cur: qmp, res: &Result{}}
			err := r.checkQEMU(context.Background())
			if !errors.Is(err, c.want) || (c.want == nil) != (err == nil) {
				t.Fatalf("checkQEMU: %v, want %v", err, c.want)
			}
			if err != nil && !strings.Contains(err.Error(), "03bfc2188f") {
				t.Errorf("refusal %q does not name the fix", err)
			}
			if want := fmt.Sprintf("%d.%d.0", c.major, c.minor); r.res.QEMU != want || r.res.TCG == c.kvm {
				t.Errorf("result QEMU %q TCG %v, want %s %v", r.res.QEMU, r.res.TCG, want, !c.kvm)
			}
		})
	}
}

func TestCheckQEMUBinary(t *testing.T) {
	// The system's QEMU (7.2 on Debian 12) for a VM that says it is 10.0.
	qmp := fakeQMP(t, 10, 0, false)
	r := &runner{cfg: Config{Modes: Modes, QEMUBinary: "qemu-system-x86_64"}, log: hclog.NewNullLogger(), cur: qmp, res: &Result{}}
	if err := r.checkQEMU(context.Background()); !errors.Is(err, ErrQEMUVersion) {
		t.Fatalf("checkQEMU with another QEMU's binary: %v, want ErrQEMUVersion", err)
	}
}
