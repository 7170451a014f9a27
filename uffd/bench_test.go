package uffd

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dmig/dmig/internal/ramfile"
)

// BenchmarkFaults: 4 KiB MISSING faults raised by threads of another
// process and served from memory with UFFDIO_COPY, with 1 and 2 resolver
// goroutines (and as many faulting threads). Reports faults/s and the
// latency the faulting thread saw (p50/p99, µs).
func BenchmarkFaults(b *testing.B) {
	for _, workers := range []int{1, 2} {
		b.Run(fmt.Sprintf("handlers=%d", workers), func(b *testing.B) {
			const pages = 32768 // 128 MiB
			c := startChild(b, childOpts{pages: pages})
			src := make([]byte, pages*PageSize)
			for p := range pages {
				pattern(p, 2, src[p*PageSize:(p+1)*PageSize])
			}
			u, err := Attach(c.pid(), destFeatures)
			if err != nil {
				b.Fatal(err)
			}
			defer u.Close()
			r := Range{Start: c.addr, Len: pages * PageSize}
			if _, err := u.Register(r, ModeMissing); err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				done <- u.Serve(ctx, copyFrom(u, c.addr, src), ServeConfig{Workers: workers}, nil)
			}()
			var reads, ns, p50, p99 float64
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				if err := ramfile.PunchHole(c.ram, 0, pages*PageSize); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				got := c.do("hammer %d %d 2 0", workers, pages/workers)
				f := parseKV(got)
				if !strings.HasPrefix(got, "ok") || f["bad"] != 0 {
					b.Fatalf("hammer: %s", got)
				}
				reads += f["reads"]
				ns += f["ns"]
				p50 += f["p50"]
				p99 += f["p99"]
			}
			cancel()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			n := float64(b.N)
			b.ReportMetric(reads/(ns/1e9), "faults/s")
			b.ReportMetric(p50/n/1e3, "p50_µs")
			b.ReportMetric(p99/n/1e3, "p99_µs")
		})
	}
}

func parseKV(s string) map[string]float64 {
	out := map[string]float64{}
	for _, f := range strings.Fields(s) {
		if k, v, ok := strings.Cut(f, "="); ok {
			x, _ := strconv.ParseFloat(v, 64)
			out[k] = x
		}
	}
	return out
}

// BenchmarkCopy: bulk placement of 256 MiB into holes of a shm file with
// UFFDIO_COPY in chunks of 64 KiB to 2 MiB, against memcpy into the same
// (hole-punched) file in the same run. Reports both rates and their ratio.
func BenchmarkCopy(b *testing.B) {
	const size = 256 << 20
	f, mem := selfRAM(b, size/PageSize)
	src := make([]byte, size)
	for i := 0; i < size; i += PageSize {
		pattern(i/PageSize, 1, src[i:i+PageSize])
	}
	base := addrOf(mem)
	for _, chunk := range []int{64 << 10, 256 << 10, 1 << 20, 2 << 20} {
		b.Run(fmt.Sprintf("chunk=%dKiB", chunk>>10), func(b *testing.B) {
			u, err := Open(FeatureMissingShmem)
			if err != nil {
				b.Fatal(err)
			}
			defer u.Close()
			r := Range{Start: base, Len: size}
			if _, err := u.Register(r, ModeMissing); err != nil {
				b.Fatal(err)
			}
			defer u.Unregister(r)
			var tCopy, tMemcpy time.Duration
			b.SetBytes(size)
			for range b.N {
				if err := ramfile.PunchHole(f, 0, size); err != nil {
					b.Fatal(err)
				}
				t0 := time.Now()
				for off := 0; off < size; off += chunk {
					if _, err := u.Copy(base+uintptr(off), src[off:off+chunk], 0); err != nil {
						b.Fatal(err)
					}
				}
				tCopy += time.Since(t0)
				if err := ramfile.PunchHole(f, 0, size); err != nil {
					b.Fatal(err)
				}
				// Baseline: memcpy into the same holes. Touching holes of a
				// registered range would fault, so unregister around it.
				if err := u.Unregister(r); err != nil {
					b.Fatal(err)
				}
				t0 = time.Now()
				for off := 0; off < size; off += chunk {
					copy(mem[off:off+chunk], src[off:off+chunk])
				}
				tMemcpy += time.Since(t0)
				if _, err := u.Register(r, ModeMissing); err != nil {
					b.Fatal(err)
				}
			}
			gbs := func(d time.Duration) float64 { return float64(size) * float64(b.N) / d.Seconds() / 1e9 }
			b.ReportMetric(gbs(tCopy), "copy_GB/s")
			b.ReportMetric(gbs(tMemcpy), "memcpy_GB/s")
			b.ReportMetric(tMemcpy.Seconds()/tCopy.Seconds(), "copy/memcpy")
		})
	}
}

// BenchmarkPagemapScan: one Collect over 1 GiB with 0, 1, 10 and 100 % of
// its pages written since the last one. Reports ms per GiB scanned.
func BenchmarkPagemapScan(b *testing.B) {
	const size = 1 << 30
	const pages = size / PageSize
	_, mem := selfRAM(b, pages)
	for i := 0; i < size; i += PageSize {
		mem[i] = 1 // populate
	}
	u, err := Open(DirtyFeatures)
	if err != nil {
		b.Fatal(err)
	}
	defer u.Close()
	r := Range{Start: addrOf(mem), Len: size}
	if _, err := u.Register(r, ModeWP); err != nil {
		b.Fatal(err)
	}
	tr, err := u.TrackDirty(r)
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	var buf []Range
	for _, pct := range []int{0, 1, 10, 100} {
		b.Run(fmt.Sprintf("written=%d%%", pct), func(b *testing.B) {
			var scan time.Duration
			for range b.N {
				if _, err := tr.Collect(buf[:0]); err != nil { // start clean
					b.Fatal(err)
				}
				want := pages * pct / 100
				if pct == 100 {
					for p := range pages {
						mem[p*PageSize]++
					}
				} else {
					for range want {
						mem[rng.IntN(pages)*PageSize]++
					}
				}
				t0 := time.Now()
				buf, err = tr.Collect(buf[:0])
				scan += time.Since(t0)
				if err != nil {
					b.Fatal(err)
				}
				if want > 0 && len(buf) == 0 {
					b.Fatal("scan found no written page")
				}
			}
			b.ReportMetric(float64(scan.Microseconds())/1e3/float64(b.N), "ms/GiB")
		})
	}
}

// BenchmarkAttach: Attach (inject, pidfd_getfd, close in target, detach,
// handshake) to a process blocked in read(2).
func BenchmarkAttach(b *testing.B) {
	c := startChild(b, childOpts{})
	c.do("ping")
	b.ResetTimer()
	for range b.N {
		u, err := Attach(c.pid(), destFeatures)
		if err != nil {
			b.Fatal(err)
		}
		u.Close()
	}
	b.StopTimer()
	if got := c.do("ping"); got != "pong eintr=0" {
		b.Fatalf("child after %d attaches: %q", b.N, got)
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/attach")
}
