package guardian

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Messages from the migrating process to the guardian, one a line.
const (
	MsgPausing = "pausing" // the guest is about to be paused
	MsgGo      = "go"      // Go is about to be sent: the guest stays paused
	MsgDone    = "done"    // nothing left to do: exit
)

// ReplyReady is the guardian's first line on its output: it watches.
const ReplyReady = "ready"

// Verdict is what the guardian did, its last line on its output.
type Verdict string

const (
	// Untouched: the guest was not paused by this migration, or the
	// migration said it was done.
	Untouched Verdict = "untouched"
	// Resumed: the migration ended without Go; the guardian resumed the
	// guest.
	Resumed Verdict = "resumed"
	// LeftPaused: the migration ended after Go; the guest stays paused.
	LeftPaused Verdict = "left-paused"
	// Failed: the guest should have been resumed and could not be within
	// the bound; it stays paused.
	Failed Verdict = "failed"
)

// Target is the guest the guardian resumes.
type Target interface {
	// Resume makes the guest run and returns once it does; the guardian
	// calls it again after an error, until its bound passes, unless the
	// error wraps ErrGone.
	Resume(ctx context.Context) error
}

// ErrGone: the guest no longer exists; there is nothing to resume, and no
// point retrying.
var ErrGone = errors.New("guest is gone")

// Options configure Watch.
type Options struct {
	// Bound is how long the guardian keeps trying to resume (default 10 s).
	Bound time.Duration
	// Attempt bounds one Resume call (default 2 s).
	Attempt time.Duration
	// Retry is the pause between attempts (default 100 ms).
	Retry  time.Duration
	Logger hclog.Logger
	// Hint, if set, is the command that resumes the guest by hand, logged
	// when the guardian gives up or leaves the guest paused.
	Hint string
}

func (o *Options) defaults() {
	if o.Bound <= 0 {
		o.Bound = 10 * time.Second
	}
	if o.Attempt <= 0 {
		o.Attempt = 2 * time.Second
	}
	if o.Retry <= 0 {
		o.Retry = 100 * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
}

// Watch is the guardian: it reads messages from r until "done" or the end
// of r, then acts as the package documentation says, and returns what it
// did. An error comes with Failed (the resume failed) or Untouched (r
// failed: the guardian cannot know the state and does nothing, since
// resuming after an unseen Go would run two copies).
func Watch(r io.Reader, t Target, o Options) (Verdict, error) {
	o.defaults()
	log := o.Logger
	pausing, going := false, false
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		switch m := sc.Text(); m {
		case MsgPausing:
			pausing = true
			log.Debug("guest about to be paused")
		case MsgGo:
			going = true
			log.Debug("go: the destination owns the guest from now on")
		case MsgDone:
			log.Debug("migration done")
			return Untouched, nil
		default:
			log.Warn("unknown message from the migrating process: ignored", "message", m)
		}
	}
	if err := sc.Err(); err != nil {
		return Untouched, fmt.Errorf("read from the migrating process: %w", err)
	}
	switch {
	case going:
		log.Warn("the migrating process ended after go: the source guest stays paused (the destination may run it)", "resume_with", o.Hint)
		return LeftPaused, nil
	case !pausing:
		return Untouched, nil
	}
	log.Warn("the migrating process ended before go: resuming the source guest")
	if err := resume(t, o); err != nil {
		log.Error("could not resume the source guest: it stays paused", "error", err, "resume_with", o.Hint)
		return Failed, err
	}
	log.Info("source guest resumed")
	return Resumed, nil
}

// resume calls t.Resume until it succeeds or o.Bound passes.
func resume(t Target, o Options) error {
	deadline := time.Now().Add(o.Bound)
	var errs []error
	for {
		ctx, cancel := context.WithTimeout(context.Background(), o.Attempt)
		err := t.Resume(ctx)
		cancel()
		if err == nil {
			return nil
		}
		if errors.Is(err, ErrGone) {
			return err
		}
		if len(errs) == 0 || errs[len(errs)-1].Error() != err.Error() {
			o.Logger.Warn("resume source guest", "error", err)
			errs = append(errs, err)
		}
		if time.Now().Add(o.Retry).After(deadline) {
			return fmt.Errorf("gave up after %v: %w", o.Bound, errors.Join(errs...))
		}
		time.Sleep(o.Retry)
	}
}
