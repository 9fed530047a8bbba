package main

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"
)

func parseRLHF(t *testing.T, args ...string) *rlhfOptions { return parseFlags(t, newRLHFCmd, args...) }

// rlhfArgs is a short GRPO run on the bundled prompts with a regex reward.
func rlhfArgs(out string, extra ...string) []string {
	return append([]string{"--algo", "grpo", "--model", tinyLlama, "--tokenizer", tinyTok, "--prompts", trainData,
		"--reward-fn", "regex:^ ", "--out", out, "--num-generations", "4", "--max-new-tokens", "3", "--batch-size", "2",
		"--lr", "2e-3", "--lr-scheduler", "constant", "--beta", "0.04", "--seed", "7"}, extra...)
}

// TestRLHFFlags: defaults mirror TRL (beta 0 for grpo and 0.05 for rloo, loss dapo, lr
// 1e-6), and flag errors name the flag before anything is loaded.
func TestRLHFFlags(t *testing.T) {
	o := parseRLHF(t, "--algo", "grpo", "--model", "m", "--prompts", "p", "--out", "o", "--reward-fn", "length:4")
	if c := o.rlConfig(); c.Beta != 0 || c.LossType != "dapo" || o.lr != 1e-6 || o.numGenerations != 8 || o.maxNewTokens != 256 {
		t.Errorf("grpo defaults: %+v, lr %g", c, o.lr)
	}
	o = parseRLHF(t, "--algo", "rloo", "--model", "m", "--prompts", "p", "--out", "o", "--reward-fn", "length:4")
	if c := o.rlConfig(); c.Beta != 0.05 {
		t.Errorf("rloo beta %g, want 0.05", c.Beta)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--algo", "dpo"}, "--algo"},
		{[]string{"--algo", "grpo"}, "no reward"},
		{[]string{"--algo", "grpo", "--reward-fn", "length:3", "--reward-weights", "1,2"}, "--reward-weights"},
		{[]string{"--algo", "grpo", "--reward-fn", "length:3", "--loss-type", "x"}, "loss type"},
		{[]string{"--algo", "grpo", "--reward-fn", "length:3", "--num-generations", "1"}, "num generations"},
		{[]string{"--algo", "grpo", "--reward-fn", "length:3", "--eval-steps", "5"}, "--eval-steps"},
	} {
		o := parseRLHF(t, append([]string{"--model", "m", "--prompts", "p", "--out", "o"}, c.args...)...)
		if err := runRLHF(context.Background(), o, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want %q", c.args, err, c.want)
		}
	}
}

// TestRLHFResumeEqualsUninterrupted: a run stopped after 2 steps and resumed to 4 samples
// the same completions and writes the same model and metrics as a 4-step run.
func TestRLHFResumeEqualsUninterrupted(t *testing.T) {
	full, part := t.TempDir(), t.TempDir()
	var stdout bytes.Buffer
	if err := runRLHF(context.Background(), parseRLHF(t, rlhfArgs(full, "--max-steps", "4", "--eval-data", tinyData)...), &stdout, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout.String(), "held-out mean reward") {
		t.Errorf("no held-out table: %s", stdout.String())
	}
	if err := runRLHF(context.Background(), parseRLHF(t, rlhfArgs(part, "--max-steps", "2")...), io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	if err := runRLHF(context.Background(), parseRLHF(t, rlhfArgs(part, "--max-steps", "4")...), io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	if a, b := readFile(t, filepath.Join(full, "model.onnx")), readFile(t, filepath.Join(part, "model.onnx")); a != b {
		t.Error("resumed model differs from the uninterrupted run's")
	}
	a, b := metricLines(t, filepath.Join(full, "metrics.jsonl")), metricLines(t, filepath.Join(part, "metrics.jsonl"))
	if len(a) != 4 || len(b) != 4 {
		t.Fatalf("%d and %d metrics lines, want 4", len(a), len(b))
	}
	for i := range a {
		for _, m := range a[i] {
			if strings.HasPrefix(m.Name, "time/") {
				continue
			}
			if v, _ := b[i].Get(m.Name); v != m.Value {
				t.Errorf("step %d %s: %v uninterrupted, %v resumed", i+1, m.Name, m.Value, v)
			}
		}
	}
	// Another algorithm or reward on the same checkpoint is refused.
	err := runRLHF(context.Background(), parseRLHF(t, rlhfArgs(part, "--max-steps", "6", "--reward-fn", "length:2")...), io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "setting grpo.reward") {
		t.Errorf("resume with another reward: %v", err)
	}
}
