package main

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/precopy"
)

// TestMigrateStatus: a failure after Go exits 4 and names the one command
// that resumes the source; a busy guest exits 5; any other failure 3.
func TestMigrateStatus(t *testing.T) {
	for _, c := range []struct {
		ref     guestRef
		outcome report.Outcome
		err     error
		code    int
		says    string
	}{
		{guestRef{pid: 1234}, report.FailedAfterResume, errors.New("destination lost after go"), exitAfterResume, "resume the source with: dmig resume --pid 1234"},
		{guestRef{qmp: "/run/vm1.sock"}, report.FailedAfterResume, errors.New("destination lost"), exitAfterResume, "resume the source with: dmig resume --qmp /run/vm1.sock"},
		{guestRef{pid: 1234}, report.Aborted, fmt.Errorf("lock RAM block: %w", precopy.ErrBusy), exitBusy, "already being migrated"},
		{guestRef{pid: 1234}, report.Aborted, errors.New("connect to destination"), exitAborted, "connect to destination"},
	} {
		err := migrateStatus(&report.Report{Outcome: c.outcome}, c.err, c.ref)
		if code := exitCode(err); code != c.code || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s, %v: exit %d %q; want %d saying %q", c.outcome, c.err, code, err, c.code, c.says)
		}
	}
	if err := migrateStatus(&report.Report{Outcome: report.Completed}, nil, guestRef{pid: 1}); err != nil {
		t.Errorf("a completed migration: %v", err)
	}
}
