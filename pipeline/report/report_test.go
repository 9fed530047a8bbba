package report

import (
	"bytes"
	"fmt"
	"image/png"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// writeRun writes a synthetic DPO run: n training steps and an evaluation every 5.
func writeRun(t *testing.T, dir string, n int, scale float64, extra ...string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for s := 1; s <= n; s++ {
		loss := 0.69 * scale / float64(s)
		fmt.Fprintf(&b, `{"loss":%g,"rewards/chosen":%g,"rewards/rejected":%g,"rewards/accuracies":%g,"rewards/margins":%g,"logps/chosen":%g,"logps/rejected":%g,"grad_norm":%g,"learning_rate":5e-7,"epoch":%g,"step":%d}`+"\n",
			loss, 0.01*float64(s), -0.01*float64(s), 0.5+0.02*float64(s), 0.02*float64(s), -40.0+float64(s), -42.0-float64(s), 1.0/float64(s), float64(s)/float64(n), s)
		if s%5 == 0 {
			fmt.Fprintf(&b, `{"eval_loss":%g,"eval_rewards/accuracies":%g,"epoch":%g,"step":%d}`+"\n", loss*1.1, 0.6, float64(s)/float64(n), s)
		}
	}
	for _, l := range extra {
		b.WriteString(l + "\n")
	}
	if err := os.WriteFile(filepath.Join(dir, MetricsFile), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestRenderTwoRuns(t *testing.T) {
	tmp := t.TempDir()
	a, b := filepath.Join(tmp, "runA"), filepath.Join(tmp, "runB")
	writeRun(t, a, 20, 1)
	writeRun(t, b, 10, 2, `{"loss":0.1,"step":11`) // the last line cut short, as by a run still writing
	runs := make([]*Run, 2)
	for i, d := range []string{a, b} {
		r, err := Load(d)
		if err != nil {
			t.Fatal(err)
		}
		runs[i] = r
	}
	if len(runs[0].Warnings) != 0 {
		t.Errorf("runA warnings: %v", runs[0].Warnings)
	}
	if w := runs[1].Warnings; len(w) != 1 || w[0].Line != 13 || !strings.Contains(w[0].String(), filepath.Join(b, MetricsFile)+":13:") {
		t.Fatalf("runB warnings: %v, want one for line 13", w)
	}
	if got := runs[0].Eval["loss"]; len(got) != 4 || got[3].Step != 20 {
		t.Errorf("runA eval loss: %v", got)
	}
	if runs[1].LastStep != 10 || runs[1].LastEpoch != 1 {
		t.Errorf("runB last step %g epoch %g", runs[1].LastStep, runs[1].LastEpoch)
	}

	res, err := Render(runs, Options{Width: 640, Height: 360})
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(a, "report", HTMLFile); res.HTMLPath != want {
		t.Errorf("HTMLPath %s, want %s", res.HTMLPath, want)
	}
	var metrics []string
	for _, c := range res.Charts {
		metrics = append(metrics, c.Metric)
	}
	want := []string{"loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected",
		"logps/chosen", "logps/rejected", "learning_rate", "grad_norm"}
	if !reflect.DeepEqual(metrics, want) {
		t.Errorf("charts %v, want %v", metrics, want)
	}
	if len(res.Warnings) != 1 {
		t.Errorf("result warnings %v", res.Warnings)
	}
	page, err := os.ReadFile(res.HTMLPath)
	if err != nil {
		t.Fatal(err)
	}
	html := string(page)
	for _, c := range res.Charts {
		base := filepath.Base(c.File)
		if strings.ContainsAny(strings.TrimSuffix(base, ".png"), "/ ") {
			t.Errorf("unsafe file name %q", base)
		}
		f, err := os.Open(c.File)
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", c.File, err)
		}
		if sz := img.Bounds().Size(); sz.X != 640 || sz.Y != 360 {
			t.Errorf("%s is %v, want 640x360", c.File, sz)
		}
		if !strings.Contains(html, `href="`+base+`"`) || !strings.Contains(html, `alt="`+c.Metric+`"`) {
			t.Errorf("index.html does not reference %s", base)
		}
	}
	if _, err := os.Stat(filepath.Join(a, "report", "rewards_accuracies.png")); err != nil {
		t.Error(err)
	}
	if n := strings.Count(html, `src="data:image/png;base64,`); n != len(want) {
		t.Errorf("%d embedded images, want %d", n, len(want))
	}
	for _, s := range []string{"Final values", "<th>" + runs[0].Name + "</th>", "<th>" + runs[1].Name + "</th>",
		"<th>eval_loss</th><td>0.03795</td><td>0.1518</td>", "<th>step</th><td>20</td><td>10</td>", ":13: damaged JSON"} {
		if !strings.Contains(html, s) {
			t.Errorf("index.html lacks %q", s)
		}
	}
	// No temporary files are left behind.
	entries, _ := os.ReadDir(res.OutDir)
	if len(entries) != len(want)+1 {
		t.Errorf("%d files in %s, want %d", len(entries), res.OutDir, len(want)+1)
	}
}

func TestLoadWarnings(t *testing.T) {
	dir := t.TempDir()
	lines := []string{
		`{"loss":1,"step":1,"epoch":0.5}`,
		``,
		`{"loss":"high","step":2}`,
		`{"loss":NaN,"objective/kl":0.1,"step":3}`,
		`[1,2]`,
		`{"loss":0.5}`,
		`{"loss":null,"my/custom":true,"step":4}`,
		`{"loss":0.9,"step":2}`,
		`{"loss":0.4,"step":5}`,
	}
	if err := os.WriteFile(filepath.Join(dir, MetricsFile), []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, w := range r.Warnings {
		got = append(got, fmt.Sprintf("%d %s", w.Line, w.Msg))
	}
	want := []string{
		"2 blank line",
		`3 "loss" is "high", not a finite number; value skipped`,
		`4 "loss" is "NaN", not a finite number; value skipped`,
		"5 a JSON array, not an object; line skipped",
		`6 no numeric "step"; line skipped`,
		`7 "loss" is null, not a finite number; value skipped`,
		`7 "my/custom" is true, not a finite number; value skipped`,
		"8 step 2 comes after step 4 (lines of an earlier run?); a step logged twice is plotted with its later value",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if pts := r.Train["loss"]; !reflect.DeepEqual(pts, []Point{{1, 1}, {2, 0.9}, {5, 0.4}}) {
		t.Errorf("loss %v", pts)
	}
	if pts := r.Train["objective/kl"]; !reflect.DeepEqual(pts, []Point{{3, 0.1}}) {
		t.Errorf("objective/kl %v", pts)
	}
	// A run with single points and unknown keys still renders.
	res, err := Render([]*Run{r}, Options{OutDir: filepath.Join(dir, "out")})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Charts) != 2 || res.Charts[0].Metric != "loss" || res.Charts[1].Metric != "objective/kl" {
		t.Errorf("charts %v", res.Charts)
	}
}

func TestLoadMissing(t *testing.T) {
	dir := t.TempDir()
	_, err := Load(dir)
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, MetricsFile)) {
		t.Fatalf("err %v, want one naming %s", err, filepath.Join(dir, MetricsFile))
	}
}

func TestRenderNoMetrics(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, MetricsFile), []byte("\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Render([]*Run{r}, Options{}); err == nil || !strings.Contains(err.Error(), "no metric") {
		t.Fatalf("err %v", err)
	}
}

func TestSortMetrics(t *testing.T) {
	names := []string{"zzz", "completions/mean_length", "grad_norm", "learning_rate", "objective/scores", "objective/kl",
		"logps/rejected", "logps/chosen", "rewards/rejected", "rewards/chosen", "max_reward", "mean_reward", "min_reward",
		"margin", "rewards/margins", "accuracy", "mean_token_accuracy", "rewards/accuracies", "loss/value_avg", "loss",
		"policy/approxkl_avg", "num_tokens", "nll_loss", "val/clipfrac_avg"}
	SortMetrics(names)
	want := []string{"loss", "loss/value_avg", "nll_loss", "rewards/accuracies", "accuracy", "mean_token_accuracy",
		"rewards/margins", "margin", "rewards/chosen", "rewards/rejected", "min_reward", "mean_reward", "max_reward",
		"logps/chosen", "logps/rejected", "objective/kl", "objective/scores", "learning_rate", "grad_norm",
		"completions/mean_length", "num_tokens", "policy/approxkl_avg", "val/clipfrac_avg", "zzz"}
	if !reflect.DeepEqual(names, want) {
		t.Errorf("order\n%v\nwant\n%v", names, want)
	}
}

func TestFileBases(t *testing.T) {
	got := fileBases([]string{"rewards/chosen", "rewards_chosen", "Rewards_Chosen", ".hidden", "", "-x", "a b\u00e9"})
	want := []string{"rewards_chosen", "rewards_chosen-2", "Rewards_Chosen-3", "_.hidden", "_", "_-x", "a_b__"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestQuoteNonFinite(t *testing.T) {
	got, ok := quoteNonFinite([]byte(`{"a":NaN,"b":-Infinity,"NaN":"x NaN \"NaN","c":Infinity}`))
	if want := `{"a":"NaN","b":"-Infinity","NaN":"x NaN \"NaN","c":"Infinity"}`; !ok || !bytes.Equal(got, []byte(want)) {
		t.Errorf("got %s, want %s", got, want)
	}
}

// TestRenderStepTimesAndTotals: each step's seconds (time/step_s) get a chart, and the
// run's totals line — train_runtime and the rates on it, with no step — joins the table
// of final values without a warning; it is read as the last one when a resumed run
// wrote two.
func TestRenderStepTimesAndTotals(t *testing.T) {
	dir := t.TempDir()
	lines := []string{
		`{"loss":0.7,"time/step_s":0.52,"learning_rate":1e-3,"epoch":0.5,"step":1}`,
		`{"train_runtime":0.6,"train_samples_per_second":13.3,"train_steps_per_second":1.667,"epoch":0.5}`,
		`{"loss":0.6,"time/step_s":0.48,"learning_rate":1e-3,"epoch":1,"step":2}`,
		`{"train_runtime":1.25,"train_samples_per_second":12.8,"train_steps_per_second":1.6,"train_loss":0.65,"epoch":1}`,
		`{"train_loss":0.1}`,
	}
	if err := os.WriteFile(filepath.Join(dir, MetricsFile), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Warnings) != 1 || r.Warnings[0].Line != 5 || !strings.Contains(r.Warnings[0].Msg, `no numeric "step"`) {
		t.Errorf("warnings %v, want one for line 5 (a line with no step that is not the totals)", r.Warnings)
	}
	want := map[string]float64{"train_runtime": 1.25, "train_samples_per_second": 12.8, "train_steps_per_second": 1.6, "train_loss": 0.65}
	if !reflect.DeepEqual(r.Totals, want) || r.LastEpoch != 1 || r.LastStep != 2 {
		t.Errorf("totals %v, last epoch %g, step %g; want %v, 1, 2", r.Totals, r.LastEpoch, r.LastStep, want)
	}
	if pts := r.Train["time/step_s"]; !reflect.DeepEqual(pts, []Point{{1, 0.52}, {2, 0.48}}) {
		t.Errorf("time/step_s %v", pts)
	}
	if _, ok := r.Train["train_runtime"]; ok {
		t.Error("train_runtime read as a series")
	}
	res, err := Render([]*Run{r}, Options{OutDir: filepath.Join(dir, "out")})
	if err != nil {
		t.Fatal(err)
	}
	var charts []string
	for _, c := range res.Charts {
		charts = append(charts, c.Metric)
	}
	if !reflect.DeepEqual(charts, []string{"loss", "learning_rate", "time/step_s"}) {
		t.Errorf("charts %v", charts)
	}
	page, err := os.ReadFile(res.HTMLPath)
	if err != nil {
		t.Fatal(err)
	}
	html := string(page)
	rows := []string{"<th>time/step_s</th><td>0.48</td>", "<th>train_runtime</th><td>1.25</td>",
		"<th>train_samples_per_second</th><td>12.8</td>", "<th>train_steps_per_second</th><td>1.6</td>", "<th>train_loss</th><td>0.65</td>"}
	last := -1
	for _, s := range rows {
		i := strings.Index(html, s)
		if i < 0 {
			t.Errorf("index.html lacks %q", s)
		} else if i < last {
			t.Errorf("%q out of order", s)
		}
		last = i
	}
}
