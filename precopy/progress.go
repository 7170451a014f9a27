package precopy

import (
	"context"
	"time"

	"github.com/dmig/dmig/internal/report"
)

// progressEvery is how often post-copy progress is reported.
const progressEvery = 250 * time.Millisecond

// progress tells cfg.Progress where the migration stands; rate is the
// send rate over the interval just ended.
func (s *source) progress(phase report.Phase, iter int, remaining uint64, rate float64) {
	if s.cfg.Progress == nil {
		return
	}
	var total uint64
	for _, b := range s.blocks {
		total += b.npages
	}
	s.cfg.Progress(report.Progress{
		Phase: phase, Iteration: iter, Elapsed: time.Since(s.start),
		GuestPages: total, Remaining: remaining,
		DataPages: s.dataPages.Load(), ZeroPages: s.zeroPages.Load(),
		BytesSent: s.bytesSent(), Rate: rate, MaxBandwidth: s.cfg.Bandwidth.Rate(),
	})
}

// watchPostcopy reports post-copy progress (pages the source still owes)
// until ctx ends.
func (s *source) watchPostcopy(ctx context.Context, iter int) {
	if s.cfg.Progress == nil {
		return
	}
	t := time.NewTicker(progressEvery)
	defer t.Stop()
	last, lastT := s.bytesSent(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			var owed uint64
			for _, b := range s.blocks {
				owed += b.pending.Count()
			}
			sent := s.bytesSent()
			s.progress(report.PhasePostcopy, iter, owed, float64(sent-last)/now.Sub(lastT).Seconds())
			last, lastT = sent, now
		}
	}
}
