package qemu

import (
	"errors"
	"fmt"
	"time"

	"github.com/dmig/dmig/internal/report"
)

// RunPoint is the destination's event at which its guest runs after a
// migration, or would run: a destination started with -S stays paused
// until cont, and the point is where QEMU would have started it.
type RunPoint struct {
	Name   string
	Status string // data.status of a MIGRATION event; "" for any
}

func (p RunPoint) String() string {
	if p.Status == "" {
		return p.Name
	}
	return p.Name + " " + p.Status
}

var (
	// RunResume: cont, or QEMU's own start at the end of an incoming
	// migration without -S, raises RESUME as it starts the vCPUs.
	RunResume = RunPoint{Name: "RESUME"}
	// RunPrecopyPaused is where a pre-copy destination started with -S
	// would start: process_incoming_migration_bh (migration/migration.c)
	// loads nothing more, then, instead of vm_start, sets the run state
	// paused and raises MIGRATION "completed" right after (it must follow
	// every state change, QEMU says, since an observer may use the VM as
	// soon as it sees it). With autostart, RESUME comes just before it.
	RunPrecopyPaused = RunPoint{Name: "MIGRATION", Status: "completed"}
	// RunPostcopyPaused is the closest observable point where a post-copy
	// destination started with -S would start. Its guest would run in
	// loadvm_postcopy_handle_run_bh (migration/savevm.c), after the
	// package holding LISTEN, the device state and RUN; under -S that
	// function only sets the run state paused, raising no event. The
	// destination's last event before it is MIGRATION "postcopy-active",
	// raised as LISTEN starts the listen thread: the whole package has
	// arrived (QEMU reads it before processing it) and the device state is
	// still to be loaded. So this point misses the destination's load of
	// the device state (a few ms): the downtime measured to it is short of
	// the guest's by that much, never long.
	RunPostcopyPaused = RunPoint{Name: "MIGRATION", Status: "postcopy-active"}
)

// ErrNoEvent: an event a measurement needs is not in a monitor's record.
var ErrNoEvent = errors.New("qmp event missing")

// GuestDowntime is how long a migration started at since left the guest
// running nowhere, by the two QEMUs' event timestamps (one host, one
// clock): from the source's STOP, as its vCPUs have stopped, to the
// destination's run point. The STOP is the source's last before the run
// point: a migration that started over resumed the source and stopped it
// again.
func GuestDowntime(src, dst EventLog, since time.Time, run RunPoint) (time.Duration, error) {
	r, ok := dst.First(run.Name, run.Status, since)
	if !ok {
		return 0, fmt.Errorf("%w: the destination raised no %s since %s", ErrNoEvent, run, since.Format(time.StampMicro))
	}
	s, ok := src.Last("STOP", since, r.Time)
	if !ok {
		return 0, fmt.Errorf("%w: the source raised no STOP between %s and the destination's %s at %s",
			ErrNoEvent, since.Format(time.StampMicro), run, r.Time.Format(time.StampMicro))
	}
	return r.Time.Sub(s.Time), nil
}

// SetGuestDowntime makes r.DowntimeMS the guest-visible downtime
// (GuestDowntime) less pauseMS, time the measurement itself kept the
// guest paused inside that window (the RAM oracle of dmig compare). The
// figure r had, the tool's own, moves to r.ReportedDowntimeMS. If an
// event is missing, r.DowntimeMS stays the tool's figure and
// r.DowntimeWarning says so; the error is returned too.
func SetGuestDowntime(r *report.Report, src, dst EventLog, since time.Time, run RunPoint, pauseMS float64) error {
	r.ReportedDowntimeMS = r.DowntimeMS
	d, err := GuestDowntime(src, dst, since, run)
	if err != nil {
		r.DowntimeWarning = "guest-visible downtime not measured, downtime_ms is the tool's own figure: " + err.Error()
		return err
	}
	r.DowntimeMS = max(0, report.MS(d)-pauseMS)
	r.DowntimeWarning = ""
	return nil
}
