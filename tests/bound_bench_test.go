package tests

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dmig/dmig/internal/report"
)

// A migration's bound is what its bytes cost at the least: the network
// bytes at the link's rate or the storage bytes at the restore ceiling,
// whichever takes longer (they overlap), plus the downtime. A benchmark
// prints it next to each mode's total, measured in the same run.
type migrationBound struct {
	linkRate float64 // bytes/s; 0: unknown (loopback), no network term
	ceiling  float64 // bytes/s the plain copy a restore cannot beat reached
}

// ms is r's bound in milliseconds.
func (m migrationBound) ms(r *report.Report) float64 {
	var net, st float64
	if m.linkRate > 0 {
		net = float64(r.BytesSent) / m.linkRate
	}
	if m.ceiling > 0 {
		st = float64(r.Storage.BytesRead) / m.ceiling
	}
	return max(net, st)*1e3 + r.DowntimeMS
}

// tcRate is a tc rate ("1gbit", "100mbit", "500kbit") in bytes/s, 0 if it
// is none or not one.
func tcRate(s string) float64 {
	for _, u := range []struct {
		suffix string
		bits   float64
	}{{"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}} {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				return f * u.bits / 8
			}
		}
	}
	return 0
}

// copyCeiling measures the restore's ceiling on this host now: the plain
// copy of pages pages of dataFile (in the page cache, as the restore reads
// it) read in 1 MiB chunks, each page written to a scattered offset of a
// fresh shmem file, one goroutine per Go processor, with no hash. A restore
// that reads, verifies and places each referenced page cannot beat it.
func copyCeiling(b *testing.B, dataFile string, pages int64) float64 {
	b.Helper()
	const chunk = 256 // pages per read
	disk, err := os.Open(dataFile)
	if err != nil {
		b.Fatal(err)
	}
	defer disk.Close()
	st, err := disk.Stat()
	if err != nil {
		b.Fatal(err)
	}
	pages = min(pages, st.Size()/4096) / chunk * chunk
	if pages == 0 {
		b.Fatalf("data file %s: too small for the copy ceiling", dataFile)
	}
	shm, err := os.CreateTemp("/dev/shm", "dmig-bench-ceiling-")
	if err != nil {
		b.Fatal(err)
	}
	os.Remove(shm.Name())
	defer shm.Close()
	if err := shm.Truncate(pages * 4096); err != nil {
		b.Fatal(err)
	}
	next := make(chan int64)
	errc := make(chan error, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	t0 := time.Now()
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, chunk*4096)
			for first := range next {
				if _, err := disk.ReadAt(buf, first*4096); err != nil {
					errc <- fmt.Errorf("read data file: %w", err)
					return
				}
				for k := range int64(chunk) {
					// A multiplicative scatter over the file's pages.
					to := ((first + k) * 40503) % pages
					if _, err := shm.WriteAt(buf[k*4096:(k+1)*4096], to*4096); err != nil {
						errc <- fmt.Errorf("write shmem: %w", err)
						return
					}
				}
			}
		}()
	}
	for first := int64(0); first < pages; first += chunk {
		next <- first
	}
	close(next)
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	return float64(pages*4096) / time.Since(t0).Seconds()
}

// dropPageCache writes path back and drops its pages from the page cache:
// the shared storage as a destination that never read it finds it. It
// fails where they stay (a tmpfs), since the cold figure would be a warm
// one.
func dropPageCache(b *testing.B, path string) {
	b.Helper()
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		b.Fatalf("write back %s: %v", path, err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		b.Fatalf("drop %s from the page cache: %v", path, err)
	}
	buf := make([]byte, 4096)
	if _, err := unix.Preadv2(int(f.Fd()), [][]byte{buf}, 0, unix.RWF_NOWAIT); err == nil {
		b.Fatalf("%s stays in the page cache after dropping it (a tmpfs?): put TMPDIR on a disk for a cold data file", path)
	}
}

// print writes r's bound next to its total to standard output (the
// engines' debug logs would truncate b.Log) and reports both as metrics.
func (m migrationBound) print(b *testing.B, what string, r *report.Report) {
	b.Helper()
	bound := m.ms(r)
	terms := fmt.Sprintf("network %.1f MB at ", float64(r.BytesSent)/1e6)
	if m.linkRate > 0 {
		terms += fmt.Sprintf("%.0f MB/s", m.linkRate/1e6)
	} else {
		terms += "an unknown rate"
	}
	if m.ceiling > 0 || r.Storage.BytesRead > 0 {
		terms += fmt.Sprintf(", storage %.1f MB at %.0f MB/s", float64(r.Storage.BytesRead)/1e6, m.ceiling/1e6)
	}
	fmt.Printf("%s: total %.0f ms, bound %.0f ms (%s, downtime %.1f ms): %.2f× its bound\n",
		what, r.TotalMS, bound, terms, r.DowntimeMS, r.TotalMS/bound)
	b.ReportMetric(bound, "bound_ms")
	b.ReportMetric(r.TotalMS/bound, "total/bound")
}

// linkRate is l's rate in bytes/s: the shaper's where rate names one, else
// what one TCP connection carries over it now (1 GiB, measured).
func linkRate(b *testing.B, l *link, rate string) float64 {
	b.Helper()
	if r := tcRate(rate); r > 0 {
		return r
	}
	const n = 1 << 30
	return n / l.rawTCP(b, n).Seconds()
}
