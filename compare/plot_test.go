package compare

import (
	"encoding/xml"
	"errors"
	"image/png"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dmig/dmig/internal/report"
)

// realisticResult is two rounds of all five modes under a ~450 tps
// workload, 10 s warmup and cooldown, the throughput dipping during each
// migration by the mode's character; the first qemu-postcopy fails early.
func realisticResult() *Result {
	rng := rand.New(rand.NewPCG(1, 2))
	type mode struct {
		name              string
		totalS, downMS    float64
		mb                float64
		data, zero, store uint64
		dip               float64 // tps multiplier during the migration
	}
	modes := []mode{
		{"hybrid", 3.1, 38, 410, 60000, 700000, 250000, 0.9},
		{"precopy", 7.8, 45, 2050, 500000, 510000, 0, 0.8},
		{"postcopy", 4.2, 12, 2100, 300000, 510000, 0, 0.55},
		{"qemu-precopy", 18.5, 310, 2600, 630000, 380000, 0, 0.7},
		{"qemu-postcopy", 9.4, 25, 2150, 520000, 490000, 0, 0.4},
	}
	r := &Result{}
	t := 0.0
	type window struct{ start, end, dip float64 }
	var windows []window
	for round := 1; round <= 2; round++ {
		for _, m := range modes {
			t += 10
			jit := 1 + 0.1*(rng.Float64()-0.5)
			mig := Migration{Mode: m.name, Round: round, StartS: t, Check: "same", TPSBefore: 450 + rng.Float64()*10}
			if round == 1 && m.name == "qemu-postcopy" {
				mig.EndS = t + 0.3
				mig.Error = "qemu: migrate-start-postcopy: postcopy-ram not enabled on the destination"
			} else {
				mig.EndS = t + m.totalS*jit
				mig.Report = completedReport(m.totalS*jit*1e3, m.downMS*jit, uint64(m.mb*jit*1e6), m.data, m.zero, m.store, 0)
				mig.TPSDuring = 450 * m.dip
				mig.TPSAfter = 445 + rng.Float64()*10
				windows = append(windows, window{mig.StartS, mig.EndS, m.dip})
			}
			t = mig.EndS + 10
			r.Migrations = append(r.Migrations, mig)
		}
	}
	for s := 1.0; s <= math.Ceil(t); s++ {
		tps := 450 + 20*(rng.Float64()-0.5)
		for _, w := range windows {
			if s > w.start && s <= w.end+1 {
				tps *= w.dip
			}
		}
		r.Samples = append(r.Samples, Sample{T: s, TPS: tps})
	}
	r.Samples[70].ErrPS = 2
	return r
}

func TestPlotDataIsSummarize(t *testing.T) {
	for name, r := range map[string]*Result{"test": testResult(), "realistic": realisticResult()} {
		d := plotData(r)
		sums := Summarize(r)
		if len(d.modes) != len(sums) || len(d.total) != len(sums) || len(d.downtime) != len(sums) || len(d.network) != len(sums) {
			t.Fatalf("%s: %d modes, bars %d/%d/%d, want %d", name, len(d.modes), len(d.total), len(d.downtime), len(d.network), len(sums))
		}
		for i, s := range sums {
			if d.modes[i] != s.Mode || d.total[i] != s.TotalS || d.downtime[i] != s.DowntimeMS || d.network[i] != s.NetworkMB {
				t.Errorf("%s bar %d: %s %v s %v ms %v MB, want %s %v %v %v", name, i, d.modes[i], d.total[i], d.downtime[i],
					d.network[i], s.Mode, s.TotalS, s.DowntimeMS, s.NetworkMB)
			}
		}
		if len(d.spans) != len(r.Migrations) {
			t.Fatalf("%s: %d spans for %d migrations", name, len(d.spans), len(r.Migrations))
		}
		for i, sp := range d.spans {
			m := r.Migrations[i]
			if d.modes[sp.mode] != m.Mode || sp.start != m.StartS || sp.end != m.EndS {
				t.Errorf("%s span %d: %s %v–%v, want %s %v–%v", name, i, d.modes[sp.mode], sp.start, sp.end, m.Mode, m.StartS, m.EndS)
			}
		}
	}
}

func TestWritePlotPNG(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cmp.png")
	// DMIG_SAMPLE_PLOT keeps a copy to look at.
	if p := os.Getenv("DMIG_SAMPLE_PLOT"); p != "" {
		path = p
	}
	if err := WritePlot(path, realisticResult()); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	// 12×9 inches at vgimg's 96 dpi.
	if b := img.Bounds(); b.Dx() != 12*96 || b.Dy() != 9*96 {
		t.Fatalf("image is %v, want 1152×864", b)
	}
	// Something was drawn: not one flat colour.
	first, differ := img.At(0, 0), 0
	for y := 0; y < img.Bounds().Dy(); y += 7 {
		for x := 0; x < img.Bounds().Dx(); x += 7 {
			if img.At(x, y) != first {
				differ++
			}
		}
	}
	if differ < 1000 {
		t.Errorf("only %d sampled pixels differ from the background", differ)
	}
}

func TestWritePlotSVG(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cmp.SVG")
	r := testResult()
	if err := WritePlot(path, r); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var text []string
	dec := xml.NewDecoder(f)
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("parse svg: %v", err)
		}
		if cd, ok := tok.(xml.CharData); ok {
			text = append(text, strings.TrimSpace(string(cd)))
		}
	}
	for _, m := range r.Migrations {
		if !slices.Contains(text, m.Mode) {
			t.Errorf("svg has no text %q", m.Mode)
		}
	}
}

func TestWritePlotSparse(t *testing.T) {
	// No workload, every migration failed, or nothing at all: still a
	// picture, no error.
	for name, r := range map[string]*Result{
		"failed": {Migrations: []Migration{{Mode: "hybrid", Round: 1, StartS: 1, EndS: 2, Error: "x"},
			{Mode: "precopy", Round: 1, StartS: 3, EndS: 4, Report: &report.Report{Outcome: report.Aborted}}}},
		"empty": {},
	} {
		path := filepath.Join(t.TempDir(), name+".png")
		if err := WritePlot(path, r); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		_, err = png.DecodeConfig(f)
		f.Close()
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestWritePlotFormat(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"cmp.pdf", "cmp", "cmp.png.txt"} {
		path := filepath.Join(dir, name)
		if err := WritePlot(path, testResult()); !errors.Is(err, ErrPlotFormat) {
			t.Errorf("%s: %v, want ErrPlotFormat", name, err)
		}
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: written anyway (%v)", name, err)
		}
	}
}
