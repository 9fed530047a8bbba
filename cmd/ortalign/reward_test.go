package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"ortalign/data"
	"ortalign/onnx"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/lm"
	"ortalign/pipeline/score"
)

func parseReward(t *testing.T, args ...string) *rewardOptions {
	return parseFlags(t, newRewardCmd, args...)
}

// TestRewardFlags: TRL RewardConfig's defaults (learning rate 1e-4, max length 1024, no
// centering), and a negative centering coefficient fails before anything is loaded.
func TestRewardFlags(t *testing.T) {
	o := parseReward(t, "--model", "m.onnx", "--data", "d.parquet", "--out", "dir")
	if o.lr != 1e-4 || o.maxLength != 1024 || o.centerCoef != 0 || o.optimizer != engine.OptimAdamW {
		t.Errorf("defaults: lr %g, max length %d, centering %g, optimizer %s", o.lr, o.maxLength, o.centerCoef, o.optimizer)
	}
	o = parseReward(t, "--model", "missing.onnx", "--data", "missing.parquet", "--out", t.TempDir(), "--center-rewards-coefficient", "-1")
	err := runReward(context.Background(), o, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--center-rewards-coefficient") {
		t.Fatalf("negative centering coefficient: %v", err)
	}
}

// rewardRun trains the bundled reward model once for the tests below.
type rewardRun struct {
	dir, model string
	evalAcc    float64
	evalMargin float64
	stdout     string
}

func trainBundledReward(t *testing.T) rewardRun {
	t.Helper()
	dir := t.TempDir()
	o := parseReward(t, "--model", tinyLlama, "--data", trainData, "--tokenizer", tinyTok, "--out", dir,
		"--max-length", "128", "--lr", "1e-3", "--epochs", "1", "--eval-data", tinyData, "--eval-steps", "25",
		"--center-rewards-coefficient", "0.01")
	var stdout bytes.Buffer
	if err := runReward(context.Background(), o, &stdout, io.Discard); err != nil {
		t.Fatal(err)
	}
	r := rewardRun{dir: dir, model: filepath.Join(dir, RewardModelFile), stdout: stdout.String()}
	if _, err := os.Stat(filepath.Join(dir, "model.onnx")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("model.onnx left beside reward.onnx: %v", err)
	}
	var train, eval []engine.Metrics
	for _, line := range strings.Split(strings.TrimSpace(readFile(t, filepath.Join(dir, "metrics.jsonl"))), "\n") {
		var m engine.Metrics
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatal(err)
		}
		if _, ok := m.Get("eval_loss"); ok {
			eval = append(eval, m)
		} else if _, ok := m.Get("step"); ok { // not the run's last line (train_runtime)
			train = append(train, m)
		}
	}
	if len(train) != 50 || len(eval) != 2 {
		t.Fatalf("%d training and %d eval lines, want 50 (400 pairs / 8) and 2 (steps 25, 50)", len(train), len(eval))
	}
	for _, name := range []string{"loss", "accuracy", "margin", "min_reward", "mean_reward", "max_reward", "num_tokens", "grad_norm", "learning_rate"} {
		if _, ok := train[0].Get(name); !ok {
			t.Errorf("training metrics lack %s: %v", name, train[0])
		}
		if _, ok := eval[0].Get("eval_" + name); !ok && name != "grad_norm" && name != "learning_rate" {
			t.Errorf("eval metrics lack eval_%s: %v", name, eval[0])
		}
	}
	last := eval[len(eval)-1]
	r.evalAcc, r.evalMargin = last.Value("eval_accuracy"), last.Value("eval_margin")
	t.Logf("train loss %.4f -> %.4f; held-out accuracy %.1f%%, margin %.4f", train[0].Value("loss"), train[len(train)-1].Value("loss"), 100*r.evalAcc, r.evalMargin)
	return r
}

// TestRewardTrainsAndScoreReproducesIt is the reward model on the bundled data: the tiny
// Llama with a new head reaches >= 90% held-out pairwise accuracy; score --reward on the
// held-out file reproduces the trainer's held-out accuracy (within one pair) and margin;
// one sequence a row gets a reward column; reward.onnx takes input_ids and
// attention_mask, outputs rewards [batch], reloads in ortalign and loads in ONNX
// Runtime's node binding (installed by make setup) with the same rewards.
func TestRewardTrainsAndScoreReproducesIt(t *testing.T) {
	r := trainBundledReward(t)
	if r.evalAcc < 0.9 {
		t.Fatalf("held-out accuracy %.1f%%, want >= 90%%", 100*r.evalAcc)
	}
	if !strings.Contains(r.stdout, "accuracy") || !strings.Contains(r.stdout, RewardModelFile) {
		t.Errorf("summary: %s", r.stdout)
	}

	// score --reward on the held-out pairs.
	out := filepath.Join(t.TempDir(), "scores.jsonl")
	o := scoreOpts(tinyData, out)
	o.model, o.reward, o.truncation = "", r.model, "keep_start"
	var stdout bytes.Buffer
	if err := runScore(context.Background(), o, &stdout, io.Discard); err != nil {
		t.Fatal(err)
	}
	rows := readJSONL(t, out)
	if len(rows) != 100 {
		t.Fatalf("%d output rows, want 100", len(rows))
	}
	correct, margin := 0, 0.0
	for i, row := range rows {
		c, cok := row["rewards_chosen"].(float64)
		rj, rok := row["rewards_rejected"].(float64)
		m, mok := row["margin"].(float64)
		if !cok || !rok || !mok || math.Abs(m-(c-rj)) > 1e-12 || row["prompt"] == nil {
			t.Fatalf("row %d: %v", i, row)
		}
		if c > rj {
			correct++
		}
		margin += m
	}
	acc := float64(correct) / 100
	if math.Abs(acc-r.evalAcc) > 0.01+1e-9 {
		t.Errorf("score --reward accuracy %.2f, the trainer's held-out accuracy %.2f: more than one pair apart", acc, r.evalAcc)
	}
	if d := math.Abs(margin/100 - r.evalMargin); d > 1e-4 {
		t.Errorf("score --reward mean margin %.6f, the trainer's %.6f", margin/100, r.evalMargin)
	}
	if !strings.Contains(stdout.String(), "accuracy (rewards_chosen > rewards_rejected)") {
		t.Errorf("summary: %s", stdout.String())
	}
	t.Logf("score --reward: accuracy %.1f%% (trainer %.1f%%), mean margin %.4f (trainer %.4f)", 100*acc, 100*r.evalAcc, margin/100, r.evalMargin)

	// One sequence a row: a reward column.
	sftOut := filepath.Join(t.TempDir(), "sft.jsonl")
	o = scoreOpts(sftData, sftOut)
	o.model, o.reward = "", r.model
	stdout.Reset()
	if err := runScore(context.Background(), o, &stdout, io.Discard); err != nil {
		t.Fatal(err)
	}
	sftRows := readJSONL(t, sftOut)
	if len(sftRows) != 400 {
		t.Fatalf("%d rows, want 400", len(sftRows))
	}
	for i, row := range sftRows {
		if _, ok := row["reward"].(float64); !ok || row["prompt"] == nil || row["completion"] == nil {
			t.Fatalf("row %d: %v", i, row)
		}
	}
	if !strings.Contains(stdout.String(), "scored 400 sequences") || !strings.Contains(stdout.String(), "mean reward") {
		t.Errorf("summary: %s", stdout.String())
	}

	// reward.onnx: its contract, reloaded in ortalign.
	m, err := onnx.Load(r.model)
	if err != nil {
		t.Fatal(err)
	}
	g := m.Graph()
	var ins, outs []string
	for _, in := range g.GetInput() {
		ins = append(ins, in.GetName())
	}
	for _, o := range g.GetOutput() {
		outs = append(outs, o.GetName())
	}
	if _, dims, _ := onnx.TensorType(g.GetOutput()[0]); !slices.Equal(ins, []string{"input_ids", "attention_mask"}) || !slices.Equal(outs, []string{"rewards"}) || len(dims) != 1 {
		t.Fatalf("reward.onnx: inputs %v, outputs %v %v", ins, outs, dims)
	}
	tok, err := loadTokenizer(tinyTok)
	if err != nil {
		t.Fatal(err)
	}
	rm, err := score.LoadRewardModel(r.model, lm.ModelOptions{Threads: 1, PadID: padID(tok)})
	if err != nil {
		t.Fatal(err)
	}
	defer rm.Close()
	pairs, err := encode.LoadPairs(tinyData, encode.DataOptions{MaxLength: 128, Truncation: "keep_start", Tokenizer: tok, Vocab: rm.VocabSize()})
	if err != nil {
		t.Fatal(err)
	}
	seqs := encode.PairRows(pairs.Items[:4])
	got, err := rm.Rewards(seqs)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if math.Abs(got[i]-rows[i]["rewards_chosen"].(float64)) > 1e-5 || math.Abs(got[4+i]-rows[i]["rewards_rejected"].(float64)) > 1e-5 {
			t.Errorf("pair %d: reloaded rewards %v %v, score wrote %v %v", i, got[i], got[4+i], rows[i]["rewards_chosen"], rows[i]["rewards_rejected"])
		}
	}

	// ONNX Runtime's node binding.
	t.Run("onnxruntime-node", func(t *testing.T) {
		b := lm.BatchInputs(seqs, padID(tok))
		checkWithOnnxruntimeNode(t, map[string]any{"model": r.model, "input_ids": rowsOf(b.IDs.I64, len(seqs)), "attention_mask": rowsOf(b.AttentionMask.I64, len(seqs)), "rewards": got})
	})
}

// requireNodeEnv makes a missing node or onnxruntime-node a failure instead of a skip;
// .ci/run sets it (as for the other files from outside the repository).
const requireNodeEnv = "ORTALIGN_REQUIRE_SHARED"

// checkWithOnnxruntimeNode runs testdata/check_reward_onnx.mjs on check (the model and
// rows, and the rewards ortalign gave them): the model must load in ONNX Runtime's node
// binding, with the reward contract's inputs and output and the same rewards. The
// binding is the one `make setup` installs in third_party/ort/node, or
// $TESTDATA_NODE_DIR's. Without node or the binding the test skips, or fails when
// $ORTALIGN_REQUIRE_SHARED is 1.
func checkWithOnnxruntimeNode(t *testing.T, check map[string]any) {
	t.Helper()
	missing := func(what string) {
		t.Helper()
		if os.Getenv(requireNodeEnv) == "1" {
			t.Fatalf("%s ($%s=1; make setup installs onnxruntime-node)", what, requireNodeEnv)
		}
		t.Skipf("skipping: %s (make setup installs onnxruntime-node; $%s=1 makes this a failure)", what, requireNodeEnv)
	}
	if _, err := exec.LookPath("node"); err != nil {
		missing("node is not installed: reward.onnx not checked with onnxruntime-node")
	}
	nodeDir := os.Getenv("TESTDATA_NODE_DIR")
	if nodeDir == "" {
		var err error
		if nodeDir, err = filepath.Abs("../../third_party/ort/node"); err != nil {
			t.Fatal(err)
		}
	}
	js, err := json.Marshal(check)
	if err != nil {
		t.Fatal(err)
	}
	checkPath := filepath.Join(t.TempDir(), "check.json")
	if err := os.WriteFile(checkPath, js, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("node", "../../testdata/check_reward_onnx.mjs", checkPath)
	cmd.Env = append(os.Environ(), "TESTDATA_NODE_DIR="+nodeDir)
	res, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit) && exit.ExitCode() == 3:
		missing(fmt.Sprintf("onnxruntime-node is not installed in %s: reward.onnx not checked with it\n%s", nodeDir, res))
	case err != nil:
		t.Fatalf("onnxruntime-node check: %v\n%s", err, res)
	}
	t.Logf("%s", strings.TrimSpace(string(res)))
}

func rowsOf(v []int64, n int) [][]int64 {
	w := len(v) / n
	out := make([][]int64, n)
	for i := range out {
		out[i] = v[i*w : (i+1)*w]
	}
	return out
}

// TestScoreRewardSkipsAndShards: score --reward follows log-prob scoring's rules: a row
// with a null value is skipped with a warning and written with null rewards; shards
// split the file's row groups; --model and --ref do not mix with --reward; a causal LM is
// not a reward model.
func TestScoreRewardSkipsAndShards(t *testing.T) {
	// An untrained grafted head is a reward model all the same.
	base, err := onnx.Load(tinyLlama)
	if err != nil {
		t.Fatal(err)
	}
	rg, err := lm.NewRewardGraph(base, lm.RewardHeadOptions{Seed: 3, InitStd: 1})
	if err != nil {
		t.Fatal(err)
	}
	model := filepath.Join(t.TempDir(), "reward.onnx")
	if err := rg.Model.Save(model, onnx.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	pairs := writePairs(t, [][3]*string{{s("Q1"), s(" good"), s(" bad")}, {s("Q2"), nil, s(" bad")}, {s("Q3"), s(" fine"), s(" poor")}})
	out := filepath.Join(t.TempDir(), "out.jsonl")
	o := scoreOpts(pairs, out)
	o.model, o.reward = "", model
	var stdout, stderr bytes.Buffer
	if err := runScore(context.Background(), o, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	rows := readJSONL(t, out)
	if len(rows) != 3 || rows[1]["rewards_chosen"] != nil || rows[1]["margin"] != nil || rows[0]["rewards_chosen"] == nil || rows[2]["margin"] == nil {
		t.Fatalf("rows: %v", rows)
	}
	if !strings.Contains(stderr.String(), "row 1") || !strings.Contains(stdout.String(), "skipped 1 rows") || !strings.Contains(stdout.String(), "of 2 pairs") {
		t.Errorf("stdout %s\nstderr %s", stdout.String(), stderr.String())
	}

	const file = "../../data/testdata/arrow_standard_zstd_v2_nodict.parquet"
	run := func(window int, shard string) []data.Example {
		t.Helper()
		defer func(w int) { score.ScoreWindow = w }(score.ScoreWindow)
		score.ScoreWindow = window
		out := filepath.Join(t.TempDir(), "scores.parquet")
		o := scoreOpts(file, out)
		o.model, o.reward, o.shard = "", model, shard
		if err := runScore(context.Background(), o, io.Discard, io.Discard); err != nil {
			t.Fatal(err)
		}
		d, err := data.Open(out, data.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		ex, _, err := d.ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		return ex
	}
	whole, streamed := run(1<<20, ""), run(1, "")
	a, b := run(1, "0/2"), run(1, "1/2")
	if len(whole) == 0 || len(streamed) != len(whole) || len(a)+len(b) != len(whole) || len(a) == 0 || len(b) == 0 {
		t.Fatalf("%d rows at once, %d streamed, shards %d + %d", len(whole), len(streamed), len(a), len(b))
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--reward", model, "--model", tinyLlama}, "[model reward]"},
		{[]string{"--reward", model, "--ref", tinyLlama}, "[ref reward]"},
		{[]string{"--reward", tinyLlama, "--tokenizer", tinyTok}, "not a reward model"},
	} {
		root := newRootCmd()
		root.SetArgs(append([]string{"score", "--threads", "1", "--data", tinyData, "--out", filepath.Join(t.TempDir(), "x.jsonl")}, c.args...))
		root.SetOut(io.Discard)
		root.SetErr(io.Discard)
		if err := root.Execute(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want an error with %q", c.args, err, c.want)
		}
	}
}

// TestRewardResumeEqualsUninterrupted: a reward run extended from its checkpoint (6 steps,
// then the same command with 12) writes the same reward.onnx, byte for byte, as 12 steps
// in one go: the head's seeded initial weights, the data order and the optimizer state
// all come back.
func TestRewardResumeEqualsUninterrupted(t *testing.T) {
	run := func(dir, steps string) {
		t.Helper()
		o := parseReward(t, "--model", tinyLlama, "--data", trainData, "--tokenizer", tinyTok, "--out", dir,
			"--max-length", "128", "--lr", "1e-3", "--lr-scheduler", "constant", "--max-steps", steps, "--checkpoint-every", "3",
			"--gradient-accumulation-steps", "2", "--batch-size", "4")
		if err := runReward(context.Background(), o, io.Discard, io.Discard); err != nil {
			t.Fatal(err)
		}
	}
	once, twice := t.TempDir(), t.TempDir()
	run(once, "12")
	run(twice, "6")
	var stderr bytes.Buffer
	o := parseReward(t, "--model", tinyLlama, "--data", trainData, "--tokenizer", tinyTok, "--out", twice,
		"--max-length", "128", "--lr", "1e-3", "--lr-scheduler", "constant", "--max-steps", "12", "--checkpoint-every", "3",
		"--gradient-accumulation-steps", "2", "--batch-size", "4")
	if err := runReward(context.Background(), o, io.Discard, &stderr); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr.String(), "resuming from") {
		t.Errorf("the second run did not resume: %s", stderr.String())
	}
	a, b := readFile(t, filepath.Join(once, RewardModelFile)), readFile(t, filepath.Join(twice, RewardModelFile))
	if a != b {
		t.Error("reward.onnx of the resumed run differs from the uninterrupted run's")
	}
	// Wall-clock values (time/step_s, train_runtime, ...) differ from run to run.
	if ma, mb := untimed(t, []byte(readFile(t, filepath.Join(once, "metrics.jsonl")))), untimed(t, []byte(readFile(t, filepath.Join(twice, "metrics.jsonl")))); ma != mb {
		t.Errorf("metrics differ:\n%s\nvs\n%s", ma, mb)
	}
}
