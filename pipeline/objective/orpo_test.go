package objective

import (
	"math"
	"testing"

	"ortalign/onnx"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
)

// refFreeOracle is testdata/expected/reffree_oracle_llama.json.gz, written by
// testdata/gen_reffree_oracle.py (PyTorch autograd, float64, TRL v1.x's ORPOTrainer and
// CPOTrainer) on the batch of dpo_grads_llama.json.gz.
type refFreeOracle struct {
	dpoOracle // input_ids, prompt_len, seq_len, pad_id
	Cases     []struct {
		Name           string             `json:"name"`
		Method         string             `json:"method"`
		LossType       string             `json:"loss_type"`
		Beta           float64            `json:"beta"`
		Alpha          float64            `json:"cpo_alpha"`
		SimPOGamma     float64            `json:"simpo_gamma"`
		LabelSmoothing float64            `json:"label_smoothing"`
		Loss           float64            `json:"loss"`
		Logps          []float64          `json:"logps"`
		Metrics        map[string]float64 `json:"metrics"`
		OnnxGrads      map[string]struct {
			Values []float64 `json:"values"`
		} `json:"onnx_grads"`
	} `json:"cases"`
}

// The reference-free objectives key the graph cache by their loss heads' sources.
var _, _ engine.SourceDigester = ORPO{}, CPO{}

// refFreeGradients runs one forward and backward pass of obj on micro-batches of pairs
// through the engine: the step's metrics, the trained initializers and their gradients.
func refFreeGradients(t *testing.T, m *onnx.Model, obj engine.Objective[encode.EncodedPair], micro [][]encode.EncodedPair, pad int64) (engine.Metrics, []string, [][]float32) {
	t.Helper()
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimSGD}, LR: 1, BatchSize: len(micro[0]), Threads: 1, PadID: pad}
	e, err := engine.NewEngine("llama", m, cfg, obj)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	metrics, err := e.Gradients(micro)
	if err != nil {
		t.Fatal(err)
	}
	return metrics, e.Trainable(), e.Grads()
}

// TestReferenceFreeLossesMatchPyTorch: on the oracle's fixed batch, ORPO (two βs) and CPO
// (sigmoid with and without label smoothing, hinge, ipo, simpo with and without the NLL
// term) give PyTorch's loss, compared log-probs and gradients from TRL's formulas, and
// the metrics TRL logs on that batch: ORPO's nll_loss, log_odds_ratio and
// log_odds_chosen, CPO's nll_loss, and the rewards. ORPO's loss is nll_loss −
// β·log_odds_ratio. SimPO without NLL split into micro-batches combines into the one-batch
// loss and gradient.
func TestReferenceFreeLossesMatchPyTorch(t *testing.T) {
	var o refFreeOracle
	readOracle(t, "../../testdata/expected/reffree_oracle_llama.json.gz", &o)
	o.RefLogps = make([]float64, len(o.InputIDs)) // none: the losses are reference-free
	pairs, _, _ := oracleBatch(&o.dpoOracle)
	m, err := onnx.Load("../../testdata/models/llama_opset17.onnx")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, c := range o.Cases {
		t.Run(c.Name, func(t *testing.T) {
			run := func(micro [][]encode.EncodedPair) (engine.Metrics, []string, [][]float32) {
				if c.Method == "orpo" {
					return refFreeGradients(t, m, ORPO{Beta: c.Beta}, micro, o.PadID)
				}
				obj := CPO{Loss: c.LossType, Beta: c.Beta, Alpha: c.Alpha, SimPOGamma: c.SimPOGamma, LabelSmoothing: c.LabelSmoothing}
				seen[obj.loss()] = true
				return refFreeGradients(t, m, obj, micro, o.PadID)
			}
			check := func(label string, metrics engine.Metrics, names []string, got [][]float32) {
				if d := relErr(metrics.Value(engine.LossOutput), c.Loss); d > oracleLossTol {
					t.Errorf("%s: loss %.9f, PyTorch %.9f (relative error %.1e)", label, metrics.Value(engine.LossOutput), c.Loss, d)
				}
				worst, compared := 0.0, 0
				for i, name := range names {
					w, ok := c.OnnxGrads[name]
					if !ok {
						continue
					}
					compared++
					if e := relL2(got[i], w.Values); e > worst {
						worst = e
					}
				}
				if compared != len(c.OnnxGrads) || compared == 0 {
					t.Fatalf("%s: compared %d gradients of the oracle's %d", label, compared, len(c.OnnxGrads))
				}
				if worst > oracleGradTol {
					t.Errorf("%s: worst gradient relative L2 error %.2e, want <= %.1e", label, worst, oracleGradTol)
				}
				t.Logf("%s: loss %.9f (PyTorch %.9f); %d tensors, worst gradient relative L2 %.2e", label, metrics.Value(engine.LossOutput), c.Loss, compared, worst)
			}
			metrics, names, got := run([][]encode.EncodedPair{pairs})
			check("one batch", metrics, names, got)
			if len(c.Metrics) < 7 {
				t.Fatalf("oracle has %d metrics", len(c.Metrics))
			}
			for name, want := range c.Metrics {
				gotV, ok := metrics.Get(name)
				if !ok {
					t.Errorf("metric %s missing (have %v)", name, metrics)
					continue
				}
				if math.Abs(gotV-want) > 2e-6*math.Max(1, math.Abs(want)) {
					t.Errorf("%s: %.9f, TRL's formula %.9f", name, gotV, want)
				}
			}
			if c.Method == "orpo" {
				nll, _ := metrics.Get("nll_loss")
				ratio, _ := metrics.Get("log_odds_ratio")
				if d := math.Abs(metrics.Value(engine.LossOutput) - (nll - c.Beta*ratio)); d > 1e-6 {
					t.Errorf("loss %.9f != nll_loss − β·log_odds_ratio = %.9f", metrics.Value(engine.LossOutput), nll-c.Beta*ratio)
				}
			}
			if c.Method == "cpo" && c.LossType == CPOSimPO && c.Alpha == 0 {
				metrics, names, got := run([][]encode.EncodedPair{pairs[:2], pairs[2:]})
				check("micro-batches 2+2", metrics, names, got)
			}
		})
	}
	for _, lt := range CPOLossTypes {
		if !seen[lt] {
			t.Errorf("CPO loss %s has no oracle case", lt)
		}
	}
}

// TestORPOValidate: β must be a positive number.
func TestORPOValidate(t *testing.T) {
	for _, b := range []float64{0, -1, math.NaN(), math.Inf(1)} {
		if err := (ORPO{Beta: b}).Validate(); err == nil {
			t.Errorf("beta %g: no error", b)
		}
	}
	if err := (ORPO{Beta: DefaultORPOBeta}).Validate(); err != nil {
		t.Error(err)
	}
}
