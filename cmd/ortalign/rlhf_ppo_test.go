package main

import (
	"bytes"
	"context"
	"io"
	"ortalign/pipeline/lm"
	"ortalign/pipeline/objective"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// ppoArgs is a short PPO run on the bundled prompts with a regex reward.
func ppoArgs(out string, extra ...string) []string {
	return append([]string{"--algo", "ppo", "--model", tinyLlama, "--tokenizer", tinyTok, "--prompts", trainData,
		"--reward-fn", "regex:^ ", "--out", out, "--max-new-tokens", "3", "--batch-size", "4", "--num-ppo-epochs", "2",
		"--lr", "2e-3", "--lr-scheduler", "constant", "--seed", "7"}, extra...)
}

// TestRLHFPPOFlags: PPO's defaults are TRL's PPOConfig's (temperature 0.7 unless given),
// and flag errors name the flags before anything is loaded.
func TestRLHFPPOFlags(t *testing.T) {
	o := parseRLHF(t, "--algo", "ppo", "--model", "m", "--prompts", "p", "--out", "o", "--reward-fn", "length:4")
	c := o.ppoRunConfig()
	if d := objective.DefaultPPOConfig(); c.PPO != d || c.NumPPOEpochs != 4 || c.NumMiniBatches != 1 {
		t.Errorf("ppo defaults %+v, want %+v, 4 epochs, 1 mini-batch", c, d)
	}
	if o = parseRLHF(t, "--algo", "ppo", "--model", "m", "--prompts", "p", "--out", "o", "--reward-fn", "length:4", "--temperature", "1"); o.temperature != 1 {
		t.Errorf("--temperature 1 read as %g", o.temperature)
	}
	if o = parseRLHF(t, "--algo", "grpo", "--model", "m", "--prompts", "p", "--out", "o", "--reward-fn", "length:4"); o.temperature != 1 {
		t.Errorf("grpo temperature %g, want 1", o.temperature)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--kl-estimator", "k2"}, "--kl-estimator"},
		{[]string{"--num-ppo-epochs", "0"}, "--num-ppo-epochs"},
		{[]string{"--lam", "2"}, "--lam"},
		{[]string{"--cliprange", "1.5"}, "--cliprange"},
	} {
		o := parseRLHF(t, append([]string{"--algo", "ppo", "--model", "m", "--prompts", "p", "--out", "o", "--reward-fn", "length:3"}, c.args...)...)
		if err := runRLHF(context.Background(), o, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want %q", c.args, err, c.want)
		}
	}
}

// ppoPromptsFile writes the first n rows of testdata/data/test.jsonl to a file of the test's.
func ppoPromptsFile(t *testing.T, n int) string {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(readFile(t, "../../testdata/data/test.jsonl")), "\n")
	p := filepath.Join(t.TempDir(), "held.jsonl")
	if err := os.WriteFile(p, []byte(strings.Join(lines[:n], "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRLHFPPOResumeEqualsUninterrupted: a PPO run stopped after one round and resumed
// writes the same model and metrics as an uninterrupted run; model.onnx is the policy.
func TestRLHFPPOResumeEqualsUninterrupted(t *testing.T) {
	full, part := t.TempDir(), t.TempDir()
	held := ppoPromptsFile(t, 8)
	var stdout bytes.Buffer
	if err := runRLHF(context.Background(), parseRLHF(t, ppoArgs(full, "--max-steps", "4", "--eval-data", held)...), &stdout, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout.String(), "held-out mean reward") {
		t.Errorf("no held-out table: %s", stdout.String())
	}
	if err := runRLHF(context.Background(), parseRLHF(t, ppoArgs(part, "--max-steps", "2")...), io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	if err := runRLHF(context.Background(), parseRLHF(t, ppoArgs(part, "--max-steps", "4")...), io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	if a, b := readFile(t, filepath.Join(full, "model.onnx")), readFile(t, filepath.Join(part, "model.onnx")); a != b {
		t.Error("resumed model differs from the uninterrupted run's")
	}
	if a := readFile(t, filepath.Join(full, "model.onnx")); strings.Contains(a, lm.ValueHeadWeightName) {
		t.Error("model.onnx carries the value head")
	}
	a, b := metricLines(t, filepath.Join(full, "metrics.jsonl")), metricLines(t, filepath.Join(part, "metrics.jsonl"))
	if len(a) != 2 || len(b) != 2 {
		t.Fatalf("%d and %d metrics lines, want 2 (one a round)", len(a), len(b))
	}
	for i := range a {
		for _, m := range a[i] {
			if strings.HasPrefix(m.Name, "time/") {
				continue
			}
			if v, _ := b[i].Get(m.Name); v != m.Value {
				t.Errorf("round %d %s: %v uninterrupted, %v resumed", i+1, m.Name, m.Value, v)
			}
		}
	}
	err := runRLHF(context.Background(), parseRLHF(t, ppoArgs(part, "--max-steps", "6", "--vf-coef", "0.5")...), io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "setting ppo.vf_coef") {
		t.Errorf("resume with another vf coef: %v", err)
	}
}
