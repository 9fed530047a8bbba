package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// writeMetrics writes a run directory with a small metrics.jsonl.
func writeMetrics(t *testing.T, dir string, lines ...string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "metrics.jsonl"), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestReportFlags(t *testing.T) {
	var got *reportOptions
	cmd := newReportCmd(&globalOptions{}, func(o *reportOptions) error { got = o; return nil })
	cmd.SetArgs([]string{"a", "b", "--out", "o", "--width", "300", "--title", "T"})
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.dirs, []string{"a", "b"}) || got.out != "o" || got.width != 300 || got.height != 450 || got.title != "T" {
		t.Errorf("options %+v", got)
	}
	cmd = newReportCmd(&globalOptions{}, func(*reportOptions) error { return nil })
	cmd.SetArgs(nil)
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	if err := cmd.Execute(); err == nil {
		t.Error("no run directory: want an error")
	}
}

func TestReportCommand(t *testing.T) {
	tmp := t.TempDir()
	a, b := filepath.Join(tmp, "a"), filepath.Join(tmp, "b")
	var la, lb []string
	for s := 1; s <= 6; s++ {
		la = append(la, fmt.Sprintf(`{"loss":%g,"rewards/accuracies":0.5,"learning_rate":1e-6,"epoch":%g,"step":%d}`, 1/float64(s), float64(s)/6, s))
		lb = append(lb, fmt.Sprintf(`{"loss":%g,"objective/kl":%g,"step":%d}`, 2/float64(s), 0.1*float64(s), s))
	}
	la = append(la, `{"eval_loss":0.2,"epoch":1,"step":6}`)
	lb = append(lb, `{"loss":0.3,"st`)
	writeMetrics(t, a, la...)
	writeMetrics(t, b, lb...)
	out := filepath.Join(tmp, "out")

	var stdout, stderr bytes.Buffer
	cmd := newReportCmd(&globalOptions{}, nil)
	cmd.SetArgs([]string{a, b, "--out", out})
	cmd.SetOut(&stdout)
	cmd.SetErr(&stderr)
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	html := filepath.Join(out, "index.html")
	if strings.TrimSpace(stdout.String()) != html {
		t.Errorf("stdout %q, want %s", stdout.String(), html)
	}
	if want := filepath.Join(b, "metrics.jsonl") + ":7: damaged JSON"; !strings.Contains(stderr.String(), want) {
		t.Errorf("stderr %q lacks %q", stderr.String(), want)
	}
	for _, f := range []string{"loss.png", "rewards_accuracies.png", "learning_rate.png", "objective_kl.png", "index.html"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Error(err)
		}
	}

	// The default output directory is report/ inside the first run; a missing
	// metrics.jsonl is an error naming it.
	cmd = newReportCmd(&globalOptions{}, nil)
	cmd.SetArgs([]string{a})
	stdout.Reset()
	cmd.SetOut(&stdout)
	cmd.SetErr(io.Discard)
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(a, "report", "index.html"); strings.TrimSpace(stdout.String()) != want {
		t.Errorf("stdout %q, want %s", stdout.String(), want)
	}
	cmd = newReportCmd(&globalOptions{}, nil)
	cmd.SetArgs([]string{a, filepath.Join(tmp, "none")})
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	err := cmd.Execute()
	if want := filepath.Join(tmp, "none", "metrics.jsonl"); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("err %v, want one naming %s", err, want)
	}
}
