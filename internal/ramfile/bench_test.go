package ramfile

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkFirstWrite: the rate at which this host takes fresh shmem
// pages, the cost every destination pays once per page it places (dmig's
// and QEMU's alike). A 6 GiB memfd is written through a shared mapping in
// 512 MiB steps, 1 MiB at a time; then all of it again, present. On a
// guest of a hypervisor that takes back free memory (free page
// reporting), the first steps reuse pages the host still backs and the
// later ones fault on the host: first_GB/s against rest_GB/s shows it.
// overwrite_GB/s is the copy itself.
func BenchmarkFirstWrite(b *testing.B) {
	for _, writers := range []int{1, 2} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) { benchFirstWrite(b, writers) })
	}
}

// benchFirstWrite runs BenchmarkFirstWrite with writers goroutines, each
// writing its share of every step.
func benchFirstWrite(b *testing.B, writers int) {
	const (
		size = 6 << 30
		step = 512 << 20
	)
	src := make([]byte, 1<<20)
	for i := range src {
		src[i] = byte(i*7 + 1)
	}
	var first, rest, over time.Duration
	for range b.N {
		fd, err := unix.MemfdCreate("dmig-bench-first-write", unix.MFD_CLOEXEC)
		if err != nil {
			b.Fatal(err)
		}
		if err := unix.Ftruncate(fd, size); err != nil {
			unix.Close(fd)
			b.Fatal(err)
		}
		mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		unix.Close(fd) // the mapping keeps the file
		if err != nil {
			b.Fatal(err)
		}
		write := func(from, to int) time.Duration {
			t0 := time.Now()
			var wg sync.WaitGroup
			share := (to - from) / writers
			for w := range writers {
				wg.Go(func() {
					for off := from + w*share; off < from+(w+1)*share; off += len(src) {
						copy(mem[off:], src)
					}
				})
			}
			wg.Wait()
			return time.Since(t0)
		}
		for s := 0; s < size; s += step {
			d := write(s, s+step)
			if s == 0 {
				first += d
			} else {
				rest += d
			}
		}
		over += write(0, size)
		if err := unix.Munmap(mem); err != nil {
			b.Fatal(fmt.Errorf("unmap the benchmark's memfd: %w", err))
		}
	}
	gbs := func(bytes int64, d time.Duration) float64 { return float64(bytes) * float64(b.N) / d.Seconds() / 1e9 }
	b.ReportMetric(gbs(step, first), "first_GB/s")
	b.ReportMetric(gbs(size-step, rest), "rest_GB/s")
	b.ReportMetric(gbs(size, over), "overwrite_GB/s")
}
