package bench

import (
	"fmt"
	"io"
	"os"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// chartWorkload is the selective LIST the chart follows: one object by
// label, the case pushdown is for.
const chartWorkload = "label-1"

// Chart titles, also what tests look for.
const (
	chartListTitle = "LIST labelSelector=id=7 (1 object): p50"
	chartRSSTitle  = "Peak RSS (server, plus etcd in the etcd mode)"
)

// WriteChart writes an SVG of two panels: the selective LIST's p50 against
// N for every mode on log–log axes, and the peak RSS against N.
func (r *Report) WriteChart(w io.Writer) error {
	list, err := r.chartPanel(chartListTitle, "p50, ms", true, func(res Result) float64 {
		l, _ := res.list(chartWorkload)
		return l.P50Ms
	})
	if err != nil {
		return err
	}
	rss, err := r.chartPanel(chartRSSTitle, "MiB", false, func(res Result) float64 {
		return float64(res.ServerPeakRSSBytes+res.EtcdPeakRSSBytes) / (1 << 20)
	})
	if err != nil {
		return err
	}
	const width, height = 26 * vg.Centimeter, 11 * vg.Centimeter
	canvas := vgsvg.New(width, height)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Centimeter, PadTop: vg.Millimeter * 3, PadBottom: vg.Millimeter * 3,
		PadLeft: vg.Millimeter * 3, PadRight: vg.Millimeter * 3}
	plots := [][]*plot.Plot{{list, rss}}
	canvases := plot.Align(plots, tiles, draw.New(canvas))
	list.Draw(canvases[0][0])
	rss.Draw(canvases[0][1])
	_, err = canvas.WriteTo(w)
	return err
}

// WriteChartFile writes the chart to path.
func (r *Report) WriteChartFile(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if err := r.WriteChart(f); err != nil {
		f.Close()
		return fmt.Errorf("chart %s: %w", path, err)
	}
	return f.Close()
}

// chartPanel plots value against N, a line per mode, leaving out values a
// log axis cannot show (a mode without the figure).
func (r *Report) chartPanel(title, yLabel string, logY bool, value func(Result) float64) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "N (custom resources)"
	p.Y.Label.Text = yLabel
	p.X.Scale, p.X.Tick.Marker = plot.LogScale{}, plot.LogTicks{Prec: -1}
	if logY {
		p.Y.Scale, p.Y.Tick.Marker = plot.LogScale{}, plot.LogTicks{Prec: -1}
	} else {
		p.Y.Min = 0
	}
	p.Legend.Top, p.Legend.Left = true, true
	p.Add(plotter.NewGrid())
	plotted := 0
	for i, mode := range r.modeNames() {
		var xys plotter.XYs
		for _, n := range r.Sizes {
			res, ok := r.result(mode, n)
			if v := value(res); ok && v > 0 {
				xys = append(xys, plotter.XY{X: float64(n), Y: v})
			}
		}
		if len(xys) == 0 {
			continue
		}
		line, points, err := plotter.NewLinePoints(xys)
		if err != nil {
			return nil, fmt.Errorf("%s, %s: %w", title, mode, err)
		}
		line.Color, points.Color = plotutil.Color(i), plotutil.Color(i)
		line.Dashes = plotutil.Dashes(i)
		points.Shape = plotutil.Shape(i)
		p.Add(line, points)
		p.Legend.Add(mode, line, points)
		plotted++
	}
	if plotted == 0 {
		// A run that ended before its first figures: the log axes still
		// need a positive range.
		p.Title.Text += " (no figures)"
		p.X.Min, p.X.Max = 10, 1000
		if len(r.Sizes) > 0 {
			p.X.Min, p.X.Max = float64(slices.Min(r.Sizes)), float64(slices.Max(r.Sizes))*10
		}
		p.Y.Min, p.Y.Max = 1, 10
	}
	return p, nil
}
