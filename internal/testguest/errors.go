package testguest

import (
	"errors"
	"fmt"
	"strings"
)

var (
	// ErrParams means the workload or geometry asked for is impossible.
	ErrParams = errors.New("invalid test guest parameters")
	// ErrNotGuest means a file is not a test guest's RAM (bad magic or
	// geometry): for a migrated guest, page 0 was lost or corrupted.
	ErrNotGuest = errors.New("not a test guest RAM file")
	// ErrMismatch means some page is not what the guest's state says it
	// must be. A *MismatchError carrying the report wraps it.
	ErrMismatch = errors.New("test guest state mismatch")
	// ErrIncoming means the DMIG_* environment of an incoming guest is
	// unusable.
	ErrIncoming = errors.New("bad incoming guest environment")
)

// ExitMismatch is the exit status of `dmig testguest` (run or verify) when
// the guest's state is inconsistent: a page lost, stale, from the future or
// corrupt.
const ExitMismatch = 3

// MismatchError is returned when verification or a workload read finds
// pages that disagree with the guest's state.
type MismatchError struct {
	Report Report
}

func (e *MismatchError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%v: %d mismatches", ErrMismatch, len(e.Report.Mismatches)+e.Report.More)
	for i, m := range e.Report.Mismatches {
		if i == 20 {
			fmt.Fprintf(&b, "\n  ... %d more", len(e.Report.Mismatches)-i+e.Report.More)
			break
		}
		b.WriteString("\n  ")
		b.WriteString(m.String())
	}
	return b.String()
}

func (e *MismatchError) Unwrap() error { return ErrMismatch }

// ExitCode makes cmd/dmig exit with ExitMismatch.
func (e *MismatchError) ExitCode() int { return ExitMismatch }
