package score

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ortalign/data"
	"ortalign/onnx"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/lm"
	"ortalign/tokenize"
)

const (
	testModel = "../../testdata/models/llama_opset17.onnx"
	testRef   = "../../testdata/models/gpt2_opset17.onnx"
	testTok   = "../../testdata/tokenizer/tokenizer.json"
	testPairs = "../../testdata/data/test.parquet"
	testSFT   = "../../testdata/data/sft_train.parquet"
)

func testDataOptions(t *testing.T) encode.DataOptions {
	t.Helper()
	tok, err := tokenize.Load(testTok)
	if err != nil {
		t.Fatal(err)
	}
	return encode.DataOptions{Tokenizer: tok, MaxLength: 128, Truncation: tokenize.KeepEnd}
}

// TestScoreDatasetMatchesScoreFile: from paths, ScoreDataset writes the file ScoreFile
// writes with the same models opened by hand, and its summary says what was scored.
func TestScoreDatasetMatchesScoreFile(t *testing.T) {
	do := testDataOptions(t)
	dir := t.TempDir()
	mo := lm.ModelOptions{Threads: 1}
	var progress bytes.Buffer
	inits := 0
	sum, err := ScoreDataset(context.Background(), DatasetConfig{Data: testPairs, Out: filepath.Join(dir, "a.jsonl"), DataOptions: do,
		Policy: testModel, Ref: testRef, Model: mo, Beta: 0.1, BatchSize: 8, InitRuntime: func() error { inits++; return nil }, Progress: &progress})
	if err != nil {
		t.Fatal(err)
	}
	if inits != 1 || sum.Use != data.UsePreference || sum.Unit() != "pairs" || sum.Scored() != 100 || sum.Pairs != 100 || !sum.HasRef || sum.Layout != data.Standard {
		t.Errorf("runtime initialised %d times; summary %+v", inits, sum)
	}
	if !strings.Contains(progress.String(), "score: 100/100 pairs") {
		t.Errorf("progress %q", progress.String())
	}

	ds, err := encode.OpenDataset(testPairs, data.UsePreference, do)
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	policy, err := lm.LoadLogProbModel(testModel, mo)
	if err != nil {
		t.Fatal(err)
	}
	defer policy.Close()
	ref, err := lm.LoadLogProbModel(testRef, mo)
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	do.Vocab = policy.VocabSize()
	if _, err := ScoreFile(context.Background(), ds, ScoreFileConfig{Out: filepath.Join(dir, "b.jsonl"), Data: do, Policy: policy, Ref: ref, Beta: 0.1, BatchSize: 8}); err != nil {
		t.Fatal(err)
	}
	a, errA := os.ReadFile(filepath.Join(dir, "a.jsonl"))
	b, errB := os.ReadFile(filepath.Join(dir, "b.jsonl"))
	if errA != nil || errB != nil || len(a) == 0 || !bytes.Equal(a, b) {
		t.Fatalf("ScoreDataset's file (%d bytes, %v) differs from ScoreFile's (%d bytes, %v)", len(a), errA, len(b), errB)
	}
}

// TestScoreDatasetReward: with a reward model, a file of pairs is scored pair by pair
// and a file without pairs one sequence a row.
func TestScoreDatasetReward(t *testing.T) {
	base, err := onnx.Load(testModel)
	if err != nil {
		t.Fatal(err)
	}
	rg, err := lm.NewRewardGraph(base, lm.RewardHeadOptions{Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rm := filepath.Join(dir, "reward.onnx")
	// The grafted graph has a rewards output: LoadRewardModel takes it as a reward model.
	if err := rg.Model.Save(rm, onnx.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	do := testDataOptions(t)
	for _, c := range []struct {
		data string
		use  data.Use
		unit string
	}{{testPairs, data.UsePreference, "pairs"}, {testSFT, data.UseSFT, "sequences"}} {
		sum, err := ScoreDataset(context.Background(), DatasetConfig{Data: c.data, Out: filepath.Join(dir, "r.parquet"), DataOptions: do,
			Reward: rm, Model: lm.ModelOptions{Threads: 1}, BatchSize: 16})
		if err != nil {
			t.Fatalf("%s: %v", c.data, err)
		}
		if sum.Use != c.use || sum.Unit() != c.unit || sum.Scored() == 0 {
			t.Errorf("%s: summary %+v, want use %s", c.data, sum, c.use)
		}
	}
}

// TestScoreDatasetErrors: the models asked for must make sense; data errors come before
// ONNX Runtime is asked for; a runtime that fails stops the run before any model.
func TestScoreDatasetErrors(t *testing.T) {
	do := testDataOptions(t)
	failInit := errors.New("no runtime here")
	for _, c := range []struct {
		name  string
		cfg   DatasetConfig
		init  error
		inits int
		want  string
	}{
		{"no model", DatasetConfig{Data: testPairs}, nil, 0, "policy model"},
		{"both", DatasetConfig{Data: testPairs, Policy: testModel, Reward: testModel}, nil, 0, "not both"},
		{"ref with reward", DatasetConfig{Data: testPairs, Ref: testRef, Reward: testModel}, nil, 0, "reference"},
		{"log-probs of sequences", DatasetConfig{Data: testSFT, Policy: testModel}, failInit, 0, "rejected"},
		{"runtime", DatasetConfig{Data: testPairs, Policy: testModel}, failInit, 1, failInit.Error()},
		{"missing ref", DatasetConfig{Data: testPairs, Policy: testModel, Ref: "../../testdata/models/nonexistent.onnx"}, nil, 1, "nonexistent.onnx"},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.cfg.DataOptions, c.cfg.Out, c.cfg.BatchSize, c.cfg.Model = do, filepath.Join(t.TempDir(), "out.jsonl"), 4, lm.ModelOptions{Threads: 1}
			inits := 0
			c.cfg.InitRuntime = func() error { inits++; return c.init }
			_, err := ScoreDataset(context.Background(), c.cfg)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
			if inits != c.inits {
				t.Errorf("runtime initialised %d times, want %d", inits, c.inits)
			}
			if _, err := os.Stat(c.cfg.Out); !os.IsNotExist(err) {
				t.Errorf("output written: %v", err)
			}
		})
	}
}

// TestScoreDatasetStopsOnSignal: a signal before the models load stops the run there
// (the policy's file is not even opened), and leaves no output.
func TestScoreDatasetStopsOnSignal(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	out := filepath.Join(dir, "scores.jsonl")
	_, err := ScoreDataset(ctx, DatasetConfig{Data: testPairs, Out: out, DataOptions: testDataOptions(t),
		Policy: filepath.Join(dir, "not-there.onnx"), Model: lm.ModelOptions{Threads: 1}, Beta: 0.1, BatchSize: 8,
		InitRuntime: func() error { cancel(); return nil }})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("want the run stopped, got %v", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatalf("output left behind: %v", err)
	}
}

// TestScoreShardProgress: a shard's progress counts the rows of its own row groups: a
// one-group file's shard 0 of 2 holds every row, shard 1 none.
func TestScoreShardProgress(t *testing.T) {
	for shard, want := range []string{"score: 100/100 pairs", "score: 0/0 pairs"} {
		var progress bytes.Buffer
		dir := t.TempDir()
		_, err := ScoreDataset(context.Background(), DatasetConfig{Data: testPairs, Out: filepath.Join(dir, "s.jsonl"), DataOptions: testDataOptions(t),
			Policy: testModel, Model: lm.ModelOptions{Threads: 1}, Beta: 0.1, BatchSize: 8, Shard: shard, Shards: 2,
			InitRuntime: func() error { return nil }, Progress: &progress})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(progress.String(), want) {
			t.Errorf("shard %d/2: progress %q, want %q", shard, progress.String(), want)
		}
	}
}
