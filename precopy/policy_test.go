package precopy

import (
	"testing"
	"time"
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
