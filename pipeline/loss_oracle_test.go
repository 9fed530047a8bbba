package pipeline

import (
	"fmt"
	"math"
	"path/filepath"
	"testing"

	"ortalign/onnx"
)

// lossOracle is testdata/expected/loss_oracle_llama.json.gz, written by
// testdata/gen_loss_oracle.py (PyTorch autograd, float64): the batch and reference
// log-probs of dpo_grads_llama.json.gz, and per loss case the loss and the gradient of
// every initializer of the ONNX file.
type lossOracle struct {
	dpoOracle // input_ids, prompt_len, seq_len, ref_logps, pad_id
	Cases     []struct {
		Name           string  `json:"name"`
		LossType       string  `json:"loss_type"`
		Beta           float64 `json:"beta"`
		LabelSmoothing float64 `json:"label_smoothing"`
		ActivePairs    *int    `json:"active_pairs"`
		Loss           float64 `json:"loss_float64"`
		OnnxGrads      map[string]map[string]struct {
			Values []float64 `json:"values"`
		} `json:"onnx_grads"`
	} `json:"cases"`
}

// TestLossOracle: for the sigmoid loss with label smoothing, IPO (length-normalised) and
// hinge (all pairs active, and half of them past the hinge), the generated training
// graph's loss equals PyTorch's within 1e-6 relative and every initializer's gradient
// within 1e-3 relative L2.
func TestLossOracle(t *testing.T) {
	var o lossOracle
	readOracle(t, "../testdata/expected/loss_oracle_llama.json.gz", &o)
	pairs, refC, refR := oracleBatch(&o.dpoOracle)
	const file = "models/llama_opset17.onnx"
	cases := []struct {
		name string
		loss LossConfig
	}{
		{"sigmoid_ls0.1", LossConfig{Type: LossSigmoid, Beta: 0.1, LabelSmoothing: 0.1}},
		{"ipo", LossConfig{Type: LossIPO, Beta: 0.1}},
		{"hinge", LossConfig{Type: LossHinge, Beta: 0.1}},
		{"hinge_beta0.2", LossConfig{Type: LossHinge, Beta: 0.2}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			idx := -1
			for i, c := range o.Cases {
				if c.Name == tc.name {
					idx = i
				}
			}
			if idx < 0 {
				t.Fatalf("no oracle case %q", tc.name)
			}
			want := o.Cases[idx]
			if want.LossType != tc.loss.Type || want.Beta != tc.loss.Beta || want.LabelSmoothing != tc.loss.LabelSmoothing {
				t.Fatalf("oracle case is %s beta %g eps %g, test config %+v", want.LossType, want.Beta, want.LabelSmoothing, tc.loss)
			}
			grads, ok := want.OnnxGrads[file]
			if !ok {
				t.Fatalf("oracle case has no gradients for %s", file)
			}
			m, err := onnx.Load(filepath.Join("../testdata", file))
			if err != nil {
				t.Fatal(err)
			}
			cfg := TrainConfig{
				Loss: tc.loss, Optim: OptimConfig{Name: OptimSGD}, LR: 1, Scheduler: "constant",
				BatchSize: len(pairs), MaxSteps: 1, Threads: 1, PadID: o.PadID,
			}
			tr, err := NewTrainer(file, m, cfg, pairs)
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			if len(tr.Trainable()) != len(grads) {
				t.Fatalf("trains %d tensors, oracle has %d", len(tr.Trainable()), len(grads))
			}
			metrics, err := tr.ComputeGradients(pairs, refC, refR)
			if err != nil {
				t.Fatal(err)
			}
			if e := math.Abs(metrics.Loss-want.Loss) / math.Abs(want.Loss); e > 1e-6 {
				t.Errorf("loss %.9f, PyTorch %.9f (relative error %.1e)", metrics.Loss, want.Loss, e)
			}
			worst, worstName := 0.0, ""
			for i, name := range tr.Trainable() {
				w, ok := grads[name]
				if !ok {
					t.Fatalf("no oracle gradient for %q", name)
				}
				if len(w.Values) != len(tr.Grads()[i]) {
					t.Fatalf("%s: %d gradient values, oracle %d", name, len(tr.Grads()[i]), len(w.Values))
				}
				e := relL2(tr.Grads()[i], w.Values)
				if e > 1e-3 || math.IsNaN(e) {
					t.Errorf("%s: gradient relative L2 error %.2e", name, e)
				}
				if e > worst {
					worst, worstName = e, name
				}
			}
			active := "-"
			if want.ActivePairs != nil {
				active = fmt.Sprintf("%d/%d", *want.ActivePairs, len(pairs))
			}
			t.Logf("loss %.9f (PyTorch %.9f, rel %.1e); %d tensors, worst gradient relative L2 %.2e (%s); hinge active pairs %s",
				metrics.Loss, want.Loss, math.Abs(metrics.Loss-want.Loss)/math.Abs(want.Loss), len(tr.Trainable()), worst, worstName, active)
		})
	}
}
