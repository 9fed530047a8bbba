package report

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"ortalign/internal/atomicfile"
)

// Defaults of Options.
const (
	DefaultWidth  = 800 // pixels
	DefaultHeight = 450 // pixels
	DefaultTitle  = "ortalign training report"
	// HTMLFile is the name of the page written next to the charts.
	HTMLFile = "index.html"
)

// dpi sets the size of text and lines relative to the image.
const dpi = 96

// Options control Render.
type Options struct {
	// OutDir receives the charts and the page; default: "report" inside the first
	// run's directory. It is created if needed.
	OutDir string
	// Width and Height of each chart in pixels; default DefaultWidth × DefaultHeight.
	Width, Height int
	// Title of the page; default DefaultTitle.
	Title string
}

// Chart is one rendered metric.
type Chart struct {
	// Metric is the metric's name without EvalPrefix ("loss", "rewards/accuracies").
	Metric string
	// File is the path of the PNG written.
	File string
}

// Result says what Render wrote.
type Result struct {
	// OutDir holds the files; HTMLPath is the page.
	OutDir, HTMLPath string
	// Charts are in report order (see SortMetrics).
	Charts []Chart
	// Warnings are those of every run, in run order.
	Warnings []Warning
}

// Render draws one chart per metric of runs (the training and evaluation series of
// every run on it, x axis = step) and writes them as <metric>.png, with file names
// made safe by replacing characters other than letters, digits, '.', '_' and '-'
// with '_', plus index.html: a self-contained page with every chart embedded as a
// data URI, a table of each run's final values and the runs' warnings. Each file is
// replaced atomically; PNGs of earlier reports that no longer match a metric are left
// alone. Runs without any metric are an error only when all of them are.
func Render(runs []*Run, o Options) (*Result, error) {
	if len(runs) == 0 {
		return nil, errors.New("report: no runs")
	}
	if o.OutDir == "" {
		o.OutDir = filepath.Join(runs[0].Dir, "report")
	}
	if o.Width <= 0 {
		o.Width = DefaultWidth
	}
	if o.Height <= 0 {
		o.Height = DefaultHeight
	}
	if o.Title == "" {
		o.Title = DefaultTitle
	}
	res := &Result{OutDir: o.OutDir, HTMLPath: filepath.Join(o.OutDir, HTMLFile)}
	for _, r := range runs {
		res.Warnings = append(res.Warnings, r.Warnings...)
	}
	names := metricNames(runs)
	if len(names) == 0 {
		paths := make([]string, len(runs))
		for i, r := range runs {
			paths[i] = r.Path
		}
		return nil, fmt.Errorf("report: no metric to plot in %s", strings.Join(paths, ", "))
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	page := pageData{Title: o.Title, Runs: runs, Width: o.Width, Height: o.Height, Warnings: res.Warnings}
	for i, base := range fileBases(names) {
		png, err := drawChart(names[i], runs, o.Width, o.Height)
		if err != nil {
			return nil, fmt.Errorf("report: chart %q: %w", names[i], err)
		}
		file := filepath.Join(o.OutDir, base+".png")
		if err := atomicfile.WriteFile(file, func(w io.Writer) error { _, err := w.Write(png); return err }); err != nil {
			return nil, fmt.Errorf("report: %w", err)
		}
		res.Charts = append(res.Charts, Chart{Metric: names[i], File: file})
		page.Charts = append(page.Charts, pageChart{
			Metric: names[i], Anchor: base, File: base + ".png",
			Data: template.URL("data:image/png;base64," + base64.StdEncoding.EncodeToString(png)),
		})
	}
	page.Table = finalTable(runs, names)
	if err := atomicfile.WriteFile(res.HTMLPath, func(w io.Writer) error { return pageTemplate.Execute(w, page) }); err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	return res, nil
}

// drawChart renders the chart of one metric as PNG bytes.
func drawChart(metric string, runs []*Run, width, height int) ([]byte, error) {
	p := plot.New()
	p.Title.Text = metric
	p.X.Label.Text = "step"
	p.Add(plotter.NewGrid())
	p.Title.Padding = vg.Points(6)
	p.Legend.Top = !endsHigh(metric, runs)
	p.Legend.XOffs, p.Legend.YOffs = -vg.Points(8), vg.Points(-4)
	if !p.Legend.Top {
		p.Legend.YOffs = vg.Points(4)
	}
	lo, hi := math.Inf(1), math.Inf(-1)
	for i, r := range runs {
		col := plotutil.Color(i)
		dashes := plotutil.Dashes(i / len(plotutil.DefaultColors))
		if pts := r.Train[metric]; len(pts) > 0 {
			lo, hi = extent(pts, lo, hi)
			xy := xys(pts)
			line, err := plotter.NewLine(xy)
			if err != nil {
				return nil, err
			}
			line.Color, line.Dashes, line.Width = col, dashes, vg.Points(1.5)
			p.Add(line)
			if len(pts) == 1 { // a line of one point draws nothing
				sc, err := plotter.NewScatter(xy)
				if err != nil {
					return nil, err
				}
				sc.Color, sc.Shape = col, draw.CircleGlyph{}
				p.Add(sc)
			}
			p.Legend.Add(r.Name, line)
		}
		if pts := r.Eval[metric]; len(pts) > 0 {
			lo, hi = extent(pts, lo, hi)
			line, sc, err := plotter.NewLinePoints(xys(pts))
			if err != nil {
				return nil, err
			}
			line.Color, line.Width = col, vg.Points(1.5)
			line.Dashes = []vg.Length{vg.Points(6), vg.Points(3)}
			sc.Color, sc.Shape, sc.Radius = col, draw.BoxGlyph{}, vg.Points(3)
			p.Add(line, sc)
			p.Legend.Add(r.Name+" (eval)", line, sc)
		}
	}
	if lo == hi {
		// plot widens a flat range by ±1, which flattens a constant learning rate of
		// 5e-7 onto 0; widen it by 10% of the value instead.
		d := math.Abs(lo) / 10
		if d == 0 {
			d = 1
		}
		p.Y.Min, p.Y.Max = lo-d, hi+d
	}
	w := vg.Length(width) * vg.Inch / dpi
	h := vg.Length(height) * vg.Inch / dpi
	c := vgimg.NewWith(vgimg.UseWH(w, h), vgimg.UseDPI(dpi), vgimg.UseBackgroundColor(colorWhite))
	pad := vg.Points(8)
	p.Draw(draw.Crop(draw.New(c), pad, -pad, pad, -pad))
	var buf bytes.Buffer
	if _, err := (vgimg.PngCanvas{Canvas: c}).WriteTo(&buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// extent widens [lo, hi] to the values of pts.
func extent(pts []Point, lo, hi float64) (float64, float64) {
	for _, p := range pts {
		lo, hi = math.Min(lo, p.Value), math.Max(hi, p.Value)
	}
	return lo, hi
}

// endsHigh says whether the metric's series end in the upper part of their range
// (accuracies, rewards), where a legend in the top right corner would hide them.
func endsHigh(metric string, runs []*Run) bool {
	lo, hi := math.Inf(1), math.Inf(-1)
	var ends []float64
	for _, r := range runs {
		for _, pts := range [][]Point{r.Train[metric], r.Eval[metric]} {
			if len(pts) == 0 {
				continue
			}
			lo, hi = extent(pts, lo, hi)
			// the last fifth of the series, where the legend sits
			for _, p := range pts[len(pts)*4/5:] {
				ends = append(ends, p.Value)
			}
		}
	}
	if len(ends) == 0 || lo == hi {
		return false
	}
	mean := 0.0
	for _, v := range ends {
		mean += v
	}
	return mean/float64(len(ends)) > (lo+hi)/2
}

func xys(pts []Point) plotter.XYs {
	xy := make(plotter.XYs, len(pts))
	for i, p := range pts {
		xy[i].X, xy[i].Y = p.Step, p.Value
	}
	return xy
}

// finalTable is the page's table of final values: step, epoch, each metric's training
// and evaluation rows, then the runs' totals (train_runtime and the rates on it), one
// column per run.
func finalTable(runs []*Run, names []string) [][]string {
	const none = "—"
	row := func(label string, f func(r *Run) (float64, bool)) []string {
		cells := []string{label}
		some := false
		for _, r := range runs {
			v, ok := f(r)
			if !ok {
				cells = append(cells, none)
				continue
			}
			some = true
			cells = append(cells, strconv.FormatFloat(v, 'g', 6, 64))
		}
		if !some {
			return nil
		}
		return cells
	}
	var rows [][]string
	add := func(cells []string) {
		if cells != nil {
			rows = append(rows, cells)
		}
	}
	add(row("step", func(r *Run) (float64, bool) { return r.LastStep, !math.IsInf(r.LastStep, 0) }))
	add(row("epoch", func(r *Run) (float64, bool) { return r.LastEpoch, !math.IsNaN(r.LastEpoch) }))
	for _, m := range names {
		add(row(m, func(r *Run) (float64, bool) { return r.Final(m, false) }))
		add(row(EvalPrefix+m, func(r *Run) (float64, bool) { return r.Final(m, true) }))
	}
	for _, k := range totalNames(runs) {
		add(row(k, func(r *Run) (float64, bool) { v, ok := r.Totals[k]; return v, ok }))
	}
	return rows
}

// totalNames are the names of the runs' totals: Hugging Face's order, then the others
// alphabetically.
func totalNames(runs []*Run) []string {
	hf := []string{RuntimeKey, "train_samples_per_second", "train_steps_per_second"}
	var names, other []string
	for _, k := range hf {
		for _, r := range runs {
			if _, ok := r.Totals[k]; ok {
				names = append(names, k)
				break
			}
		}
	}
	seen := map[string]bool{}
	for _, r := range runs {
		for k := range r.Totals {
			if !seen[k] && !slices.Contains(hf, k) {
				seen[k] = true
				other = append(other, k)
			}
		}
	}
	sort.Strings(other)
	return append(names, other...)
}
