package ctl

import (
	"math"
	"time"

	"github.com/dmig/dmig/internal/report"
)

// Entry is one migration as dmig status shows it (its JSON is documented
// in docs/operating.md).
type Entry struct {
	ID      int      `json:"id"`      // the entry's number in its process
	PID     int      `json:"pid"`     // the process running the migration
	Command string   `json:"command"` // migrate, serve or drain
	Role    string   `json:"role"`    // source or destination
	Guest   string   `json:"guest"`
	Names   []string `json:"names,omitempty"` // other names dmig cancel takes for it
	Session string   `json:"session,omitempty"`
	Mode    string   `json:"mode"`
	Phase   string   `json:"phase"`
	Pass    int      `json:"pass"`
	GoSent  bool     `json:"go_sent"`
	// Cancellable: dmig cancel would abort it now (a source before Go).
	Cancellable   bool             `json:"cancellable"`
	BytesSent     uint64           `json:"bytes_sent"`
	BytesReceived uint64           `json:"bytes_received"`
	GuestPages    uint64           `json:"guest_pages"`
	PagesDone     uint64           `json:"pages_done"`
	PagesLeft     report.PagesLeft `json:"pages_left"`
	// Progress is in [0, 1]: pages done ÷ (pages done + pages left),
	// never below an earlier value.
	Progress float64 `json:"progress"`
	// RateBytes is the smoothed rate of bytes moved (sent by a source,
	// received by a destination), bytes per second.
	RateBytes float64 `json:"rate_bytes_per_s"`
	// ETASeconds is the time left: nil until the first estimate.
	ETASeconds     *float64 `json:"eta_s"`
	ETAReestimates int      `json:"eta_reestimates"`
	ETANote        string   `json:"eta_note,omitempty"`
	DowntimeMS     float64  `json:"downtime_budget_ms"`
	ElapsedS       float64  `json:"elapsed_s"`
	// MaxBandwidth is the migration's own cap, bytes/s (0: none), which
	// dmig set-bandwidth changes; nil: it has none to change here (a
	// destination). SharedMaxBandwidth is the tightest cap above it,
	// shared with other migrations (a drain's destination or total; 0:
	// none); BandwidthChanges counts the changes so far.
	MaxBandwidth       *uint64 `json:"max_bandwidth_bytes_per_s"`
	SharedMaxBandwidth uint64  `json:"shared_max_bandwidth_bytes_per_s,omitempty"`
	BandwidthChanges   int     `json:"bandwidth_changes,omitempty"`
	// Outcome is set once the migration ended (completed, aborted,
	// failed-after-resume), with its error.
	Outcome string `json:"outcome,omitempty"`
	Error   string `json:"error,omitempty"`
	// Socket is the control socket the entry was read from.
	Socket string `json:"socket"`
}

// rateTau is the time constant of the smoothed rates: long enough to ride
// out one slow batch, short enough to follow a phase change within seconds.
const rateTau = 2 * time.Second

// minRateInterval: samples closer than this only update the counters, not
// the rates (a rate over a few milliseconds is noise).
const minRateInterval = 200 * time.Millisecond

// noteReestimated explains an ETA that went up.
const noteReestimated = "raised: the pages left outlasted the estimate (the guest dirtied pages faster than they moved, or the rate fell)"

// figures turns a migration's raw samples into figures that never run
// backwards. Not safe for concurrent use: the entry's lock guards it.
type figures struct {
	live  report.Live
	began bool
	// Maxima of the counters: a reconnection may read a new link's
	// counters a moment before the old links' bytes are added in.
	bytesSent, bytesRecv, done uint64
	// The smoothed rates and the sample they were last updated at.
	rateAt              time.Time
	rated               bool // the rates have a first estimate
	rateMoved, rateDone uint64
	byteRate, pageRate  float64
	progress            float64
	eta                 time.Duration
	etaKnown            bool
	etaAt               time.Time
	reestimates         int
	note                string
}

// observe takes sample l, taken at now.
func (f *figures) observe(now time.Time, l report.Live) {
	f.live = l
	f.bytesSent = max(f.bytesSent, l.BytesSent)
	f.bytesRecv = max(f.bytesRecv, l.BytesReceived)
	f.done = max(f.done, l.PagesDone)
	moved := f.moved()
	if !f.began {
		// Every counter was zero when the migration started.
		f.began, f.rateAt = true, l.Started
		if l.Started.IsZero() || l.Started.After(now) {
			f.rateAt, f.rateMoved, f.rateDone = now, moved, f.done
		}
	}
	if dt := now.Sub(f.rateAt); dt >= minRateInterval && l.Phase != report.PhaseConnecting {
		bytes, pages := float64(moved-f.rateMoved)/dt.Seconds(), float64(f.done-f.rateDone)/dt.Seconds()
		// The first interval is the estimate: smoothing it from zero
		// would start every rate far too low.
		a := 1.0
		if f.rated {
			a = 1 - math.Exp(-dt.Seconds()/rateTau.Seconds())
		}
		f.byteRate += a * (bytes - f.byteRate)
		f.pageRate += a * (pages - f.pageRate)
		f.rateAt, f.rateMoved, f.rateDone, f.rated = now, moved, f.done, true
	}
	f.advance(now)
}

// moved is the byte counter the rate follows: a source's sent bytes, a
// destination's received ones.
func (f *figures) moved() uint64 {
	if f.live.Role == report.RoleDestination {
		return f.bytesRecv
	}
	return f.bytesSent
}

// advance updates progress and the ETA from the counters and rates.
func (f *figures) advance(now time.Time) {
	left := f.live.Left.Total()
	if f.live.Phase == report.PhaseDone {
		f.progress, f.eta, f.etaKnown, f.etaAt = 1, 0, true, now
		return
	}
	if f.done+left > 0 {
		f.progress = max(f.progress, float64(f.done)/float64(f.done+left))
	}
	// No estimate while connecting (nothing is known of the guest yet),
	// nor from a rate that ran down towards zero over a stall of sending
	// (a pause, a layout fetch): it would be a guess.
	if f.live.Phase == report.PhaseConnecting {
		return
	}
	var raw time.Duration
	rawKnown := left == 0 || f.pageRate >= 1
	if left > 0 && rawKnown {
		raw = time.Duration(float64(left) / f.pageRate * float64(time.Second))
	}
	switch {
	case !f.etaKnown:
		if rawKnown {
			f.eta, f.etaKnown, f.etaAt = raw, true, now
		}
		return
	}
	countdown := f.eta - now.Sub(f.etaAt)
	switch {
	case rawKnown && raw < countdown:
		f.eta = raw
	case countdown > 0:
		f.eta = countdown
	case rawKnown && raw > 0:
		f.eta = raw
		f.reestimates++
		f.note = noteReestimated
	default:
		f.eta = 0
	}
	f.etaAt = now
}

// entry fills e's figures as of now.
func (f *figures) entry(now time.Time, e *Entry) {
	l := f.live
	e.Role, e.Guest, e.Session, e.Mode = l.Role, l.Guest, l.Session, l.Mode
	e.Phase, e.Pass, e.GoSent = string(l.Phase), l.Pass, l.GoSent
	e.BytesSent, e.BytesReceived = f.bytesSent, f.bytesRecv
	e.GuestPages, e.PagesDone, e.PagesLeft = l.GuestPages, f.done, l.Left
	e.Progress = f.progress
	e.RateBytes = math.Round(f.byteRate)
	if f.etaKnown {
		s := max(0, f.eta-now.Sub(f.etaAt)).Seconds()
		s = math.Round(s*10) / 10
		e.ETASeconds = &s
	}
	e.ETAReestimates, e.ETANote = f.reestimates, f.note
	e.DowntimeMS = float64(l.Downtime.Microseconds()) / 1000
	if !l.Started.IsZero() {
		e.ElapsedS = math.Round(now.Sub(l.Started).Seconds()*10) / 10
	}
}
