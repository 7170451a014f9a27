package report

import (
	"math/rand/v2"
	"testing"
	"time"
)

// The histogram has QEMU's buckets ([2^N, 2^(N+1)) µs, under 1 µs in the
// first, 2^23 µs and more in the last) and sums to the count.
func TestSummarizeDist(t *testing.T) {
	cases := map[time.Duration]int{
		0: 0, 999 * time.Nanosecond: 0, time.Microsecond: 0, 2 * time.Microsecond: 1, 3 * time.Microsecond: 1,
		255 * time.Microsecond: 7, 256 * time.Microsecond: 8, 511 * time.Microsecond: 8,
		time.Millisecond: 9, 4 * time.Second: 21, 9 * time.Second: 23, time.Hour: 23,
	}
	var samples []time.Duration
	want := make([]uint64, DistBuckets)
	for d, b := range cases {
		if got := Bucket(d); got != b {
			t.Errorf("Bucket(%v) = %d, want %d", d, got, b)
		}
		samples = append(samples, d)
		want[b]++
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 10_000 {
		d := time.Duration(r.Int64N(int64(50 * time.Millisecond)))
		samples = append(samples, d)
		want[Bucket(d)]++
	}
	l := Summarize(samples)
	var sum uint64
	for i, n := range l.Dist {
		sum += n
		if n != want[i] {
			t.Errorf("bucket %d: %d, want %d", i, n, want[i])
		}
	}
	if len(l.Dist) != DistBuckets || sum != uint64(l.Count) || l.Count != len(samples) {
		t.Errorf("%d buckets summing to %d, count %d, %d samples", len(l.Dist), sum, l.Count, len(samples))
	}
	if e := Summarize(nil); e.Count != 0 || e.Dist != nil {
		t.Errorf("no samples: %+v", e)
	}
}
