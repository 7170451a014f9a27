package compare

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// plotFigures is what WritePlot draws. The bars are Summarize's means, so
// the picture and the table cannot disagree.
type plotFigures struct {
	modes                    []string
	total, downtime, network []float64 // s, ms, MB per mode
	completed                []int     // migrations averaged per mode
	samples                  []Sample
	spans                    []span
	tpsMax, runEnd           float64
}

// span is one migration on the timeline; mode indexes plotFigures.modes.
type span struct {
	mode       int
	label      string
	start, end float64
}

func plotData(r *Result) plotFigures {
	var d plotFigures
	idx := map[string]int{}
	for i, s := range Summarize(r) {
		idx[s.Mode] = i
		d.modes = append(d.modes, s.Mode)
		d.total = append(d.total, s.TotalS)
		d.downtime = append(d.downtime, s.DowntimeMS)
		d.network = append(d.network, s.NetworkMB)
		d.completed = append(d.completed, s.N)
	}
	d.samples = r.Samples
	for _, s := range r.Samples {
		d.tpsMax = max(d.tpsMax, s.TPS)
		d.runEnd = max(d.runEnd, s.T)
	}
	for _, m := range r.Migrations {
		label := fmt.Sprintf("%s #%d", m.Mode, m.Round)
		if !completed(&m) {
			label += " failed"
		}
		d.spans = append(d.spans, span{mode: idx[m.Mode], label: label, start: m.StartS, end: m.EndS})
		d.runEnd = max(d.runEnd, m.EndS)
	}
	return d
}

// WritePlot draws r into path, a .png or .svg by its extension: bars of
// each mode's mean total time, downtime and network bytes over the
// workload's throughput across the run, with each migration's span shaded
// in its mode's colour.
func WritePlot(path string, r *Result) error {
	format := strings.ToLower(strings.TrimPrefix(filepath.Ext(path), "."))
	if format != "png" && format != "svg" {
		return fmt.Errorf("%w: %q (want .png or .svg)", ErrPlotFormat, path)
	}
	d := plotData(r)
	var bars []*plot.Plot
	for _, b := range []struct {
		title, unit, format string
		vals                []float64
	}{
		{"total time (mean)", "s", "%.2f", d.total},
		{"downtime (mean)", "ms", "%.1f", d.downtime},
		{"network (mean)", "MB", "%.0f", d.network},
	} {
		p, err := barPlot(b.title, b.unit, d.modes, b.vals, d.completed, b.format)
		if err != nil {
			return fmt.Errorf("draw %s: %w", b.title, err)
		}
		bars = append(bars, p)
	}
	tps, err := timeline(d)
	if err != nil {
		return fmt.Errorf("draw the workload timeline: %w", err)
	}

	c, err := draw.NewFormattedCanvas(12*vg.Inch, 9*vg.Inch, format)
	if err != nil {
		return fmt.Errorf("make a %s canvas: %w", format, err)
	}
	dc := draw.New(c)
	// The bars share the top 45%; the timeline spans the width below.
	h := dc.Max.Y - dc.Min.Y
	top := draw.Crop(dc, 0, 0, h*0.55, 0)
	tiles := draw.Tiles{Rows: 1, Cols: 3, PadX: vg.Inch / 3, PadTop: vg.Inch / 8, PadBottom: vg.Inch / 8,
		PadLeft: vg.Inch / 8, PadRight: vg.Inch / 8}
	for i, cv := range plot.Align([][]*plot.Plot{bars}, tiles, top)[0] {
		bars[i].Draw(cv)
	}
	bottom := draw.Crop(dc, vg.Inch/8, -vg.Inch/8, vg.Inch/8, -h*0.45-vg.Inch/8)
	tps.Draw(bottom)

	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create plot: %w", err)
	}
	if _, err := c.WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("write plot %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write plot %s: %w", path, err)
	}
	return nil
}

func modeColor(i int) color.Color { return plotutil.Color(i) }

// roundTicks labels four to eight round values between lo and hi, where
// plot.DefaultTicks labels two, with needless decimals.
func roundTicks(lo, hi float64) []plot.Tick {
	if !(hi > lo) {
		return nil
	}
	raw := (hi - lo) / 8
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := 10 * mag
	for _, m := range []float64{1, 2, 5} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	prec := max(0, int(-math.Floor(math.Log10(step))))
	var ts []plot.Tick
	for i := math.Ceil(lo / step); i*step <= hi; i++ {
		ts = append(ts, plot.Tick{Value: i * step, Label: strconv.FormatFloat(i*step, 'f', prec, 64)})
	}
	return ts
}

// barPlot is one bar per mode, its value written above it; a mode with no
// completed migration has no bar and says so.
func barPlot(title, unit string, modes []string, vals []float64, n []int, format string) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = unit
	p.Y.Min = 0
	p.Y.Tick.Marker = plot.TickerFunc(roundTicks)
	top := 0.0
	for _, v := range vals {
		top = max(top, v)
	}
	if top == 0 {
		top = 1
	}
	// Headroom for the value labels.
	p.Y.Max = top * 1.15
	var xys plotter.XYs
	var labels []string
	for i, v := range vals {
		b, err := plotter.NewBarChart(plotter.Values{v}, vg.Points(28))
		if err != nil {
			return nil, fmt.Errorf("bar of %s: %w", modes[i], err)
		}
		b.XMin = float64(i)
		b.Color = modeColor(i)
		b.LineStyle.Width = 0
		p.Add(b)
		xys = append(xys, plotter.XY{X: float64(i), Y: v})
		if n[i] == 0 {
			labels = append(labels, "failed")
		} else {
			labels = append(labels, fmt.Sprintf(format, v))
		}
	}
	l, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: labels})
	if err != nil {
		return nil, fmt.Errorf("label the bars: %w", err)
	}
	for i := range l.TextStyle {
		l.TextStyle[i].XAlign = draw.XCenter
		l.TextStyle[i].Font.Size = vg.Points(9)
	}
	l.Offset = vg.Point{Y: vg.Points(2)}
	p.Add(l)
	if len(modes) == 0 {
		// NominalX of nothing panics.
		p.Title.Text += ": no migrations"
		return p, nil
	}
	p.NominalX(modes...)
	p.X.Tick.Label.Rotation = math.Pi / 6
	p.X.Tick.Label.XAlign = draw.XRight
	p.X.Tick.Label.YAlign = draw.YTop
	p.Add(plotter.NewGrid())
	return p, nil
}

// timeline is the workload's throughput over the run, each migration a
// shaded span labelled at its start.
func timeline(d plotFigures) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "workload throughput; shaded: migrations"
	p.X.Label.Text = "s since start"
	p.Y.Label.Text = "transactions/s"
	p.X.Tick.Marker = plot.TickerFunc(roundTicks)
	p.Y.Tick.Marker = plot.TickerFunc(roundTicks)
	p.X.Min = 0
	// Room right of the last span for its label.
	p.X.Max = max(d.runEnd, 1) * 1.02
	p.Y.Min = 0
	top := d.tpsMax
	if top == 0 {
		top = 1
		p.Title.Text = "no workload samples; shaded: migrations"
		p.HideY()
		p.Y.Label.Text = ""
	}
	// Headroom for the migrations' labels, above the throughput.
	p.Y.Max = top * 1.5
	p.Add(plotter.NewGrid())

	var marks plotter.XYs
	var names []string
	for _, s := range d.spans {
		c := color.NRGBAModel.Convert(modeColor(s.mode)).(color.NRGBA)
		band := c
		band.A = 70
		poly, err := plotter.NewPolygon(plotter.XYs{{X: s.start, Y: 0}, {X: s.end, Y: 0}, {X: s.end, Y: p.Y.Max}, {X: s.start, Y: p.Y.Max}})
		if err != nil {
			return nil, fmt.Errorf("shade %s: %w", s.label, err)
		}
		poly.Color = band
		poly.LineStyle.Width = 0
		// A migration of a second is a hairline in an hour's run: the
		// edge line keeps it visible.
		edge, err := plotter.NewLine(plotter.XYs{{X: s.start, Y: 0}, {X: s.start, Y: p.Y.Max}})
		if err != nil {
			return nil, fmt.Errorf("mark %s: %w", s.label, err)
		}
		edge.Color = c
		p.Add(poly, edge)
		marks = append(marks, plotter.XY{X: s.start, Y: p.Y.Max * 0.99})
		names = append(names, s.label)
	}
	if len(d.samples) > 0 {
		xys := make(plotter.XYs, len(d.samples))
		var errs plotter.XYs
		for i, s := range d.samples {
			xys[i] = plotter.XY{X: s.T, Y: s.TPS}
			if s.ErrPS > 0 {
				errs = append(errs, xys[i])
			}
		}
		line, err := plotter.NewLine(xys)
		if err != nil {
			return nil, fmt.Errorf("draw throughput: %w", err)
		}
		line.Width = vg.Points(1.2)
		p.Add(line)
		if len(errs) > 0 {
			sc, err := plotter.NewScatter(errs)
			if err != nil {
				return nil, fmt.Errorf("mark workload errors: %w", err)
			}
			sc.Shape = draw.CrossGlyph{}
			sc.Color = color.NRGBA{R: 200, A: 255}
			sc.Radius = vg.Points(4)
			p.Add(sc)
			// In the title: a legend in a corner covers a migration's label.
			p.Title.Text += "; ×: intervals with workload errors"
		}
	}
	if len(marks) > 0 {
		l, err := plotter.NewLabels(plotter.XYLabels{XYs: marks, Labels: names})
		if err != nil {
			return nil, fmt.Errorf("label migrations: %w", err)
		}
		// Upright text hanging from the top, right of each span's start:
		// spans a few seconds apart do not overlap.
		for i := range l.TextStyle {
			l.TextStyle[i].Rotation = math.Pi / 2
			l.TextStyle[i].XAlign = draw.XRight
			l.TextStyle[i].YAlign = draw.YTop
			l.TextStyle[i].Font.Size = vg.Points(8)
		}
		l.Offset = vg.Point{X: vg.Points(2)}
		p.Add(l)
	}
	return p, nil
}
