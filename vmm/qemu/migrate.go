package qemu

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Status is query-status's reply.
type Status struct {
	Running bool   `json:"running"`
	Status  string `json:"status"` // running, paused, inmigrate, postmigrate, ...
}

// QueryStatus returns the VM's run state.
func (m *Monitor) QueryStatus(ctx context.Context) (Status, error) {
	var s Status
	err := m.Execute(ctx, "query-status", nil, &s)
	return s, err
}

// Stop pauses every vCPU; it returns once they are paused.
func (m *Monitor) Stop(ctx context.Context) error { return m.Execute(ctx, "stop", nil, nil) }

// Cont resumes the vCPUs.
func (m *Monitor) Cont(ctx context.Context) error { return m.Execute(ctx, "cont", nil, nil) }

// Capability names dmig sets (the same in QEMU 7.2 and 10).
const (
	CapIgnoreShared = "x-ignore-shared"
	CapPostcopyRAM  = "postcopy-ram"
	CapEvents       = "events"
)

// SetCapabilities sets migration capabilities. Every capability dmig
// relies on is set explicitly, on or off: a QEMU that was itself a
// destination keeps the capabilities it was migrated with.
func (m *Monitor) SetCapabilities(ctx context.Context, caps map[string]bool) error {
	type cap struct {
		Capability string `json:"capability"`
		State      bool   `json:"state"`
	}
	var list []cap
	for c, on := range caps {
		list = append(list, cap{c, on})
	}
	return m.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": list}, nil)
}

// Parameters are the migration parameters dmig sets; zero fields are left
// as they are.
type Parameters struct {
	MaxBandwidth uint64 `json:"max-bandwidth,omitempty"` // bytes/s
	// MaxPostcopyBandwidth caps the background transfer after the switch
	// to post-copy, where QEMU ignores max-bandwidth (bytes/s; QEMU's
	// default 0 is none).
	MaxPostcopyBandwidth uint64 `json:"max-postcopy-bandwidth,omitempty"`
	DowntimeLimit        uint64 `json:"downtime-limit,omitempty"` // ms
	// MultifdChannels is the number of multifd connections.
	MultifdChannels int `json:"multifd-channels,omitempty"`
	// MultifdCompression is none, zlib, zstd (or qpl, uadk, qatzip where
	// built in).
	MultifdCompression string `json:"multifd-compression,omitempty"`
}

// SetParameters sets migration parameters.
func (m *Monitor) SetParameters(ctx context.Context, p Parameters) error {
	return m.Execute(ctx, "migrate-set-parameters", p, nil)
}

// Migrate starts an outgoing migration to uri (tcp:HOST:PORT,
// unix:PATH, fd:NAME). It returns at once; see WaitMigration.
func (m *Monitor) Migrate(ctx context.Context, uri string) error {
	return m.Execute(ctx, "migrate", map[string]any{"uri": uri}, nil)
}

// MigrateIncoming makes a QEMU started with -incoming defer listen on uri.
func (m *Monitor) MigrateIncoming(ctx context.Context, uri string) error {
	return m.Execute(ctx, "migrate-incoming", map[string]any{"uri": uri}, nil)
}

// StartPostcopy switches a running migration (with postcopy-ram on both
// sides) to post-copy.
func (m *Monitor) StartPostcopy(ctx context.Context) error {
	return m.Execute(ctx, "migrate-start-postcopy", nil, nil)
}

// MigrateCancel cancels an outgoing migration; the source runs on.
func (m *Monitor) MigrateCancel(ctx context.Context) error {
	return m.Execute(ctx, "migrate_cancel", nil, nil)
}

// RAMStats is query-migrate's "ram" member.
type RAMStats struct {
	Transferred      uint64  `json:"transferred"`
	Remaining        uint64  `json:"remaining"`
	Total            uint64  `json:"total"`
	Duplicate        uint64  `json:"duplicate"`
	Normal           uint64  `json:"normal"`
	NormalBytes      uint64  `json:"normal-bytes"`
	DirtySyncCount   uint64  `json:"dirty-sync-count"`
	PostcopyRequests uint64  `json:"postcopy-requests"`
	MBps             float64 `json:"mbps"`
	PagesPerSecond   uint64  `json:"pages-per-second"`
}

// MigrationInfo is query-migrate's reply (the fields dmig reports).
type MigrationInfo struct {
	Status           string    `json:"status"`
	TotalTime        uint64    `json:"total-time"` // ms
	Downtime         uint64    `json:"downtime"`   // ms
	ExpectedDowntime uint64    `json:"expected-downtime"`
	SetupTime        uint64    `json:"setup-time"`
	RAM              *RAMStats `json:"ram"`
	ErrorDesc        string    `json:"error-desc"`
}

// QueryMigrate returns the state of the current or last migration.
func (m *Monitor) QueryMigrate(ctx context.Context) (MigrationInfo, error) {
	var i MigrationInfo
	err := m.Execute(ctx, "query-migrate", nil, &i)
	return i, err
}

// Terminal migration states.
func migrationDone(s string) bool {
	switch s {
	case "completed", "failed", "cancelled":
		return true
	}
	return false
}

// A wait on QEMU's state polls every pollFast for its first pollFastFor,
// then every pollSlow. The waits inside a switchover (device state
// loaded, a migration's completion) end within milliseconds, with the
// guest paused: a 10–20 ms tick there was downtime, up to a tick per wait.
// Waits of a whole migration go on at the slow rate.
const (
	pollFast    = time.Millisecond
	pollFastFor = 50 * time.Millisecond
	pollSlow    = 20 * time.Millisecond
)

// poller paces one wait's polls (see pollFast).
type poller struct {
	start time.Time
	t     *time.Timer
}

func newPoller() *poller { return &poller{start: time.Now()} }

// wait sleeps until the next poll, or returns the context's cause.
func (p *poller) wait(ctx context.Context) error {
	d := pollSlow
	if time.Since(p.start) < pollFastFor {
		d = pollFast
	}
	if p.t == nil {
		p.t = time.NewTimer(d)
	} else {
		p.t.Reset(d)
	}
	select {
	case <-p.t.C:
		return nil
	case <-ctx.Done():
		p.t.Stop()
		return context.Cause(ctx)
	}
}

// WaitMigration polls query-migrate until the migration ends or until
// (when non-nil) until returns true for the current state. A failed or
// cancelled migration returns ErrMigrationFailed with QEMU's reason.
func (m *Monitor) WaitMigration(ctx context.Context, until func(MigrationInfo) bool) (MigrationInfo, error) {
	p := newPoller()
	for {
		i, err := m.QueryMigrate(ctx)
		if err != nil {
			return i, err
		}
		switch {
		case i.Status == "completed":
			return i, nil
		case migrationDone(i.Status):
			return i, fmt.Errorf("%w: %s: %s", ErrMigrationFailed, i.Status, i.ErrorDesc)
		case until != nil && until(i):
			return i, nil
		}
		if err := p.wait(ctx); err != nil {
			return i, fmt.Errorf("wait for migration: %w", err)
		}
	}
}

// WaitStatus polls query-status until the VM's status is one of want.
func (m *Monitor) WaitStatus(ctx context.Context, want ...string) error {
	p := newPoller()
	for {
		s, err := m.QueryStatus(ctx)
		if err != nil {
			return err
		}
		if slices.Contains(want, s.Status) {
			return nil
		}
		if err := p.wait(ctx); err != nil {
			return fmt.Errorf("wait for vm status %s (is %s): %w", strings.Join(want, " or "), s.Status, err)
		}
	}
}
