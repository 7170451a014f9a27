package precopy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/dmig/dmig/internal/cause"
	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/wire"
)

// postcopyLink is the post-copy work on one link to the destination: the
// page server, the push, the progress reports.
type postcopyLink struct {
	ctx  context.Context // ends when the link fails
	stop context.CancelFunc
	wg   *sync.WaitGroup
}

func (p *postcopyLink) close() {
	p.stop()
	p.wg.Wait()
}

// recoverable reports whether a failure after Go may be mended by
// reconnecting: a lost or reset connection is; the destination's own
// failure or refusal is not.
func recoverable(err error) bool {
	var re *remoteError
	var refused *wire.RefusedError
	var nr *notResumedError
	return !errors.As(err, &re) && !errors.As(err, &refused) && !errors.As(err, &nr)
}

// awaitComplete waits, after Go, for the destination's Complete, through
// as many reconnections as the links' failures take.
func (s *source) awaitComplete(base context.Context, post *postcopyLink, tPause time.Time, iter int) (*wire.Complete, error) {
	defer func() { post.close() }()
	ctx := post.ctx
	for {
		select {
		case done := <-s.completed:
			s.noteResumed(tPause)
			return done, nil
		case <-s.resumed:
			s.noteResumed(tPause)
			select {
			case done := <-s.completed:
				return done, nil
			case <-ctx.Done():
			}
		case <-ctx.Done():
		}
		// The link failed.
		lostBy := cause.Of(ctx, errors.New("destination lost after go"))
		if base.Err() != nil || !recoverable(lostBy) || s.cfg.RecoverTimeout <= 0 {
			return nil, lostBy
		}
		post.close()
		next, err := s.reconnect(base, lostBy, iter)
		var refused *wire.RefusedError
		if errors.As(err, &refused) && refused.Code == wire.RefuseCompleted {
			// The destination placed every page and runs the guest; only
			// its Complete, and the figures in it, were lost.
			s.log.Warn("the destination had completed the migration when the link failed: its figures did not arrive", "destination", refused.Message)
			return &wire.Complete{}, nil
		}
		if err != nil {
			return nil, err
		}
		post, ctx = next, next.ctx
	}
}

// noteResumed records the downtime once the destination runs the guest.
func (s *source) noteResumed(tPause time.Time) {
	if s.rep.DowntimeMS == 0 {
		s.rep.DowntimeMS = report.MS(time.Since(tPause))
		s.log.Info("destination resumed", "downtime", time.Since(tPause), "postcopy_pages", s.rep.PostcopyPages)
	}
}

// reconnect redials the session with FlagRecover until the destination
// answers or Config.RecoverTimeout has passed, then serves the pages it
// lists as missing on the new link. The guest stays paused throughout:
// its memory is what the destination still lacks.
func (s *source) reconnect(base context.Context, lostBy error, iter int) (*postcopyLink, error) {
	s.log.Warn("link to the destination lost after go; reconnecting", "error", lostBy, "recover_timeout", s.cfg.RecoverTimeout)
	s.sentBefore = s.bytesSent()
	s.live.sess.Store(nil)
	s.live.before.Store(s.sentBefore)
	s.sess.Close()
	deadline := time.Now().Add(s.cfg.RecoverTimeout)
	h := s.sess.Hello
	h.Flags |= wire.FlagRecover
	for attempt := 1; ; attempt++ {
		sess, missing, err := s.redial(base, h, deadline)
		if err == nil {
			s.rep.Recoveries++
			s.log.Info("reconnected to the destination", "attempt", attempt, "missing", wire.PageCount(missing))
			return s.resumeLink(base, sess, missing, iter), nil
		}
		var refused *wire.RefusedError
		if errors.As(err, &refused) && refused.Code != wire.RefuseBusy {
			return nil, fmt.Errorf("destination refused the reconnection: %w (link lost: %v)", err, lostBy)
		}
		if base.Err() != nil || !time.Now().Before(deadline) {
			return nil, fmt.Errorf("no reconnection within %v (last attempt: %v): %w", s.cfg.RecoverTimeout, err, lostBy)
		}
		s.log.Debug("reconnection attempt failed", "attempt", attempt, "error", err)
		select {
		case <-base.Done():
		case <-time.After(min(250*time.Millisecond, time.Until(deadline))):
		}
	}
}

// redial opens one reconnection and reads the destination's Missing.
func (s *source) redial(base context.Context, h wire.Hello, deadline time.Time) (*wire.Session, []wire.Run, error) {
	ctx, cancel := context.WithDeadline(base, deadline)
	defer cancel()
	sess, err := wire.Dial(ctx, s.cfg.To, h, wire.WithTLS(s.cfg.TLS), wire.WithLinkTimeout(s.cfg.LinkTimeout), wire.WithTimeout(time.Until(deadline)))
	if err != nil {
		return nil, nil, err
	}
	m, err := sess.Control.ReadFrame(ctx)
	if err != nil {
		sess.Close()
		return nil, nil, fmt.Errorf("await missing pages: %w", err)
	}
	switch m := m.(type) {
	case *wire.Missing:
		return sess, m.Pages, nil
	case *wire.Error:
		sess.Close()
		return nil, nil, &remoteError{code: m.Code, msg: fmt.Sprintf("%v: %s", m.Code, m.Message)}
	}
	sess.Close()
	return nil, nil, fmt.Errorf("await missing pages: unexpected %v", m.Type())
}

// resumeLink makes sess the session's link: what the destination lacks is
// pending again and pushed as data, its requests are served, and its
// control connection is read for Complete.
func (s *source) resumeLink(base context.Context, sess *wire.Session, missing []wire.Run, iter int) *postcopyLink {
	s.sess = sess
	s.live.sess.Store(sess)
	pace(sess, s.cfg.Bandwidth)
	s.dataOnly = true
	for _, b := range s.blocks {
		b.pending.Clear()
	}
	for _, r := range missing {
		if int(r.Block) < len(s.blocks) {
			b := s.blocks[r.Block]
			b.pending.AddRange(r.Page, min(r.Count, b.npages-min(r.Page, b.npages)))
		}
	}
	ctx, cancel := context.WithCancelCause(base)
	var wg sync.WaitGroup
	wg.Add(4)
	go func() { defer wg.Done(); s.readControlOf(ctx, sess, cancel) }()
	gate := &faultGate{urgent: sess.Urgent}
	go func() { defer wg.Done(); s.servePages(ctx, gate) }()
	go func() { defer wg.Done(); s.push(ctx, gate) }()
	go func() { defer wg.Done(); s.watchPostcopy(ctx, iter) }()
	return &postcopyLink{ctx: ctx, stop: func() { cancel(errors.New("link closed")) }, wg: &wg}
}

// Restartable reports whether a migration that aborted (outcome Aborted,
// the source guest running on) with err may be started over with hope:
// its link failed (a reset, a closed connection, a refused dial while the
// destination's serve restarts). A refusal, a busy guest, a source left
// paused, a silent destination, anything the destination reported, and a
// failure of this side are not.
func Restartable(err error) bool {
	var refused *wire.RefusedError
	var re *remoteError
	var nr *notResumedError
	if err == nil || errors.As(err, &refused) || errors.As(err, &re) || errors.As(err, &nr) ||
		errors.Is(err, ErrBusy) || errors.Is(err, ErrSourcePaused) || errors.Is(err, wire.ErrTimeout) {
		return false
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE)
}
