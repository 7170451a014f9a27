package dbrestore

import (
	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/wire"
)

// snapshot is the session's figures now (Config.Watch). Safe from any
// goroutine once the restorer exists: it reads atomics, the blocks (fixed
// by then) and, under their locks, the link and the switchover flag.
func (d *dest) snapshot() report.Live {
	h := &d.sess.Hello
	l := report.Live{
		Role: report.RoleDestination, Guest: h.Guest, Session: h.Session.String(), Mode: h.Mode,
		Pass: int(d.pass.Load()), Started: d.started,
	}
	for _, b := range h.Blocks {
		l.GuestPages += b.Pages()
	}
	for _, c := range connsOf(d.conns()) {
		if c != nil {
			l.BytesReceived += c.BytesRead()
			l.BytesSent += c.BytesWritten()
		}
	}
	verified := d.restore.n.verified.Load()
	l.PagesDone = d.data.Load() + d.zero.Load() + verified
	d.mu.Lock()
	// An adopted session starts past switchover without a Switchover.
	final := d.final || d.phase.Load() != phaseReceive
	d.mu.Unlock()
	switch d.phase.Load() {
	case phaseReceive:
		l.Phase = report.PhasePrecopy
		if final {
			l.Phase = report.PhaseSwitchover
		}
	case phaseReady:
		l.Phase = report.PhaseReady
	default:
		l.Phase, l.GoSent = report.PhasePostcopy, true
	}
	if !final {
		// The pass on its way is the one after the last that ended.
		l.Pass++
		// What the source still has to send is the source's to know:
		// here, at least the pages not yet received once.
		refs := d.restore.n.received.Load()
		l.Left.StorageRefs = refs - min(refs, d.restore.n.checked.Load())
		l.Left.Data = l.GuestPages - min(l.GuestPages, l.PagesDone+l.Left.StorageRefs)
		return l
	}
	l.Left.PostcopyMissing = uint64(max(0, d.missing.Load()))
	return l
}

// connsOf lists a session's connections (nil where one is not open).
func connsOf(s *wire.Session) []*wire.Conn {
	return append([]*wire.Conn{s.Control, s.Urgent}, s.Bulk...)
}
