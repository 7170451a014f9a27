package qemu

import (
	"context"
	"fmt"
)

// Paused reports whether status is one a migration leaves the source VM
// in: stopped for switchover ("paused"), or stopped after its device state
// was sent ("postmigrate", "finish-migrate").
func Paused(status string) bool {
	switch status {
	case "paused", "postmigrate", "finish-migrate":
		return true
	}
	return false
}

// ResumePaused resumes a VM a migration left paused: a QEMU migration still
// running (dmig's device-state transfer, its receiver gone) is cancelled,
// then the vCPUs continue. It returns the status found; a running VM is
// left as it is, and so is one in any state Paused does not accept unless
// force is set.
func (m *Monitor) ResumePaused(ctx context.Context, force bool) (Status, error) {
	st, err := m.QueryStatus(ctx)
	if err != nil {
		return st, err
	}
	if st.Running {
		return st, nil
	}
	if !Paused(st.Status) && !force {
		return st, fmt.Errorf("vm status %q is not one a migration leaves: %w", st.Status, ErrNotPaused)
	}
	if info, err := m.QueryMigrate(ctx); err == nil && (info.Status == "active" || info.Status == "setup" || info.Status == "device") {
		if err := m.MigrateCancel(ctx); err != nil {
			return st, fmt.Errorf("cancel the device-state migration: %w", err)
		}
		// Cancelling is asynchronous; it ends cancelled (an error here).
		if _, err := m.WaitMigration(ctx, nil); err != nil && ctx.Err() != nil {
			return st, fmt.Errorf("cancel the device-state migration: %w", err)
		}
	}
	if err := m.Cont(ctx); err != nil {
		return st, err
	}
	return st, nil
}

// ResumeAt is ResumePaused over a connection of its own to the QMP socket
// at path (the guardian's, once the migration's connection is gone).
func ResumeAt(ctx context.Context, path string) (Status, error) {
	m, err := Dial(ctx, path)
	if err != nil {
		return Status{}, err
	}
	defer m.Close()
	return m.ResumePaused(ctx, false)
}
