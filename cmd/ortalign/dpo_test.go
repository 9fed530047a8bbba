package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"ortalign/onnx"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/lm"
	"ortalign/pipeline/score"
)

const (
	tinyLlama = "../../testdata/models/llama_opset17.onnx"
	trainData = "../../testdata/data/train.parquet"
)

// parseFlags parses a command line into a command's options, as the CLI does, without
// running the command.
func parseFlags[O any](t *testing.T, newCmd func(*globalOptions, func(*O) error) *cobra.Command, args ...string) *O {
	t.Helper()
	var got *O
	cmd := newCmd(&globalOptions{threads: 1}, func(o *O) error { got = o; return nil })
	cmd.SetArgs(args)
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	return got
}

func parseDPO(t *testing.T, args ...string) *dpoOptions { return parseFlags(t, newDPOCmd, args...) }

// dpoOpts is the bundled DPO run: the tiny Llama on the synthetic pairs.
func dpoOpts(t *testing.T, out string, extra ...string) *dpoOptions {
	t.Helper()
	return parseDPO(t, append([]string{"--model", tinyLlama, "--data", trainData, "--tokenizer", tinyTok, "--out", out,
		"--max-length", "128", "--truncation", "keep_end", "--lr", "1e-3", "--epochs", "1", "--seed", "1",
		"--checkpoint-every", "50"}, extra...)...)
}

// heldOutAccuracy scores the bundled held-out pairs with policy against ref.
func heldOutAccuracy(t *testing.T, policy, ref string) float64 {
	t.Helper()
	tok, err := loadTokenizer(tinyTok)
	if err != nil {
		t.Fatal(err)
	}
	mo := lm.ModelOptions{Threads: 1, PadID: padID(tok)}
	p, err := lm.LoadLogProbModel(policy, mo)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	r, err := lm.LoadLogProbModel(ref, mo)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	lp, err := encode.LoadPairs(tinyData, encode.DataOptions{MaxLength: 128, Truncation: "keep_end", Tokenizer: tok, Vocab: p.VocabSize()})
	if err != nil {
		t.Fatal(err)
	}
	_, sum, err := score.ScorePairs(context.Background(), p, r, lp.Items, score.ScoreConfig{Beta: 0.1, BatchSize: 16})
	if err != nil {
		t.Fatal(err)
	}
	return sum.RewardAccuracy
}

// TestDPORaisesHeldOutRewardAccuracy trains on the bundled synthetic pairs and checks the
// exported model on held-out pairs: reward accuracy against the starting model ≥ 90%,
// and the export keeps the user's graph (same inputs, outputs, node count, opset).
func TestDPORaisesHeldOutRewardAccuracy(t *testing.T) {
	out := t.TempDir()
	var stdout bytes.Buffer
	o := dpoOpts(t, out, "--eval-data", tinyData, "--eval-steps", "25")
	if err := runDPO(context.Background(), o, &stdout, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	exported := filepath.Join(out, "model.onnx")
	acc := heldOutAccuracy(t, exported, tinyLlama)
	t.Logf("held-out reward accuracy after one epoch: %.1f%%", 100*acc)
	if acc < 0.9 {
		t.Fatalf("held-out reward accuracy %.1f%%, want >= 90%%", 100*acc)
	}
	orig, _ := onnx.Load(tinyLlama)
	got, err := onnx.Load(exported)
	if err != nil {
		t.Fatal(err)
	}
	so, sg := onnx.Summary(orig), onnx.Summary(got)
	if so.Nodes != sg.Nodes || so.ParamCount != sg.ParamCount || len(so.Inputs) != len(sg.Inputs) || len(so.Outputs) != len(sg.Outputs) || got.Opset("") != orig.Opset("") {
		t.Fatalf("export changed the graph: %+v vs %+v", sg, so)
	}
	metrics := readFile(t, filepath.Join(out, "metrics.jsonl"))
	if n := strings.Count(metrics, `{"loss"`); n != 50 {
		t.Fatalf("metrics.jsonl has %d step lines, want 50 (400 pairs / 8)", n)
	}
	var evals []map[string]float64
	for _, line := range strings.Split(strings.TrimSpace(metrics), "\n") {
		if strings.HasPrefix(line, `{"eval_loss"`) {
			var m map[string]float64
			if err := json.Unmarshal([]byte(line), &m); err != nil {
				t.Fatal(err)
			}
			evals = append(evals, m)
		}
	}
	if len(evals) != 2 || evals[0]["step"] != 25 || evals[1]["step"] != 50 || evals[1]["eval_rewards/accuracies"] < 0.9 {
		t.Fatalf("eval lines %v: want steps 25 and 50, final accuracy >= 0.9", evals)
	}
	if !regexp.MustCompile(`rewards/accuracies +\S+ +(1|0\.9\d*)\n`).MatchString(stdout.String()) {
		t.Fatalf("summary does not show the held-out accuracy: %s", stdout.String())
	}
}

// lastLine is the last line of s, without its newline.
func lastLine(s string) string {
	s = strings.TrimSuffix(s, "\n")
	return s[strings.LastIndex(s, "\n")+1:]
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestDPOResumeMatchesUninterruptedRun: a run stopped after 5 steps and resumed to 10
// ends with exactly the weights of a 10-step run, and its metrics are the 10-step run's:
// 10 step lines and the run's last line (train_runtime), equal but for the wall-clock
// values.
func TestDPOResumeMatchesUninterruptedRun(t *testing.T) {
	straight, split := t.TempDir(), t.TempDir()
	run := func(dir string, steps int) {
		o := dpoOpts(t, dir, "--max-steps", strconv.Itoa(steps), "--lr-scheduler", "constant", "--checkpoint-every", "3")
		if err := runDPO(context.Background(), o, &bytes.Buffer{}, &bytes.Buffer{}); err != nil {
			t.Fatal(err)
		}
	}
	run(straight, 10)
	run(split, 5)
	run(split, 10)
	a, _ := onnx.Load(filepath.Join(straight, "model.onnx"))
	b, _ := onnx.Load(filepath.Join(split, "model.onnx"))
	for _, init := range a.Graph().GetInitializer() {
		x, _ := onnx.TensorFloats(init)
		y, _ := onnx.TensorFloats(onnx.Initializer(b.Graph(), init.GetName()))
		for k := range x {
			if x[k] != y[k] {
				t.Fatalf("%s[%d]: resumed %v, straight %v", init.GetName(), k, y[k], x[k])
			}
		}
	}
	metrics := readFile(t, filepath.Join(split, "metrics.jsonl"))
	if n := strings.Count(metrics, `"step":`); n != 10 || strings.Count(metrics, "\n") != 11 || !strings.Contains(lastLine(metrics), `"train_runtime":`) {
		t.Fatalf("resumed metrics.jsonl has %d step lines, want 10 and the run's last line:\n%s", n, metrics)
	}
	if a, b := untimed(t, []byte(readFile(t, filepath.Join(straight, "metrics.jsonl")))), untimed(t, []byte(metrics)); a != b {
		t.Fatalf("resumed metrics differ from the uninterrupted run's (wall-clock values left out):\n%s\nvs\n%s", b, a)
	}
}

// TestDPOInterruptBeforeTraining: a run cancelled before its first step says so.
func TestDPOInterruptBeforeTraining(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := runDPO(ctx, dpoOpts(t, t.TempDir()), &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("want an interruption error, got %v", err)
	}
}

// TestDPOLossFlags: TRL's loss options parse into the loss configuration, and bad values
// are errors naming the flag, before anything is loaded.
func TestDPOLossFlags(t *testing.T) {
	o := parseDPO(t, "--model", "m.onnx", "--data", "d.parquet", "--out", "o",
		"--loss", "sigmoid,sft", "--loss-weights", "1,0.5", "--f-divergence", "alpha_divergence",
		"--f-alpha-divergence-coef", "0.5", "--ld-alpha", "0.25", "--use-weighting", "--beta", "0.2")
	c, err := o.lossFlags.config()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.LossTypes(), []string{"sigmoid", "sft"}) || !slices.Equal(c.LossWeights(), []float64{1, 0.5}) ||
		c.FDivergence != "alpha_divergence" || c.FAlphaCoef != 0.5 || c.LDAlpha == nil || *c.LDAlpha != 0.25 || !c.UseWeighting || c.Beta != 0.2 {
		t.Fatalf("loss config %+v", c)
	}
	if d, _ := parseDPO(t, "--model", "m", "--data", "d", "--out", "o").lossFlags.config(); d.LDAlpha != nil || d.Type != "sigmoid" || d.FDivergence != "" || d.DiscoPopTau != 0 {
		t.Fatalf("default loss config %+v", d)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--loss", "nope"}, "--loss"},
		{[]string{"--loss-weights", "x"}, "--loss-weights"},
		{[]string{"--loss", "sigmoid,ipo", "--loss-weights", "1"}, "loss weights"},
		{[]string{"--beta", "0"}, "beta"},
		{[]string{"--lr-scheduler", "nope"}, "scheduler"},
		{[]string{"--gradient-accumulation-steps", "0"}, "--gradient-accumulation-steps"},
		{[]string{"--eval-fraction", "1.5"}, "--eval-fraction"},
		{[]string{"--eval-data", "x", "--eval-fraction", "0.1"}, "--eval-data"},
	} {
		o := parseDPO(t, append([]string{"--model", "/nonexistent.onnx", "--data", "/nonexistent.parquet", "--out", t.TempDir()}, c.args...)...)
		err := runDPO(context.Background(), o, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "nonexistent") {
			t.Errorf("%v: want a flag error mentioning %q before loading anything, got %v", c.args, c.want, err)
		}
	}
}
