package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ortalign/onnx"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/generate"
	"ortalign/pipeline/lm"
	"ortalign/pipeline/rollout"
	"ortalign/pipeline/score"
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

// promptsFile writes rows [lo, hi) of testdata/data/test.jsonl to a file of the test's.
func promptsFile(t *testing.T, lo, hi int) string {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(readFile(t, "../../testdata/data/test.jsonl")), "\n")
	p := filepath.Join(t.TempDir(), fmt.Sprintf("prompts_%d_%d.jsonl", lo, hi))
	if err := os.WriteFile(p, []byte(strings.Join(lines[lo:hi], "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRLHFResumeEqualsUninterrupted: a run stopped after 2 steps and resumed to 4 samples
// the same completions and writes the same model and metrics as a 4-step run.
func TestRLHFResumeEqualsUninterrupted(t *testing.T) {
	full, part := t.TempDir(), t.TempDir()
	held := promptsFile(t, 0, 8)
	var stdout bytes.Buffer
	if err := runRLHF(context.Background(), parseRLHF(t, rlhfArgs(full, "--max-steps", "4", "--eval-data", held)...), &stdout, io.Discard); err != nil {
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

// TestRewardThenRLHFRaisesRewardModelScore: end to end, `ortalign reward` trains a tiny
// reward model on the bundled preference pairs, then `ortalign rlhf --algo grpo --reward`
// trains the tiny Llama for a few steps on prompts of test.jsonl. The reward model's mean
// score of completions sampled on held-out prompts (same prompts, same seed, both
// policies) rises over the starting policy's, measured apart from the run from the
// exported model.onnx, while objective/kl stays bounded.
func TestRewardThenRLHFRaisesRewardModelScore(t *testing.T) {
	rmDir, out := t.TempDir(), t.TempDir()
	ro := parseReward(t, "--model", tinyLlama, "--data", trainData, "--tokenizer", tinyTok, "--out", rmDir,
		"--max-length", "128", "--lr", "1e-3", "--epochs", "1")
	if err := runReward(context.Background(), ro, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	rmPath := filepath.Join(rmDir, RewardModelFile)
	train, held := promptsFile(t, 0, 80), promptsFile(t, 80, 100)
	// One new token per completion: the reward model scores prompt + token, so a few steps
	// move the policy's next-token distribution towards what it rewards.
	var stdout bytes.Buffer
	args := []string{"--algo", "grpo", "--model", tinyLlama, "--tokenizer", tinyTok, "--prompts", train, "--eval-data", held,
		"--reward", rmPath, "--out", out, "--num-generations", "16", "--max-new-tokens", "1", "--batch-size", "4",
		"--lr", "3e-2", "--beta", "0.1", "--seed", "7", "--max-steps", "6"}
	if err := runRLHF(context.Background(), parseRLHF(t, args...), &stdout, io.Discard); err != nil {
		t.Fatal(err)
	}
	lines := metricLines(t, filepath.Join(out, "metrics.jsonl"))
	if len(lines) != 6 {
		t.Fatalf("%d metrics lines, want 6", len(lines))
	}
	maxKL := 0.0
	for _, l := range lines {
		kl, _ := l.Get("objective/kl")
		maxKL = max(maxKL, kl)
		if _, ok := l.Get("rewards/reward_model/mean"); !ok {
			t.Fatalf("metrics lack rewards/reward_model/mean: %v", l)
		}
	}
	if first, _ := lines[0].Get("objective/kl"); math.Abs(first) > 1e-3 || maxKL > 6 {
		t.Errorf("objective/kl %.3g at the first step (want ~0) and at most %.3g (want <= 6)", first, maxKL)
	}

	// The held-out score, apart from the run: both policies from their files, the same
	// prompts and seed.
	tok, err := loadTokenizer(tinyTok)
	if err != nil {
		t.Fatal(err)
	}
	base, err := onnx.Load(tinyLlama)
	if err != nil {
		t.Fatal(err)
	}
	trained, err := onnx.Load(filepath.Join(out, "model.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	rm, err := score.LoadRewardModel(rmPath, lm.ModelOptions{Threads: 1, PadID: padID(tok)})
	if err != nil {
		t.Fatal(err)
	}
	defer rm.Close()
	l, err := encode.LoadPrompts(held, encode.DataOptions{Tokenizer: tok, Vocab: lm.StaticVocabSize(base)})
	if err != nil {
		t.Fatal(err)
	}
	eos, _ := tok.EOS()
	rc := rollout.RLRunConfig{NumGenerations: 16, Sample: generate.SampleOptions{Temperature: 1, MaxNewTokens: 1, EOS: []int64{int64(eos)}},
		Rewards: []rollout.RewardFunc{rollout.ModelReward{Rewards: rm.Rewards}}}
	scoreOf := func(m *onnx.Model) float64 {
		v, err := rollout.MeanReward(context.Background(), "policy", m, l.Items, rc, 12345, 1)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	before, after := scoreOf(base), scoreOf(trained)
	t.Logf("reward model's held-out mean score %.3f -> %.3f (%d prompts × 16); max objective/kl %.3f\n%s", before, after, len(l.Items), maxKL, stdout.String())
	if !(after > before+0.15) {
		t.Errorf("held-out reward model score %.3f -> %.3f: want a rise of more than 0.15", before, after)
	}
	if !strings.Contains(stdout.String(), "held-out mean reward") {
		t.Errorf("no held-out table: %s", stdout.String())
	}
}
