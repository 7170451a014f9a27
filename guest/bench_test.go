package guest

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkScan scans a 256 MiB buffer pool, unthrottled, while sysbench
// oltp_read_write (2 threads, 4 x 100 k rows) runs against the server at
// the default flush settings, after 15 s of warm-up: first at 40
// transactions/s (what the same sysbench did in a TCG-emulated VM, see
// docs/testing.md), then as fast as it goes. Metrics: scan rate (GiB of pool per
// second), agent CPU seconds per GiB scanned, the fraction of InnoDB pages
// found clean, the fraction of clean pages' 4 KiB the layout names (the rest
// were changed after the last checkpoint, or not present), and the fraction
// of the pool the layout names.
//
//	go test -run '^$' -bench Scan -benchtime 5x ./guest
func BenchmarkScan(b *testing.B) {
	m := startMariaDB(b)
	loadData(b, m, 100000)
	m.settle(b) // start from a flushed pool, then back to the defaults
	m.exec(b, "SET GLOBAL innodb_max_dirty_pages_pct = DEFAULT")
	m.exec(b, "SET GLOBAL innodb_max_dirty_pages_pct_lwm = DEFAULT")
	for _, tps := range []int{40, 0} {
		name := "sysbench-unthrottled"
		if tps > 0 {
			name = fmt.Sprintf("sysbench-%dtps", tps)
		}
		b.Run(name, func(b *testing.B) { benchScan(b, m, tps) })
	}
}

func benchScan(b *testing.B, m *mariaDB, tps int) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sb := m.sysbench(ctx, "oltp_read_write", "--tables=4", "--table-size=100000", "--threads=2",
		"--time=0", "--rand-type=uniform", fmt.Sprintf("--rate=%d", tps), "run")
	if err := sb.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		cancel()
		sb.Wait()
	}()
	time.Sleep(15 * time.Second)

	a, err := NewAgent(Config{DSN: m.dsn})
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	var bytes, refs, clean, cleanPieces, pages uint64
	var wall, cpu time.Duration
	for b.Loop() {
		r, err := a.Scan(ctx)
		if err != nil {
			b.Fatal(err)
		}
		bytes += r.Stats.PoolBytes
		refs += r.Stats.Refs
		clean += r.Stats.Clean
		cleanPieces += r.Stats.Clean * uint64(r.Server.PageSize/pageSize4K)
		pages += r.Stats.Pages
		wall += r.Stats.Duration
		cpu += r.Stats.CPU
	}
	gib := float64(bytes) / (1 << 30)
	b.ReportMetric(gib/wall.Seconds(), "GiB/s")
	b.ReportMetric(cpu.Seconds()/gib, "CPU-s/GiB")
	b.ReportMetric(float64(clean)/float64(pages), "clean/pages")
	b.ReportMetric(float64(refs)/float64(cleanPieces), "named/clean")
	b.ReportMetric(float64(refs*pageSize4K)/float64(bytes), "named/pool")
}
