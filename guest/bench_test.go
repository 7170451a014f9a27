package guest

import (
	"context"
	"testing"
	"time"
)

// BenchmarkScan scans a 256 MiB buffer pool, unthrottled, while sysbench
// oltp_read_write runs against the server. Metrics: scan rate (GiB of pool
// per second), agent CPU seconds per GiB scanned, the fraction of InnoDB
// pages found clean, and the fraction of the pool the layout names.
//
//	go test -run '^$' -bench Scan -benchtime 5x ./guest
func BenchmarkScan(b *testing.B) {
	m := startMariaDB(b)
	loadData(b, m, 100000)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sb := m.sysbench(ctx, "oltp_read_write", "--tables=4", "--table-size=100000", "--threads=2",
		"--time=0", "--rand-type=uniform", "run")
	if err := sb.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		cancel()
		sb.Wait()
	}()
	time.Sleep(5 * time.Second)

	a, err := NewAgent(Config{DSN: m.dsn})
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	var bytes, refs, clean, pages uint64
	var wall, cpu time.Duration
	for b.Loop() {
		r, err := a.Scan(ctx)
		if err != nil {
			b.Fatal(err)
		}
		bytes += r.Stats.PoolBytes
		refs += r.Stats.Refs
		clean += r.Stats.Clean
		pages += r.Stats.Pages
		wall += r.Stats.Duration
		cpu += r.Stats.CPU
	}
	gib := float64(bytes) / (1 << 30)
	b.ReportMetric(gib/wall.Seconds(), "GiB/s")
	b.ReportMetric(cpu.Seconds()/gib, "CPU-s/GiB")
	b.ReportMetric(float64(clean)/float64(pages), "clean/pages")
	b.ReportMetric(float64(refs*pageSize4K)/float64(bytes), "named/pool")
}
