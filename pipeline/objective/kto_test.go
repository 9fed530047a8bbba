package objective

import (
	"context"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/lm"
	"ortalign/tokenize"
)

// ktoOracle is testdata/expected/kto_oracle_llama.json.gz, written by
// testdata/gen_kto_oracle.py (PyTorch autograd, float64, TRL's KTOTrainer): eight unpaired
// rows, their KL rows, and per case the loss configuration, the reference log-probs to
// feed, the loss, TRL's stored metrics and the gradients of the ONNX file's initializers.
type ktoOracle struct {
	PadID           int64     `json:"pad_id"`
	PromptIDs       [][]int64 `json:"prompt_ids"`
	CompletionIDs   [][]int64 `json:"completion_ids"`
	Labels          []bool    `json:"labels"`
	KLPromptIDs     [][]int64 `json:"kl_prompt_ids"`
	KLCompletionIDs [][]int64 `json:"kl_completion_ids"`
	Cases           []struct {
		Name        string             `json:"name"`
		LossType    string             `json:"loss_type"`
		Beta        float64            `json:"beta"`
		Desirable   float64            `json:"desirable_weight"`
		Undesirable float64            `json:"undesirable_weight"`
		Ref         []float64          `json:"reference_logps_fed"`
		RefKL       []float64          `json:"reference_KL_logps_fed"`
		Loss        float64            `json:"loss_float64"`
		Metrics     map[string]float64 `json:"metrics"`
		OnnxGrads   map[string]map[string]struct {
			Values []float64 `json:"values"`
		} `json:"onnx_grads"`
	} `json:"cases"`
}

func joined(p, c []int64) lm.Sequence {
	return lm.Sequence{IDs: slices.Concat(p, c), CompletionStart: len(p)}
}

// rows are the oracle's rows with their KL sequences formed by PairKL in blocks of block.
func (o *ktoOracle) rows(t *testing.T, block int) []encode.EncodedUnpaired {
	t.Helper()
	rows := make([]encode.EncodedUnpaired, len(o.Labels))
	for i := range rows {
		rows[i] = encode.EncodedUnpaired{Row: int64(i), Seq: joined(o.PromptIDs[i], o.CompletionIDs[i]), Desirable: o.Labels[i]}
	}
	if err := encode.PairKL(rows, block, 0, tokenize.KeepStart); err != nil {
		t.Fatal(err)
	}
	return rows
}

// TestKTOLossOracle: for every case of the oracle (kto with the KL estimate above 0 and
// clamped at 0, β and both weights, apo_zero_unpaired), the training graph's loss equals
// PyTorch's on TRL's formulas within oracleLossTol relative, each initializer's gradient
// the oracle holds within oracleGradTol relative L2, and the metrics TRL's stored values
// (kl, rewards/logps sums, counts). PairKL forms the oracle's KL rows from its rows.
func TestKTOLossOracle(t *testing.T) {
	var o ktoOracle
	readOracle(t, "../../testdata/expected/kto_oracle_llama.json.gz", &o)
	rows := o.rows(t, len(o.Labels))
	for i, r := range rows {
		if want := joined(o.KLPromptIDs[i], o.KLCompletionIDs[i]); !slices.Equal(r.KL.IDs, want.IDs) || r.KL.CompletionStart != want.CompletionStart {
			t.Fatalf("row %d: PairKL gives %v, TRL's _get_kl_dataset %v", i, r.KL, want)
		}
	}
	const file = "models/llama_opset17.onnx"
	m := loadModel(t, filepath.Join("../../testdata", file))
	types := map[string]bool{}
	for _, c := range o.Cases {
		types[c.LossType] = true
		t.Run(c.Name, func(t *testing.T) {
			obj := KTO{Config: KTOConfig{LossType: c.LossType, Beta: c.Beta, DesirableWeight: c.Desirable, UndesirableWeight: c.Undesirable}}
			cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimSGD}, LR: 1, BatchSize: len(rows), MaxSteps: 1, Threads: 1, PadID: o.PadID}
			e, err := engine.NewEngine(file, m, cfg, obj)
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			items := slices.Clone(rows)
			for i := range items {
				items[i].RefLogps, items[i].RefKLLogps = &c.Ref[i], &c.RefKL[i]
			}
			metrics, err := e.ComputeGradients(items)
			if err != nil {
				t.Fatal(err)
			}
			loss := metrics.Value(engine.LossOutput)
			if rel := relErr(loss, c.Loss); rel > oracleLossTol {
				t.Errorf("loss %.9f, PyTorch %.9f (relative error %.1e)", loss, c.Loss, rel)
			}
			for name, want := range c.Metrics {
				got, ok := metrics.Get(name)
				if d := nanToInf(math.Abs(got - want)); !ok || d > 1e-5*math.Max(1, math.Abs(want)) {
					t.Errorf("metric %s = %.9g (present %v), TRL %.9g", name, got, ok, want)
				}
			}
			grads := c.OnnxGrads[file]
			worst, compared := 0.0, 0
			for i, name := range e.Trainable() {
				w, ok := grads[name]
				if !ok {
					continue
				}
				compared++
				e := relL2(e.Grads()[i], w.Values)
				if e > oracleGradTol {
					t.Errorf("%s: gradient relative L2 error %.2e", name, e)
				}
				worst = max(worst, e)
			}
			if compared != len(grads) || compared < 7 {
				t.Fatalf("compared %d tensors of the oracle's %d", compared, len(grads))
			}
			t.Logf("loss %.9f (PyTorch %.9f), kl %.6f; %d tensors, worst gradient relative L2 %.2e", loss, c.Loss, metrics.Value("kl"), compared, worst)
		})
	}
	for _, lt := range KTOLossTypes {
		if !types[lt] {
			t.Errorf("loss type %s has no oracle case", lt)
		}
	}
}

// TestKTOReferenceFromPolicy: the reference computed by the engine's forward graph is the
// starting model's log-probs of the rows and KL rows (equal to a separate reference
// model's, the same file), so that at the start every reward and the KL estimate are 0
// and the kto loss is w·(1 − σ(0)) = 0.5 on both labels.
func TestKTOReferenceFromPolicy(t *testing.T) {
	var o ktoOracle
	readOracle(t, "../../testdata/expected/kto_oracle_llama.json.gz", &o)
	rows := o.rows(t, 3)
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimSGD}, LR: 1, BatchSize: 3, MaxSteps: 1, Threads: 1, PadID: o.PadID}
	e := newEngineOf(t, engineModel, cfg, KTO{Config: KTOConfig{Beta: 0.1, DesirableWeight: 1, UndesirableWeight: 1}})
	got, from, err := KTOReference(context.Background(), e, nil, rows, true, engine.ConsecutiveBatches(len(rows), 3), nil)
	if err != nil || from != RefFromPolicy {
		t.Fatalf("%s: %v", from, err)
	}
	ref, err := lm.LoadLogProbModel(engineModel, lm.ModelOptions{Threads: 1, PadID: o.PadID})
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	want, from, err := KTOReference(context.Background(), nil, ref, rows, true, engine.ConsecutiveBatches(len(rows), 5), nil)
	if err != nil || from != RefFromModel {
		t.Fatalf("%s: %v", from, err)
	}
	for i := range rows {
		if got[i].RefLogps == nil || got[i].RefKLLogps == nil || rows[i].RefLogps != nil {
			t.Fatalf("row %d: reference %v, %v (the input rows must stay as they were)", i, got[i].RefLogps, got[i].RefKLLogps)
		}
		for _, p := range [][2]float64{{*got[i].RefLogps, *want[i].RefLogps}, {*got[i].RefKLLogps, *want[i].RefKLLogps}} {
			if d := math.Abs(p[0] - p[1]); !(d < 1e-4*math.Max(1, math.Abs(p[1]))) {
				t.Errorf("row %d: the engine's reference %.6f, the reference model's %.6f", i, p[0], p[1])
			}
		}
		if *got[i].RefKLLogps == *got[i].RefLogps {
			t.Errorf("row %d: KL reference equals the row's: the KL rows were not scored", i)
		}
	}
	m, err := e.ComputeGradients(got[:3])
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"rewards/chosen_sum", "rewards/rejected_sum", "kl"} {
		if v := m.Value(name); math.Abs(v) > 1e-5 {
			t.Errorf("%s at the start: %g, want 0", name, v)
		}
	}
	if v := m.Value(engine.LossOutput); math.Abs(v-0.5) > 1e-6 || m.Value("count/chosen")+m.Value("count/rejected") != 3 {
		t.Errorf("start: %v", m)
	}
	apo, _, err := KTOReference(context.Background(), nil, ref, rows, false, engine.ConsecutiveBatches(len(rows), 4), nil)
	if err != nil || apo[0].RefKLLogps != nil || *apo[5].RefLogps != *want[5].RefLogps {
		t.Fatalf("without KL: %v", err)
	}
}

// TestKTOConfig: loss types, β and weights are checked; TRL's advice on the weights of
// unequal desirable and undesirable counts (Eq. 8 of the KTO paper).
func TestKTOConfig(t *testing.T) {
	ok := KTOConfig{LossType: KTOLossAPOZeroUnpaired, Beta: 0.1, DesirableWeight: 1, UndesirableWeight: 0}
	if err := ok.Validate(); err != nil || ok.UsesKL() || !(KTOConfig{}).UsesKL() {
		t.Fatalf("%v", err)
	}
	for _, c := range []KTOConfig{
		{LossType: "sigmoid", Beta: 0.1},
		{Beta: 0},
		{Beta: math.Inf(1)},
		{Beta: 0.1, DesirableWeight: -1},
		{Beta: 0.1, UndesirableWeight: math.NaN()},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	c := KTOConfig{Beta: 0.1, DesirableWeight: 1, UndesirableWeight: 1}
	if a := KTOWeightAdvice(10, 10, c); a != "" {
		t.Errorf("balanced: %q", a)
	}
	// 30 desirable, 10 undesirable: TRL recommends a desirable weight in [0.33, 0.44] or an
	// undesirable weight in [2.26, 3].
	a := KTOWeightAdvice(30, 10, c)
	if !strings.Contains(a, "[0.33, 0.44]") || !strings.Contains(a, "[2.26, 3]") {
		t.Errorf("advice %q", a)
	}
	c.UndesirableWeight = 2.5
	if a := KTOWeightAdvice(30, 10, c); a != "" {
		t.Errorf("weights in range: %q", a)
	}
}
