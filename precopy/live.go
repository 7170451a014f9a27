package precopy

import (
	"sync/atomic"

	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/wire"
)

// liveState is what the snapshot Config.Live receives reads: written by
// the main goroutine as the migration advances, read from any goroutine.
type liveState struct {
	session string // set before Config.Live is called, then fixed
	phase   atomic.Pointer[report.Phase]
	pass    atomic.Int32
	goSent  atomic.Bool
	// sess is the current link (nil between links); before counts the
	// bytes of the links before it.
	sess   atomic.Pointer[wire.Session]
	before atomic.Uint64
	// named: pending pages the current pass's layout names, counted when
	// the pass began; refsAt: references sent by then.
	named, refsAt atomic.Uint64
}

func (l *liveState) setPhase(p report.Phase) { l.phase.Store(&p) }

// publish hands Config.Live its snapshot once the session is open.
func (s *source) publish() {
	s.live.session = s.sess.ID().String()
	s.live.sess.Store(s.sess)
	s.live.setPhase(report.PhasePrecopy)
	if s.cfg.Live != nil {
		s.cfg.Live(s.snapshot)
	}
}

// countNamed notes, as pass iter begins, how many pending pages its
// layout names: the storage references the pass is expected to send.
func (s *source) countNamed(iter uint32) {
	s.live.pass.Store(int32(iter))
	r := s.refs
	if s.cfg.Live == nil || r == nil {
		return
	}
	var named uint64
	if r.lay != nil && r.pass == iter {
		for _, b := range s.blocks {
			b.pending.Runs(0, b.npages, func(start, count uint64) bool {
				for p := start; p < start+count; p++ {
					if _, ok := r.lookup(b, p); ok && !b.noref.Has(p) {
						named++
					}
				}
				return true
			})
		}
	}
	s.live.named.Store(named)
	s.live.refsAt.Store(r.sent.Load())
}

// snapshot is the migration's figures now. Safe from any goroutine: it
// reads only atomics and what is fixed once the session is open.
func (s *source) snapshot() report.Live {
	l := report.Live{
		Role: report.RoleSource, Guest: s.g.Name(), Session: s.live.session, Mode: string(s.cfg.Mode),
		Pass: int(s.live.pass.Load()), GoSent: s.live.goSent.Load(),
		GuestPages: s.guestPages(), Downtime: s.cfg.Downtime, Started: s.start,
	}
	if p := s.live.phase.Load(); p != nil {
		l.Phase = *p
	}
	l.BytesSent = s.live.before.Load()
	if sess := s.live.sess.Load(); sess != nil {
		for _, c := range append([]*wire.Conn{sess.Control, sess.Urgent}, sess.Bulk...) {
			if c != nil {
				l.BytesSent += c.BytesWritten()
				l.BytesReceived += c.BytesRead()
			}
		}
	}
	var refs uint64
	if s.refs != nil {
		refs = s.refs.sent.Load()
	}
	l.PagesDone = s.dataPages.Load() + s.zeroPages.Load() + refs
	var pending uint64
	for _, b := range s.blocks {
		pending += b.pending.Count()
	}
	switch l.Phase {
	case report.PhasePostcopy:
		l.Left.PostcopyMissing = pending
	case report.PhaseDone:
	default:
		named, sent := s.live.named.Load(), refs-min(refs, s.live.refsAt.Load())
		l.Left.StorageRefs = min(named-min(named, sent), pending)
		l.Left.Data = pending - l.Left.StorageRefs
	}
	return l
}
