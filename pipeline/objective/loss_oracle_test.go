package objective

import (
	"fmt"
	"path/filepath"
	"slices"
	"testing"

	"ortalign/onnx"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
)

// lossOracle is testdata/expected/loss_oracle_llama.json.gz, written by
// testdata/gen_loss_oracle.py (PyTorch autograd, float64, TRL v1.x's
// DPOTrainer._compute_loss): the batch of dpo_grads_llama.json.gz, and per loss case its
// configuration, the reference log-probs to feed, the loss and the gradient of every
// initializer of the ONNX file.
type lossOracle struct {
	dpoOracle                  // input_ids, prompt_len, seq_len, ref_logps, pad_id
	Cases     []lossOracleCase `json:"cases"`
}

type lossOracleCase struct {
	Name           string    `json:"name"`
	LossType       []string  `json:"loss_type"`
	LossWeights    []float64 `json:"loss_weights"`
	Beta           float64   `json:"beta"`
	LabelSmoothing float64   `json:"label_smoothing"`
	FDivergence    string    `json:"f_divergence_type"`
	FAlphaCoef     float64   `json:"f_alpha_divergence_coef"`
	DiscoPopTau    float64   `json:"discopop_tau"`
	UseWeighting   bool      `json:"use_weighting"`
	LDAlpha        *float64  `json:"ld_alpha"`
	ReferenceFree  bool      `json:"reference_free"`
	RefLogps       []float64 `json:"ref_logps_fed"`
	PolicyLogps    []float64 `json:"policy_logps"`
	ActivePairs    *int      `json:"active_pairs"`
	Loss           float64   `json:"loss_float64"`
	OnnxGrads      map[string]map[string]struct {
		Values []float64 `json:"values"`
	} `json:"onnx_grads"`
}

// config is the case's LossConfig (TRL's defaults of options that do not apply are left
// unset, as Validate wants).
func (c lossOracleCase) config() LossConfig {
	cfg := LossConfig{
		Types: c.LossType, Weights: c.LossWeights, Beta: c.Beta, LabelSmoothing: c.LabelSmoothing,
		UseWeighting: c.UseWeighting, LDAlpha: c.LDAlpha, ReferenceFree: c.ReferenceFree,
	}
	if c.FDivergence != FDivReverseKL {
		cfg.FDivergence = c.FDivergence
	}
	if c.FDivergence == FDivAlpha {
		cfg.FAlphaCoef = c.FAlphaCoef
	}
	if slices.Contains(c.LossType, LossDiscoPop) {
		cfg.DiscoPopTau = c.DiscoPopTau
	}
	return cfg
}

// oracleGradients builds the training graph of loss on the model file through the
// trainer and runs one forward and backward pass on pairs: the loss, the sequence
// log-probs, the trained initializers and their gradients. (The one use of the trainer
// API in the loss tests.)
func oracleGradients(t *testing.T, file string, m *onnx.Model, loss LossConfig, pairs []encode.EncodedPair, refC, refR []float64, pad int64) (float64, []string, [][]float32) {
	t.Helper()
	cfg := engine.TrainConfig{
		Optim: engine.OptimConfig{Name: engine.OptimSGD}, LR: 1, Scheduler: "constant",
		BatchSize: len(pairs), MaxSteps: 1, Threads: 1, PadID: pad,
	}
	tr, err := engine.NewEngine(file, m, cfg, DPO{Loss: loss})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	metrics, err := tr.ComputeGradients(WithReference(pairs, refC, refR))
	if err != nil {
		t.Fatal(err)
	}
	return metrics.Value(engine.LossOutput), tr.Trainable(), tr.Grads()
}

// TestLossOracle: for every case of the oracle (each TRL loss type, several at once with
// weights, the f-divergences, label smoothing, WPO weighting, LD-DPO, reference-free),
// the generated training graph's loss equals PyTorch's within oracleLossTol relative and
// each initializer's gradient the oracle holds (all of them for six cases) within
// oracleGradTol relative L2 (a NaN fails both).
func TestLossOracle(t *testing.T) {
	var o lossOracle
	readOracle(t, "../../testdata/expected/loss_oracle_llama.json.gz", &o)
	pairs, _, _ := oracleBatch(&o.dpoOracle)
	const file = "models/llama_opset17.onnx"
	m, err := onnx.Load(filepath.Join("../../testdata", file))
	if err != nil {
		t.Fatal(err)
	}
	covered := map[string]bool{}
	for _, c := range o.Cases {
		for _, lt := range c.LossType {
			covered[lt] = true
		}
	}
	for _, lt := range LossTypes {
		if !covered[lt] {
			t.Errorf("loss type %s has no oracle case", lt)
		}
	}
	for _, c := range o.Cases {
		t.Run(c.Name, func(t *testing.T) {
			cfg := c.config()
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			grads, ok := c.OnnxGrads[file]
			if !ok {
				t.Fatalf("oracle case has no gradients for %s", file)
			}
			n := len(pairs)
			loss, names, got := oracleGradients(t, file, m, cfg, pairs, c.RefLogps[:n], c.RefLogps[n:], o.PadID)
			// The oracle holds every initializer's gradient for a few cases, and seven
			// tensors' (the RMSNorm weights, two matrices) for the others.
			if len(grads) != len(names) && len(grads) != 7 {
				t.Fatalf("trains %d tensors, oracle has %d", len(names), len(grads))
			}
			relLoss := relErr(loss, c.Loss)
			if relLoss > oracleLossTol {
				t.Errorf("loss %.9f, PyTorch %.9f (relative error %.1e)", loss, c.Loss, relLoss)
			}
			worst, worstName, compared := 0.0, "", 0
			for i, name := range names {
				w, ok := grads[name]
				if !ok {
					continue
				}
				compared++
				if len(w.Values) != len(got[i]) {
					t.Fatalf("%s: %d gradient values, oracle %d", name, len(got[i]), len(w.Values))
				}
				e := relL2(got[i], w.Values)
				if e > oracleGradTol {
					t.Errorf("%s: gradient relative L2 error %.2e", name, e)
				}
				if e > worst {
					worst, worstName = e, name
				}
			}
			if compared != len(grads) {
				t.Fatalf("compared %d tensors of the oracle's %d", compared, len(grads))
			}
			active := ""
			if c.ActivePairs != nil {
				active = fmt.Sprintf("; hinge active pairs %d/%d", *c.ActivePairs, n)
			}
			t.Logf("loss %.9f (PyTorch %.9f, rel %.1e); %d tensors, worst gradient relative L2 %.2e (%s)%s",
				loss, c.Loss, relLoss, compared, worst, worstName, active)
		})
	}
}
