package main

import (
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"ortalign/pipeline/objective"
)

// TestRLHFGRPOLossFlags: --loss-type cispo|sapo and --importance-sampling-level parse into
// the loss configuration (token level by default), and misuse is an error naming the
// flags before anything is loaded.
func TestRLHFGRPOLossFlags(t *testing.T) {
	base := []string{"--model", "m", "--prompts", "p", "--out", "o", "--reward-fn", "length:4"}
	if c := parseRLHF(t, append(base, "--algo", "grpo")...).rlConfig(); c.ImportanceSamplingLevel != objective.ISToken {
		t.Errorf("default importance sampling level %q", c.ImportanceSamplingLevel)
	}
	c := parseRLHF(t, append(base, "--algo", "grpo", "--loss-type", "cispo", "--importance-sampling-level", "sequence")...).rlConfig()
	if c.LossType != objective.LossCISPO || c.ImportanceSamplingLevel != objective.ISSequence {
		t.Errorf("config %+v", c)
	}
	for _, args := range [][]string{
		{"--algo", "grpo", "--importance-sampling-level", "tokens"},
		{"--algo", "rloo", "--importance-sampling-level", "sequence"},
		{"--algo", "rloo", "--loss-type", "sapo"},
	} {
		err := runRLHF(context.Background(), parseRLHF(t, append(base, args...)...), io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "--importance-sampling-level") {
			t.Errorf("%v: error %v, want one naming the flags", args, err)
		}
	}
}

// TestRLHFCISPOAndGSPOResume: GRPO with the cispo loss at the sequence level (GSPO) and
// with the sapo loss runs, logs its metrics (sapo no clip fraction, as TRL), and a run
// stopped after 2 steps and resumed to 4 writes the model and metrics of a 4-step run.
func TestRLHFCISPOAndGSPOResume(t *testing.T) {
	for _, c := range []struct {
		name string
		args []string
	}{
		{"cispo_sequence", []string{"--loss-type", "cispo", "--epsilon-high", "5", "--importance-sampling-level", "sequence"}},
		{"sapo", []string{"--loss-type", "sapo"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			full, part := t.TempDir(), t.TempDir()
			run := func(dir, steps string) {
				o := parseRLHF(t, rlhfArgs(dir, append([]string{"--max-steps", steps}, c.args...)...)...)
				if err := runRLHF(context.Background(), o, io.Discard, io.Discard); err != nil {
					t.Fatal(err)
				}
			}
			run(full, "4")
			run(part, "2")
			run(part, "4")
			if readFile(t, filepath.Join(full, "model.onnx")) != readFile(t, filepath.Join(part, "model.onnx")) {
				t.Fatal("resumed model.onnx differs from the uninterrupted run's")
			}
			a, b := metricLines(t, filepath.Join(full, "metrics.jsonl")), metricLines(t, filepath.Join(part, "metrics.jsonl"))
			if len(a) != 4 || len(b) != 4 {
				t.Fatalf("%d and %d metrics lines, want 4", len(a), len(b))
			}
			for i := range a {
				for _, m := range a[i] {
					if v := b[i].Value(m.Name); v != m.Value && !strings.HasPrefix(m.Name, "time/") && !strings.HasPrefix(m.Name, "train_") {
						t.Fatalf("step %d %s: resumed %v, straight %v", i+1, m.Name, v, m.Value)
					}
				}
			}
			_, hasClip := a[0].Get("policy/clipfrac_avg")
			if hasClip == (c.name == "sapo") {
				t.Errorf("policy/clipfrac_avg logged: %v (sapo clips nothing)", hasClip)
			}
		})
	}
}
