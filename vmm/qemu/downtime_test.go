package qemu

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/dmig/dmig/internal/report"
)

// at is a time t0 + ms.
func at(ms float64) time.Time {
	return time.Unix(1_700_000_000, 0).Add(time.Duration(ms * float64(time.Millisecond)))
}

func TestGuestDowntime(t *testing.T) {
	since := at(0)
	completed := func(ms float64) Event { return Event{Name: "MIGRATION", Status: "completed", Time: at(ms)} }
	stop := func(ms float64) Event { return Event{Name: "STOP", Time: at(ms)} }
	for _, c := range []struct {
		name     string
		src, dst EventLog
		run      RunPoint
		want     float64 // ms; < 0: ErrNoEvent
	}{
		{"pre-copy under -S", EventLog{{Name: "MIGRATION", Status: "active", Time: at(1)}, stop(5000), {Name: "MIGRATION", Status: "completed", Time: at(5030)}},
			EventLog{{Name: "MIGRATION", Status: "active", Time: at(2)}, completed(5042.5)}, RunPrecopyPaused, 42.5},
		{"post-copy under -S: the switch, not the completion",
			EventLog{stop(3000)},
			EventLog{{Name: "MIGRATION", Status: "postcopy-active", Time: at(3012)}, completed(9000)}, RunPostcopyPaused, 12},
		// A STOP and a run point of an earlier migration on the same
		// connections are not this one's.
		{"events before the start", EventLog{stop(-500), stop(100)}, EventLog{{Name: "RESUME", Time: at(-450)}, {Name: "RESUME", Time: at(150)}}, RunResume, 50},
		{"only events before the start", EventLog{stop(-500)}, EventLog{{Name: "RESUME", Time: at(-450)}}, RunResume, -1},
		// A migration that started over: the source ran again and
		// stopped again; a STOP after the run point is not the pause.
		{"last STOP before the run point", EventLog{stop(100), {Name: "RESUME", Time: at(300)}, stop(900), stop(2000)},
			EventLog{{Name: "RESUME", Time: at(960)}}, RunResume, 60},
		{"no run point", EventLog{stop(100)}, EventLog{{Name: "MIGRATION", Status: "active", Time: at(50)}}, RunPrecopyPaused, -1},
		{"run point of another status only", EventLog{stop(100)}, EventLog{completed(200)}, RunPostcopyPaused, -1},
		{"STOP only after the run point", EventLog{stop(300)}, EventLog{{Name: "RESUME", Time: at(200)}}, RunResume, -1},
		{"no STOP", nil, EventLog{{Name: "RESUME", Time: at(200)}}, RunResume, -1},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, err := GuestDowntime(c.src, c.dst, since, c.run)
			switch {
			case c.want < 0 && err == nil:
				t.Fatalf("downtime %v, want ErrNoEvent", d)
			case c.want < 0 && !errors.Is(err, ErrNoEvent):
				t.Fatalf("error %v, want ErrNoEvent", err)
			case c.want >= 0 && err != nil:
				t.Fatal(err)
			case c.want >= 0 && d != time.Duration(c.want*float64(time.Millisecond)):
				t.Fatalf("downtime %v, want %v ms", d, c.want)
			}
		})
	}
}

// TestSetGuestDowntime: the guest-visible figure replaces the tool's, which
// is kept; the measurement's own pause is taken out; a missing event keeps
// the tool's figure and says so.
func TestSetGuestDowntime(t *testing.T) {
	src := EventLog{{Name: "STOP", Time: at(1000)}}
	dst := EventLog{{Name: "RESUME", Time: at(2100)}}
	r := &report.Report{DowntimeMS: 40, DowntimeWarning: "stale"}
	if err := SetGuestDowntime(r, src, dst, at(0), RunResume, 1000); err != nil {
		t.Fatal(err)
	}
	if r.DowntimeMS != 100 || r.ReportedDowntimeMS != 40 || r.DowntimeWarning != "" {
		t.Fatalf("report %+v: want downtime 1100 - 1000 ms of oracle, reported 40, no warning", r)
	}
	r = &report.Report{DowntimeMS: 6}
	err := SetGuestDowntime(r, src, dst, at(0), RunPrecopyPaused, 0)
	if !errors.Is(err, ErrNoEvent) || r.DowntimeMS != 6 || r.ReportedDowntimeMS != 6 ||
		!strings.Contains(r.DowntimeWarning, "tool's own") || !strings.Contains(r.DowntimeWarning, "MIGRATION completed") {
		t.Fatalf("without the run point: %v, report %+v: want the tool's 6 ms kept and a warning naming the event", err, r)
	}
}
