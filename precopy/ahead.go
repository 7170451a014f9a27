package precopy

import (
	"context"
	"time"
)

// Fetching a layout ahead: the guest's walk of its buffer pool takes
// seconds for a large pool under load (2 s for 1.47 M frames at 8 GiB), and
// a pass that waited for it left the link idle that long. So the first
// pass's layout is fetched while the source sets up (startFetch from run),
// and a later pass's during the tail of the pass before (fetchAhead).
//
// A layout taken a little before the pages it names are collected is as
// safe as one taken after: every reference carries the hash of the page as
// read at send time, so a frame that changed since the walk fails its
// check at the destination and the page is sent as data. What is lost is
// at most those pages' reference, which the walk of a guest under load
// risks anyway (it is not atomic).
const (
	aheadPoll = 50 * time.Millisecond
	// aheadLead: a pass's next layout is fetched once the pass is expected
	// to end within this many times the last fetch's duration (a fetch
	// beside a pass takes longer than one alone: 0.9 s before the first
	// pass, 2 s beside it, at 8 GiB).
	aheadLead = 3
	// aheadMinWait is the least a pass waits for a layout fetched ahead
	// that is not done yet, however little it is expected to save.
	aheadMinWait = 20 * time.Millisecond
	// aheadSmoothing is the weight of the newest sample in the pass's
	// smoothed rate (over about half a second at aheadPoll).
	aheadSmoothing = 0.1
)

// layoutFetch is a layout fetch running in the background for pass iter.
type layoutFetch struct {
	iter    uint32
	started time.Time
	cancel  context.CancelFunc
	done    chan struct{}
	res     fetched // set before done closes
}

// startFetch starts fetching the layout for pass iter in the background;
// prepare for that pass takes it. Any other fetch ahead is dropped first.
func (r *refSource) startFetch(ctx context.Context, iter uint32, guestPages uint64) {
	if r == nil {
		return
	}
	r.dropAhead()
	fctx, cancel := context.WithCancel(ctx)
	f := &layoutFetch{iter: iter, started: time.Now(), cancel: cancel, done: make(chan struct{})}
	r.ahead = f
	go func() {
		defer close(f.done)
		f.res = f.fetch(fctx, r, guestPages)
	}()
}

func (f *layoutFetch) fetch(ctx context.Context, r *refSource, guestPages uint64) fetched {
	defer f.cancel()
	return r.load(ctx, f.iter, guestPages)
}

// dropAhead stops a fetch ahead that no pass is to use and waits for it.
func (r *refSource) dropAhead() {
	if r == nil || r.ahead == nil {
		return
	}
	r.ahead.cancel()
	<-r.ahead.done
	r.ahead = nil
}

// fetchAhead watches pass iter and, once it is expected to end within
// aheadLead fetches, starts the fetch of pass iter+1's layout. A pass
// shorter than a fetch gets none: the pages it leaves are few, and the
// next pass decides as without (prepareRefs). stop ends the watch (a
// fetch it started runs on); it must be called before the next prepare.
func (s *source) fetchAhead(ctx context.Context, iter uint32) (stop func()) {
	r := s.refs
	if r == nil || !r.refresh || r.fetchTook <= 0 || r.ahead != nil {
		return func() {}
	}
	lead := time.Duration(aheadLead * float64(r.fetchTook))
	shortest := r.fetchTook
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t0 := time.Now()
		eta := passETA{last: s.pendingPages(), at: t0}
		tick := time.NewTicker(aheadPoll)
		defer tick.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case now := <-tick.C:
				left, ok := eta.update(s.pendingPages(), now)
				if !ok || now.Sub(t0) < shortest || left > lead {
					continue
				}
				r.log.Debug("fetching the next pass's layout ahead", "iteration", iter+1, "pass_left", left.Round(time.Millisecond))
				r.startFetch(ctx, iter+1, s.guestPages())
				return
			}
		}
	}()
	return func() { cancel(); <-done }
}

// pendingPages counts the pages not yet sent in this pass, all blocks.
func (s *source) pendingPages() uint64 {
	var n uint64
	for _, b := range s.blocks {
		n += b.pending.Count()
	}
	return n
}

// passETA estimates how long a pass has left from how fast its pending
// pages go, smoothed: references go far faster than data, so the rate of
// the pass so far would promise an end too soon.
type passETA struct {
	last uint64
	at   time.Time
	rate float64 // pages/s
}

// update takes the pass's pending pages at now and returns the time left,
// or false while no rate is known.
func (e *passETA) update(left uint64, now time.Time) (time.Duration, bool) {
	dt := now.Sub(e.at).Seconds()
	if dt <= 0 {
		return 0, false
	}
	var gone float64
	if left < e.last {
		gone = float64(e.last - left)
	}
	if inst := gone / dt; e.rate == 0 {
		e.rate = inst
	} else {
		e.rate += aheadSmoothing * (inst - e.rate)
	}
	e.last, e.at = left, now
	if e.rate <= 0 {
		return 0, false
	}
	return time.Duration(float64(left) / e.rate * float64(time.Second)), true
}
