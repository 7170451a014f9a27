package compare

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
)

// shaper limits the migration traffic of a comparison on this host's
// loopback to a link rate, so that the modes are compared over a link like
// the one between two hosts. Only the migration ports are shaped (an HTB
// class of that rate; this kernel has no prio qdisc); the workload, QMP
// and everything else on lo go to a class no link reaches. It replaces lo's
// root qdisc for the run and deletes it at the end.
type shaper struct {
	dev  string
	rate string
	prio int // next filter priority
}

// tc runs one tc command.
func tc(args ...string) error {
	out, err := exec.Command("tc", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: tc %s: %v: %s", ErrShape, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// newShaper installs the qdisc and classes on dev for rate (tc's syntax:
// 1gbit, 100mbit).
func newShaper(dev, rate string) (*shaper, error) {
	s := &shaper{dev: dev, rate: rate, prio: 1}
	if err := tc("qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "10"); err != nil {
		return nil, err
	}
	for _, c := range [][]string{{"1:10", "100gbit"}, {"1:20", rate}} {
		if err := tc("class", "add", "dev", dev, "parent", "1:", "classid", c[0], "htb", "rate", c[1], "ceil", c[1], "quantum", "65536"); err != nil {
			s.close()
			return nil, err
		}
	}
	return s, nil
}

// shape sends TCP traffic to and from port through the rate limit.
func (s *shaper) shape(port int) error {
	for _, dir := range []string{"dport", "sport"} {
		if err := tc("filter", "add", "dev", s.dev, "parent", "1:", "protocol", "ip", "prio", strconv.Itoa(s.prio),
			"u32", "match", "ip", dir, strconv.Itoa(port), "0xffff", "flowid", "1:20"); err != nil {
			return err
		}
	}
	s.prio++
	return nil
}

// close removes the qdisc (and with it the classes and filters).
func (s *shaper) close() error {
	return tc("qdisc", "del", "dev", s.dev, "root")
}
