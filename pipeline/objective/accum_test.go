package objective

import (
	"context"
	"fmt"
	"math"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/lm"
	"slices"
	"testing"
)

// accumTol bounds the difference between gradient accumulation and one large batch:
// the same float32 sums added in another order.
const accumTol = 1e-5

// accumRun trains a fresh engine on items with batch size × accumulation steps and
// returns it, its parameters before training, and its metric lines.
func accumRun[T any](t *testing.T, newE func(engine.TrainConfig) *engine.Engine[T], cfg engine.TrainConfig, items []T) (*engine.Engine[T], [][]float32, []engine.Metrics) {
	t.Helper()
	e := newE(cfg)
	start := cloneBuffers(e.Params())
	var got []engine.Metrics
	if err := e.Train(context.Background(), items, engine.RunConfig[T]{Metrics: jsonRecorder{&got}}); err != nil {
		t.Fatal(err)
	}
	if len(got) != cfg.MaxSteps || e.Step() != cfg.MaxSteps {
		t.Fatalf("%d metric lines, step %d; want %d", len(got), e.Step(), cfg.MaxSteps)
	}
	return e, start, got
}

// checkAccumulation: Engine.Train with each (batch size, accumulation steps) of shapes
// over the same items (seeded shuffle, AdamW, several steps) logs the metrics and ends
// with the parameters of batch size len(items) without accumulation: every optimizer
// step sees all items, split by the engine's own batching into micro-batches of unequal
// sizes or weights.
func checkAccumulation[T any](t *testing.T, newE func(engine.TrainConfig) *engine.Engine[T], cfg engine.TrainConfig, items []T, shapes [][2]int) {
	cfg.BatchSize, cfg.GradAccum = len(items), 1
	one, start, want := accumRun(t, newE, cfg, items)
	for _, s := range shapes {
		t.Run(fmt.Sprintf("%dx%d", s[0], s[1]), func(t *testing.T) {
			c := cfg
			c.BatchSize, c.GradAccum = s[0], s[1]
			if p, err := c.Plan(len(items)); err != nil || p.StepsPerEpoch != 1 || p.Accum != s[1] {
				t.Fatalf("plan %+v, %v: want one step per epoch over %d micro-batches", p, err, s[1])
			}
			e, _, got := accumRun(t, newE, c, items)
			for k := range want {
				for _, m := range want[k] {
					if engine.WallClock(m.Name) {
						continue // time/step_s differs from run to run
					}
					a, b := m.Value, got[k].Value(m.Name)
					if d := nanToInf(math.Abs(a - b)); d > accumTol*math.Max(1, math.Abs(a)) {
						t.Errorf("step %d: %s %.9g with accumulation, %.9g in one batch", k+1, m.Name, b, a)
					}
				}
			}
			// What training moved each tensor by, with and without accumulation.
			for i, name := range e.Trainable() {
				d1, d2 := make([]float64, len(start[i])), make([]float32, len(start[i]))
				for j := range d1 {
					d1[j] = float64(one.Params()[i][j] - start[i][j])
					d2[j] = e.Params()[i][j] - start[i][j]
				}
				if r := relL2(d2, d1); r > 10*accumTol {
					t.Errorf("%s: update differs from one batch's by %.2e (relative L2)", name, r)
				}
			}
		})
	}
}

// TestTrainAccumulationEqualsOneBatchDPO: DPO with 4 pairs × 2 accumulation steps (and
// 3+3+2, 2 × 4) through Engine.Train equals one batch of 8.
func TestTrainAccumulationEqualsOneBatchDPO(t *testing.T) {
	pairs, pad := enginePairs(t)
	pairs = pairs[:8]
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimAdamW}, LR: 1e-3, Scheduler: engine.SchedulerConstant, MaxSteps: 3, Seed: 5, Shuffle: true, PadID: pad}
	newE := func(c engine.TrainConfig) *engine.Engine[encode.EncodedPair] { return newEngine(t, c, 0.1) }
	checkAccumulation(t, newE, cfg, pairs, [][2]int{{4, 2}, {3, 3}, {2, 4}})
}

// TestTrainAccumulationEqualsOneBatchSFT: SFT with 4 sequences × 2 accumulation steps
// (and 3+3+2) through Engine.Train equals one batch of 8, although the micro-batches
// hold different numbers of completion tokens.
func TestTrainAccumulationEqualsOneBatchSFT(t *testing.T) {
	var o sftOracle
	readOracle(t, "../../testdata/expected/sft_oracle_llama.json.gz", &o)
	seqs := o.sequences()
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimAdamW}, LR: 3e-3, Scheduler: engine.SchedulerConstant, MaxSteps: 3, Seed: 5, Shuffle: true, Threads: 1, PadID: o.PadID}
	newE := func(c engine.TrainConfig) *engine.Engine[lm.Sequence] { return newEngineOf(t, engineModel, c, SFT{}) }
	checkAccumulation(t, newE, cfg, seqs, [][2]int{{4, 2}, {3, 3}})
}

// TestSFTTokenWeighting: SFT's loss is a mean over completion tokens, so the loss and
// gradient of a batch are its micro-batches' weighted by their completion tokens
// (SFT.Weight) — and not their plain mean, which differs measurably on this batch
// (4 + 4 sequences of unequal completion lengths).
func TestSFTTokenWeighting(t *testing.T) {
	var o sftOracle
	readOracle(t, "../../testdata/expected/sft_oracle_llama.json.gz", &o)
	seqs := o.sequences()
	e := newEngineOf(t, engineModel, engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimSGD}, LR: 1, BatchSize: 8, Threads: 1, PadID: o.PadID}, SFT{})
	run := func(batch []lm.Sequence) (float64, [][]float32) {
		t.Helper()
		m, err := e.ComputeGradients(batch)
		if err != nil {
			t.Fatal(err)
		}
		return m.Value(engine.LossOutput), cloneBuffers(e.Grads())
	}
	lossAll, gradAll := run(seqs)
	parts := [][]lm.Sequence{seqs[:4], seqs[4:]}
	var w [2]float64
	var loss [2]float64
	var grad [2][][]float32
	for k, p := range parts {
		w[k] = (SFT{}).Weight(p)
		tokens := 0
		for _, s := range p {
			tokens += len(s.IDs) - s.CompletionStart
		}
		if w[k] != float64(tokens) {
			t.Fatalf("micro-batch %d: weight %v, completion tokens %d", k, w[k], tokens)
		}
		loss[k], grad[k] = run(p)
	}
	if w[0] == w[1] {
		t.Fatalf("both micro-batches hold %v completion tokens: the test needs unequal ones", w[0])
	}
	if w[0]+w[1] != float64(o.Tokens) || (SFT{}).Weight(seqs) != float64(o.Tokens) {
		t.Fatalf("weights %v + %v, PyTorch counts %d completion tokens", w[0], w[1], o.Tokens)
	}
	combine := func(a, b float64) (float64, []float64) {
		l := a*loss[0] + b*loss[1]
		var errs []float64
		for i := range gradAll {
			want := make([]float64, len(gradAll[i]))
			for j := range want {
				want[j] = float64(gradAll[i][j])
			}
			g := make([]float32, len(want))
			for j := range g {
				g[j] = float32(a*float64(grad[0][i][j]) + b*float64(grad[1][i][j]))
			}
			errs = append(errs, relL2(g, want))
		}
		return relErr(l, lossAll), errs
	}
	total := w[0] + w[1]
	lossErr, gradErrs := combine(w[0]/total, w[1]/total)
	if lossErr > accumTol || slices.Max(gradErrs) > accumTol {
		t.Fatalf("token-weighted micro-batches: loss off by %.2e, gradients by up to %.2e (relative)", lossErr, slices.Max(gradErrs))
	}
	plainLoss, plainGrads := combine(0.5, 0.5)
	if plainLoss < 10*accumTol || slices.Max(plainGrads) < 10*accumTol {
		t.Fatalf("the plain mean of the micro-batches is within %.2e (loss) and %.2e (gradients) of the batch: this check cannot tell the weightings apart", plainLoss, slices.Max(plainGrads))
	}
	t.Logf("tokens %v + %v: token-weighted loss rel %.1e, gradients %.1e; plain mean: loss rel %.1e, gradients %.1e",
		w[0], w[1], lossErr, slices.Max(gradErrs), plainLoss, slices.Max(plainGrads))
}
