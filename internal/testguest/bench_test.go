package testguest

import (
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func BenchmarkFillPage(b *testing.B) {
	page := make([]byte, PageSize)
	b.SetBytes(PageSize)
	for i := 0; b.Loop(); i++ {
		fillPage(page, dataTag, uint64(i), uint32(i)+1)
	}
}

// BenchmarkWrite1GiB measures the data-page write path at full speed on a
// 1 GiB guest (pages/s is the figure; 20 k/s is what the engine tests use).
func BenchmarkWrite1GiB(b *testing.B) {
	dir := shmDir(b)
	ram := filepath.Join(dir, "ram")
	p := DefaultParams()
	if err := Create(ram, p); err != nil {
		b.Fatal(err)
	}
	g, err := Open(ram)
	if err != nil {
		b.Fatal(err)
	}
	defer g.Close()
	n := g.geo.dataPages
	b.ResetTimer()
	for i := int64(0); b.Loop(); i++ {
		g.writeData(i*7919%n, writeSteps)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pages/s")
}

// BenchmarkVerify1GiB verifies a 1 GiB guest whose pages are all written.
func BenchmarkVerify1GiB(b *testing.B) {
	dir := shmDir(b)
	ram := filepath.Join(dir, "ram")
	p := DefaultParams()
	p.Fill = 1
	if err := Create(ram, p); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(p.Size)
	for b.Loop() {
		r, err := Verify(ram)
		if err != nil || !r.OK() {
			b.Fatal(err, r.Mismatches)
		}
	}
}

// BenchmarkGuestRate1GiB runs a 1 GiB guest process at 20 k writes/s for 5 s
// and reports the write rate its stats measured.
func BenchmarkGuestRate1GiB(b *testing.B) {
	for b.Loop() {
		dir := shmDir(b)
		stats := filepath.Join(dir, "stats")
		c := startChild(b, Config{RAM: []string{filepath.Join(dir, "ram")}, Params: DefaultParams(), Run: RunOptions{StatsFile: stats}})
		time.Sleep(6 * time.Second)
		s1, err := ReadStats(stats)
		if err != nil {
			b.Fatal(err)
		}
		time.Sleep(5 * time.Second)
		s2, err := ReadStats(stats)
		if err != nil {
			b.Fatal(err)
		}
		c.cmd.Process.Signal(syscall.SIGTERM)
		err = <-c.done
		c.done <- err
		dt := s2.Time.Sub(s1.Time).Seconds()
		b.ReportMetric(float64(s2.Writes-s1.Writes)/dt, "writes/s")
		b.ReportMetric(float64(s2.Reads-s1.Reads)/dt, "reads/s")
	}
}
