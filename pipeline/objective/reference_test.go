package objective

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/progress"
	"ortalign/tokenize"
)

// bundledPairs are the first n pairs of the bundled training data, encoded as the CLI
// encodes them (max length 128, keep_end), with no reference log-probs, and the pad id.
func bundledPairs(t *testing.T, n int) ([]encode.EncodedPair, int64) {
	t.Helper()
	tok, err := tokenize.Load("../../testdata/tokenizer/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	l, err := encode.LoadPairs("../../testdata/data/train.parquet", encode.DataOptions{MaxLength: 128, Truncation: tokenize.KeepEnd, Tokenizer: tok})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Items) < n {
		t.Fatalf("%d pairs in the bundled data, want %d", len(l.Items), n)
	}
	pad, ok := tok.EOS()
	if !ok {
		t.Fatal("the bundled tokenizer has no EOS")
	}
	return withoutReference(l.Items[:n]), int64(pad)
}

// countingReference counts the batches and items a Reference computes.
type countingReference struct {
	engine.Reference[encode.EncodedPair]
	batches [][]encode.EncodedPair
	// before, when set, runs before each call.
	before func()
}

func (c *countingReference) Compute(ctx context.Context, batches [][]encode.EncodedPair, prog *progress.Progress) ([][]encode.EncodedPair, error) {
	if c.before != nil {
		c.before()
	}
	c.batches = append(c.batches, batches...)
	return c.Reference.Compute(ctx, batches, prog)
}

func (c *countingReference) items() int {
	n := 0
	for _, b := range c.batches {
		n += len(b)
	}
	return n
}

// untimedLines decodes metrics lines, leaving out the wall-clock values.
func untimedLines(t *testing.T, lines []engine.Metrics) string {
	t.Helper()
	var b bytes.Buffer
	for _, m := range lines {
		m = slices.DeleteFunc(slices.Clone(m), func(x engine.Metric) bool { return engine.WallClock(x.Name) })
		if err := json.NewEncoder(&b).Encode(m); err != nil {
			t.Fatal(err)
		}
	}
	return b.String()
}

// TestStepReferenceEqualsPrecomputed: DPO with each step's reference log-probs computed
// as the step comes trains, to the last bit, as with every pair's computed before the
// first step (the same values in the same feeds): the same metrics and weights, with a
// shuffled order, accumulation and three epochs, for full training and LoRA; each pair's
// reference is computed once, and a run stopped in its second epoch and resumed — whose
// references then come from the starting weights, not the live ones — ends the same too.
func TestStepReferenceEqualsPrecomputed(t *testing.T) {
	pairs, pad := bundledPairs(t, 22)
	for _, lora := range []bool{false, true} {
		name := "full"
		if lora {
			name = "lora"
		}
		t.Run(name, func(t *testing.T) {
			// 22 pairs in micro-batches of 4 (the last of 2), 2 a step: 3 steps an epoch.
			cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimAdamW}, LR: 5e-3, BatchSize: 4, GradAccum: 2,
				MaxSteps: 8, Seed: 3, Shuffle: true, Threads: 1, PadID: pad}
			if lora {
				cfg.Adapter = engine.LoRA{R: 4, Alpha: 8, Seed: 1}
				cfg.LR = 5e-2
			}
			run := func(pre bool, dir string, cancelAt int) (*engine.Engine[encode.EncodedPair], []engine.Metrics, *countingReference, error) {
				t.Helper()
				e := newEngine(t, cfg, 0.1)
				items := pairs
				if pre {
					var err error
					if items, err = ReferenceFromPolicy(context.Background(), e, pairs, nil); err != nil {
						t.Fatal(err)
					}
				}
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				ref := &countingReference{Reference: e.StartingReference()}
				src, err := e.ItemsWithReference(items, ref)
				if err != nil {
					t.Fatal(err)
				}
				var got []engine.Metrics
				rc := engine.RunConfig[encode.EncodedPair]{Metrics: jsonRecorder{&got}}
				if dir != "" {
					rc.Checkpoint, rc.CheckpointEvery = filepath.Join(dir, "checkpoint.bin"), 1
				}
				if cancelAt > 0 {
					rc.Metrics = &cancelAfter{n: cancelAt, cancel: cancel}
				}
				return e, got, ref, e.Run(ctx, src, rc)
			}
			pre, preLines, preRef, err := run(true, "", 0)
			if err != nil {
				t.Fatal(err)
			}
			if len(preRef.batches) != 0 {
				t.Fatalf("precomputed pairs had %d batches computed again", len(preRef.batches))
			}
			step, stepLines, stepRef, err := run(false, "", 0)
			if err != nil {
				t.Fatal(err)
			}
			if len(stepLines) != cfg.MaxSteps {
				t.Fatalf("%d step lines, want %d", len(stepLines), cfg.MaxSteps)
			}
			if a, b := untimedLines(t, stepLines), untimedLines(t, preLines); a != b {
				t.Fatalf("metrics with each step's reference:\n%s\nwith the reference precomputed:\n%s", a, b)
			}
			for i, p := range step.Params() {
				if !slices.Equal(p, pre.Params()[i]) {
					t.Fatalf("%s differs from the precomputed run's", step.Trainable()[i])
				}
			}
			if n := stepRef.items(); n != len(pairs) {
				t.Fatalf("%d pairs' references computed over 3 epochs, want each of the %d once", n, len(pairs))
			}

			// Stopped after step 4 (in the second epoch, with a checkpoint), then resumed.
			dir := t.TempDir()
			if _, _, _, err := run(false, dir, 4); !errors.Is(err, context.Canceled) {
				t.Fatalf("want the run stopped, got %v", err)
			}
			resumed, _, resumedRef, err := run(false, dir, 0)
			if err != nil {
				t.Fatal(err)
			}
			if len(resumedRef.batches) == 0 {
				t.Fatal("the resumed run computed no reference")
			}
			for i, p := range resumed.Params() {
				if !slices.Equal(p, pre.Params()[i]) {
					t.Fatalf("%s of the resumed run differs from the precomputed run's", resumed.Trainable()[i])
				}
			}
		})
	}
}

// TestMaxStepsComputesItsStepsReference: a one-step run over 40 shuffled pairs computes
// the reference of its step's own micro-batches, as they are, and nothing else: start-up
// does not grow with the dataset.
func TestMaxStepsComputesItsStepsReference(t *testing.T) {
	pairs, pad := bundledPairs(t, 40)
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimAdamW}, LR: 1e-3, BatchSize: 4, GradAccum: 2, MaxSteps: 1, Seed: 1, Shuffle: true, Threads: 1, PadID: pad}
	e := newEngine(t, cfg, 0.1)
	ref := &countingReference{Reference: e.StartingReference()}
	src, err := e.ItemsWithReference(pairs, ref)
	if err != nil {
		t.Fatal(err)
	}
	round, err := src.Round(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	micro := round.Steps[0]
	if len(micro) != cfg.GradAccum || len(ref.batches) != len(micro) {
		t.Fatalf("%d batches computed for a step of %d micro-batches", len(ref.batches), len(micro))
	}
	for k, b := range micro {
		if slices.Equal(indexes(b), indexes(pairs[k*cfg.BatchSize:(k+1)*cfg.BatchSize])) {
			t.Fatalf("micro-batch %d is in file order: the run was not shuffled", k)
		}
		if got, want := indexes(ref.batches[k]), indexes(b); !slices.Equal(got, want) {
			t.Fatalf("reference batch %d holds pairs %v, the step's micro-batch %v", k, got, want)
		}
		for _, p := range b {
			if !(DPO{}).HasReference(p) {
				t.Fatalf("pair of row %d has no reference", p.Row)
			}
		}
	}
}

// indexes are the pairs' indexes in their file.
func indexes(pairs []encode.EncodedPair) []int {
	out := make([]int, len(pairs))
	for i, p := range pairs {
		out[i] = p.Index
	}
	return out
}

// TestReferenceInterruptSavesCheckpoint: a cancellation (Ctrl-C) while a step's
// reference is computed stops the run with the context's error and the checkpoint of the
// last finished step.
func TestReferenceInterruptSavesCheckpoint(t *testing.T) {
	pairs, pad := bundledPairs(t, 16)
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimAdamW}, LR: 1e-3, BatchSize: 4, MaxSteps: 4, Threads: 1, PadID: pad}
	e := newEngine(t, cfg, 0.1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	calls := 0
	ref := &countingReference{Reference: e.StartingReference(), before: func() {
		if calls++; calls == 3 {
			cancel()
		}
	}}
	src, err := e.ItemsWithReference(pairs, ref)
	if err != nil {
		t.Fatal(err)
	}
	ckpt := filepath.Join(t.TempDir(), "checkpoint.bin")
	var got []engine.Metrics
	err = e.Run(ctx, src, engine.RunConfig[encode.EncodedPair]{Checkpoint: ckpt, Metrics: jsonRecorder{&got}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v", err)
	}
	if e.Step() != 2 || len(got) != 2 {
		t.Fatalf("stopped at step %d with %d metrics lines, want 2 and 2", e.Step(), len(got))
	}
	if _, err := os.Stat(ckpt); err != nil {
		t.Fatalf("no checkpoint: %v", err)
	}
	// Through RunTraining, the message says the checkpoint was saved.
	e2 := newEngine(t, cfg, 0.1)
	ctx2, cancel2 := context.WithCancel(context.Background())
	calls2 := 0
	_, err = engine.RunTrainingWithReference(ctx2, e2, pairs, nil, &countingReference{Reference: e2.StartingReference(), before: func() {
		if calls2++; calls2 == 2 {
			cancel2()
		}
	}}, engine.RunOptions{Out: t.TempDir()})
	if !errors.Is(err, engine.ErrInterrupted) || !strings.Contains(err.Error(), "checkpoint saved to") {
		t.Fatalf("want the interruption message, got %v", err)
	}
}
