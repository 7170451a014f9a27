package precopy

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

func TestPolicy(t *testing.T) {
	const mb = 1 << 20
	type pass struct {
		bytes     uint64
		elapsed   time.Duration
		remaining uint64
		owed      uint64
		want      decision
	}
	cases := []struct {
		name   string
		mode   Mode
		passes []pass
	}{
		// 100 MB/s: 1000 pages take 41 ms, within 50 ms with the 5 ms
		// switch cost; 2000 do not.
		{"precopy converges", ModePrecopy, []pass{
			{100 * mb, time.Second, 2000, 0, iterate},
			{100 * mb, time.Second, 1000, 0, finish},
		}},
		{"nothing left", ModePrecopy, []pass{{0, 0, 0, 0, finish}}},
		{"precopy at the pass limit sends the rest paused", ModePrecopy, []pass{
			{100 * mb, time.Second, 50000, 0, iterate},
			{100 * mb, time.Second, 50000, 0, iterate},
			{100 * mb, time.Second, 50000, 0, finish},
		}},
		{"hybrid stalls into post-copy", ModeHybrid, []pass{
			{100 * mb, time.Second, 50000, 0, iterate},
			{100 * mb, time.Second, 48000, 0, iterate},
			{100 * mb, time.Second, 47000, 0, postcopy},
		}},
		{"hybrid at the pass limit goes post-copy", ModeHybrid, []pass{
			{100 * mb, time.Second, 50000, 0, iterate},
			{100 * mb, time.Second, 20000, 0, iterate},
			{100 * mb, time.Second, 9000, 0, postcopy},
		}},
		// Failures the destination has yet to hand back keep the passes
		// going even when what is dirty fits, and even when it stalls,
		// but not past the pass limit.
		{"hybrid waits for a wrong layout's failures", ModeHybrid, []pass{
			{100 * mb, time.Second, 10, 5000, iterate},
			{100 * mb, time.Second, 10, 4000, iterate},
			{100 * mb, time.Second, 10, 0, finish},
		}},
		{"owed pages do not outlast the pass limit", ModeHybrid, []pass{
			{100 * mb, time.Second, 50000, 5000, iterate},
			{100 * mb, time.Second, 50000, 5000, iterate},
			{100 * mb, time.Second, 50000, 5000, postcopy},
		}},
		{"postcopy never iterates", ModePostcopy, []pass{{100 * mb, time.Second, 50000, 5000, postcopy}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := &policy{mode: c.mode, budget: 50 * time.Millisecond, maxIterations: 3, switchCost: 5 * time.Millisecond}
			for i, ps := range c.passes {
				if got := p.next(i+1, ps.bytes, ps.elapsed, ps.remaining, ps.owed); got != ps.want {
					t.Fatalf("pass %d: decision %d, want %d", i+1, got, ps.want)
				}
			}
		})
	}
}

// restoreSource is a hybrid source whose destination has checked checked
// of sent references; setChecked reports a new figure as a Verdict would.
func restoreSource(sent uint64) *source {
	s := &source{cfg: Config{Mode: ModeHybrid}, log: hclog.NewNullLogger(), refs: &refSource{}, verdictCh: make(chan struct{}, 1)}
	s.refs.sent.Store(sent)
	return s
}

func (s *source) setChecked(n uint64) {
	s.verdictMu.Lock()
	s.verdict.Checked = n
	s.verdictMu.Unlock()
	select {
	case s.verdictCh <- struct{}{}:
	default:
	}
}

// TestHoldForRestore: the pause is held (another pass) while the restore
// is far behind and catching up; not for a restore that has caught up,
// one that stopped moving, or past restoreHoldMax in all.
func TestHoldForRestore(t *testing.T) {
	ctx := context.Background()
	s := restoreSource(100_000)
	var held time.Duration

	// Catching up while the source waits: held.
	go func() {
		time.Sleep(20 * time.Millisecond)
		s.setChecked(50_000)
	}()
	if !s.holdForRestore(ctx, &held) {
		t.Fatal("not held for a restore 100 k references behind that checked 50 k meanwhile")
	}
	if held < restoreHoldStep/2 {
		t.Fatalf("held %v, want about a step (%v): it waited for the restore", held, restoreHoldStep)
	}
	// Done before the step ends: the wait ends at once, and one more pass
	// sends what the guest wrote meanwhile.
	go func() {
		time.Sleep(20 * time.Millisecond)
		s.setChecked(100_000 - settledRefs)
	}()
	t0 := time.Now()
	if !s.holdForRestore(ctx, &held) {
		t.Fatal("not held for the pass after the restore caught up")
	}
	if d := time.Since(t0); d >= restoreHoldStep {
		t.Fatalf("waited %v for a restore that caught up after 20 ms", d)
	}
	// Caught up: the pause goes ahead.
	if s.holdForRestore(ctx, &held) {
		t.Fatal("held for a restore within settledRefs")
	}

	// A restore that checks nothing while the source waits: not held.
	s = restoreSource(100_000)
	held = 0
	if s.holdForRestore(ctx, &held) {
		t.Fatal("held for a restore that made no progress")
	}
	// Past the limit: not held, whatever the progress.
	held = restoreHoldMax
	go s.setChecked(10_000)
	if s.holdForRestore(ctx, &held) {
		t.Fatal("held past restoreHoldMax")
	}
}
