package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"ortalign/pipeline/report"
)

// reportOptions are the flags and arguments of `ortalign report`.
type reportOptions struct {
	*globalOptions
	dirs          []string
	out, title    string
	width, height int
	maxWarnings   int
}

// newReportCmd builds the command; runF replaces runReport in tests of flag parsing.
func newReportCmd(g *globalOptions, runF func(*reportOptions) error) *cobra.Command {
	o := &reportOptions{globalOptions: g}
	cmd := &cobra.Command{
		Use:   "report DIR [DIR...]",
		Short: "Plot the metrics.jsonl of one or several runs (PNG charts and an HTML page)",
		Long: `report reads DIR/metrics.jsonl of each training run and draws one chart per metric:
the training and evaluation ("eval_" keys) series of the metric on one chart, every run
overlaid and named in the legend, x axis = step. Charts come in this order: loss,
accuracies, margins, rewards (chosen, rejected), log-probs, KL and scores, learning rate,
gradient norm, then every other metric alphabetically.

Writes OUT/<metric>.png (with '/' and other unsafe characters of the name replaced by '_')
and OUT/index.html, a self-contained page with every chart embedded and a table of each
run's final values; prints the page's path. Blank or damaged lines (a run still writing
its last line) and values that are not numbers are reported as warnings with file and line
and left out; a run directory without metrics.jsonl is an error. A DIR may also be the
path of a metrics file itself.`,
		Example: `  ortalign report run1
  ortalign report run-beta0.1 run-beta0.5 --out compare`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.dirs = args
			if runF != nil {
				return runF(o)
			}
			return runReport(o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.out, "out", "", "`DIR` for the charts and index.html (default: report/ inside the first run directory)")
	f.StringVar(&o.title, "title", report.DefaultTitle, "title of the HTML page")
	f.IntVar(&o.width, "width", report.DefaultWidth, "chart width in pixels")
	f.IntVar(&o.height, "height", report.DefaultHeight, "chart height in pixels")
	f.IntVar(&o.maxWarnings, "max-warnings", 20, "warnings printed at most (index.html lists them all)")
	return cmd
}

func runReport(o *reportOptions, stdout, stderr io.Writer) error {
	if o.width <= 0 || o.height <= 0 {
		return fmt.Errorf("--width and --height must be positive, got %d×%d", o.width, o.height)
	}
	runs := make([]*report.Run, 0, len(o.dirs))
	for _, d := range o.dirs {
		r, err := report.Load(d)
		if err != nil {
			return err
		}
		runs = append(runs, r)
	}
	var warnings []report.Warning
	for _, r := range runs {
		warnings = append(warnings, r.Warnings...)
	}
	for i, w := range warnings {
		if i == o.maxWarnings {
			fmt.Fprintf(stderr, "warning: %d more\n", len(warnings)-i)
			break
		}
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	res, err := report.Render(runs, report.Options{OutDir: o.out, Width: o.width, Height: o.height, Title: o.title})
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "wrote %d charts to %s\n", len(res.Charts), res.OutDir)
	fmt.Fprintln(stdout, res.HTMLPath)
	return nil
}
