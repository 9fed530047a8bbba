package report

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// MetricsFile is the name of the metrics log inside a run directory.
const MetricsFile = "metrics.jsonl"

// EvalPrefix marks the keys of evaluation lines (TRL's "eval_loss", ...).
const EvalPrefix = "eval_"

// RuntimeKey marks a run's totals line, its last: Hugging Face's speed metrics
// (train_runtime, train_samples_per_second, train_steps_per_second), with no step.
const RuntimeKey = "train_runtime"

// Point is one logged value of a metric.
type Point struct {
	Step, Value float64
}

// Warning is a problem in one line of a metrics file that did not stop the report:
// the line, or the one value, was left out.
type Warning struct {
	Path string // the metrics file
	Line int    // 1-based line number
	Msg  string
}

// String formats the warning as "path:line: message".
func (w Warning) String() string {
	return fmt.Sprintf("%s:%d: %s", w.Path, w.Line, w.Msg)
}

// Run is the metrics of one training run, read by Load.
type Run struct {
	// Name labels the run in legends and tables: the directory as given to Load.
	Name string
	// Dir is the run directory; Path the metrics file read.
	Dir, Path string
	// Train and Eval hold the series of each metric, sorted by step, one point per
	// step (for a step logged twice, the later line wins). Eval is keyed by the name
	// without EvalPrefix, so "eval_loss" is Eval["loss"].
	Train, Eval map[string][]Point
	// Totals are the values of the run's totals line (see RuntimeKey), by name; nil
	// when the run has none (it is still running, or was written before ortalign logged
	// one). A later totals line replaces an earlier one.
	Totals map[string]float64
	// LastStep is the largest step logged; LastEpoch the largest epoch (NaN when no
	// line has one).
	LastStep, LastEpoch float64
	// Warnings are the lines, or values, that were left out.
	Warnings []Warning
}

// Metrics returns the names of every metric of the run, training or evaluation, in
// report order (see SortMetrics).
func (r *Run) Metrics() []string {
	return metricNames([]*Run{r})
}

// Final returns the last value (the one at the largest step) of a metric's training
// series, or of its evaluation series when eval is true.
func (r *Run) Final(metric string, eval bool) (float64, bool) {
	s := r.Train[metric]
	if eval {
		s = r.Eval[metric]
	}
	if len(s) == 0 {
		return 0, false
	}
	return s[len(s)-1].Value, true
}

// Load reads the metrics.jsonl of a run directory (or, when path is a file, that
// file). A missing or unreadable file is an error naming it; damaged lines and
// values that are not finite numbers become Run.Warnings.
func Load(path string) (*Run, error) {
	name := filepath.Clean(path)
	dir, file := name, filepath.Join(name, MetricsFile)
	if st, err := os.Stat(name); err == nil && st.Mode().IsRegular() {
		dir, file = filepath.Dir(name), name
	}
	f, err := os.Open(file)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("run %s: no %s: %w", path, file, err)
	}
	if err != nil {
		return nil, fmt.Errorf("run %s: %w", path, err)
	}
	defer f.Close()
	r, err := parse(f, file)
	if err != nil {
		return nil, err
	}
	r.Name, r.Dir = name, dir
	return r, nil
}

// parse reads metrics lines from in; path names them in warnings and errors.
func parse(in io.Reader, path string) (*Run, error) {
	r := &Run{Path: path, Train: map[string][]Point{}, Eval: map[string][]Point{}, LastStep: math.Inf(-1), LastEpoch: math.NaN()}
	warn := func(line int, format string, args ...any) {
		r.Warnings = append(r.Warnings, Warning{Path: path, Line: line, Msg: fmt.Sprintf(format, args...)})
	}
	lastStep := map[bool]float64{false: math.Inf(-1), true: math.Inf(-1)}
	br := bufio.NewReader(in)
	for n := 1; ; n++ {
		raw, err := br.ReadBytes('\n')
		if err != nil && err != io.EOF {
			return nil, fmt.Errorf("%s: line %d: %w", path, n, err)
		}
		if len(raw) == 0 && err == io.EOF {
			break
		}
		line := bytes.TrimSpace(raw)
		if len(line) == 0 {
			warn(n, "blank line")
		} else if obj, msg := decodeLine(line); msg != "" {
			warn(n, "%s; line skipped", msg)
		} else if _, totals := obj[RuntimeKey]; totals && obj["step"] == nil {
			r.Totals = map[string]float64{}
			for _, k := range sortedKeys(obj) {
				raw := obj[k]
				v, ok := number(raw)
				switch {
				case !ok:
					warn(n, "%q is %s, not a finite number; value skipped", k, describe(raw))
				case k == "epoch":
					r.noteEpoch(v)
				default:
					r.Totals[k] = v
				}
			}
		} else if step, ok := number(obj["step"]); !ok {
			warn(n, "no numeric \"step\"; line skipped")
		} else {
			isEval := false
			keys := sortedKeys(obj)
			for _, k := range keys {
				isEval = isEval || strings.HasPrefix(k, EvalPrefix)
			}
			if step < lastStep[isEval] {
				warn(n, "step %g comes after step %g (lines of an earlier run?); a step logged twice is plotted with its later value", step, lastStep[isEval])
			}
			lastStep[isEval] = step
			r.LastStep = math.Max(r.LastStep, step)
			for _, k := range keys {
				if k == "step" {
					continue
				}
				v, ok := number(obj[k])
				if !ok {
					warn(n, "%q is %s, not a finite number; value skipped", k, describe(obj[k]))
					continue
				}
				if k == "epoch" {
					r.noteEpoch(v)
					continue
				}
				m := r.Train
				if strings.HasPrefix(k, EvalPrefix) {
					m, k = r.Eval, strings.TrimPrefix(k, EvalPrefix)
				}
				m[k] = append(m[k], Point{Step: step, Value: v})
			}
		}
		if err == io.EOF {
			break
		}
	}
	for _, m := range []map[string][]Point{r.Train, r.Eval} {
		for k, pts := range m {
			m[k] = byStep(pts)
		}
	}
	return r, nil
}

// sortedKeys are the keys of a line's object, sorted.
func sortedKeys(obj map[string]json.RawMessage) []string {
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// noteEpoch raises LastEpoch to v.
func (r *Run) noteEpoch(v float64) {
	if math.IsNaN(r.LastEpoch) || v > r.LastEpoch {
		r.LastEpoch = v
	}
}

// byStep sorts points by step, keeping the last point (in file order) of each step.
func byStep(pts []Point) []Point {
	sort.SliceStable(pts, func(i, j int) bool { return pts[i].Step < pts[j].Step })
	out := pts[:0]
	for i, p := range pts {
		if i+1 < len(pts) && pts[i+1].Step == p.Step {
			continue
		}
		out = append(out, p)
	}
	return out
}

// decodeLine parses one line as a JSON object; msg says why it is not one. Python's
// json module writes NaN and ±Infinity as bare words, which are not JSON: those are
// read as strings, so that only their values are skipped.
func decodeLine(line []byte) (map[string]json.RawMessage, string) {
	var obj map[string]json.RawMessage
	err := json.Unmarshal(line, &obj)
	if err != nil {
		if fixed, ok := quoteNonFinite(line); ok && json.Unmarshal(fixed, &obj) == nil {
			err = nil
		}
	}
	if err == nil && obj == nil {
		return nil, "null is not a JSON object"
	}
	if err != nil {
		var ute *json.UnmarshalTypeError
		if errors.As(err, &ute) {
			return nil, fmt.Sprintf("a JSON %s, not an object", ute.Value)
		}
		return nil, fmt.Sprintf("damaged JSON (%v)", err)
	}
	return obj, ""
}

// quoteNonFinite quotes the bare words NaN, Infinity and -Infinity outside strings.
func quoteNonFinite(line []byte) ([]byte, bool) {
	var out []byte
	changed, inString := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		if inString {
			out = append(out, c)
			if c == '\\' && i+1 < len(line) {
				i++
				out = append(out, line[i])
			} else if c == '"' {
				inString = false
			}
			continue
		}
		if c == '"' {
			inString = true
		}
		matched := false
		for _, w := range []string{"-Infinity", "Infinity", "NaN"} {
			if bytes.HasPrefix(line[i:], []byte(w)) {
				out = append(append(append(out, '"'), w...), '"')
				i += len(w) - 1
				changed, matched = true, true
				break
			}
		}
		if !matched {
			out = append(out, c)
		}
	}
	return out, changed
}

// number returns a JSON value as a finite float64.
func number(raw json.RawMessage) (float64, bool) {
	if len(raw) == 0 || !(raw[0] == '-' || raw[0] >= '0' && raw[0] <= '9') {
		return 0, false
	}
	v, err := strconv.ParseFloat(string(raw), 64)
	return v, err == nil && !math.IsNaN(v) && !math.IsInf(v, 0)
}

// describe names a JSON value that is not a finite number, for warnings.
func describe(raw json.RawMessage) string {
	switch {
	case len(raw) == 0:
		return "missing"
	case raw[0] == '"':
		var s string
		if json.Unmarshal(raw, &s) == nil && len(s) <= 40 {
			return strconv.Quote(s)
		}
		return "a string"
	case raw[0] == '{':
		return "an object"
	case raw[0] == '[':
		return "a list"
	case raw[0] == '-' || raw[0] >= '0' && raw[0] <= '9':
		return string(raw) + " (out of range)"
	default:
		return string(raw) // null, true, false
	}
}
