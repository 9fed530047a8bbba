package objective

import (
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"testing"

	"ortalign/onnx"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/lm"
)

// The KV-cache fixture: testdata/models/llama_kv_opset17.onnx (testdata/gen_models.py), the
// llama weights exported the way optimum exports a decoder with past (inputs
// past_key_values.{0,1}.{key,value} [batch, 2, past_sequence, 8], outputs logits and
// present.{0,1}.{key,value}). Such models are accepted and fed an empty past (README.md,
// "Formats").
const kvModelFile = "models/llama_kv_opset17.onnx"

var (
	kvPastInputs = []string{"past_key_values.0.key", "past_key_values.0.value", "past_key_values.1.key", "past_key_values.1.value"}
	kvPresents   = []string{"present.0.key", "present.0.value", "present.1.key", "present.1.value"}
)

// TestKVCacheModelLogpsMatchPyTorch: the KV-cache export, fed an empty past, scores the
// llama batches of expected/logps.json like PyTorch (1e-4) and like llama_opset17.onnx.
func TestKVCacheModelLogpsMatchPyTorch(t *testing.T) {
	o := loadOracle(t)
	lpm, err := lm.LoadLogProbModel(filepath.Join("../../testdata", kvModelFile), lm.ModelOptions{Threads: 1, PadID: o.PadID})
	if err != nil {
		t.Fatal(err)
	}
	defer lpm.Close()
	var pasts []string
	for _, p := range lpm.Pasts {
		pasts = append(pasts, p.Name)
		if p.Dims[1] != 2 || p.Dims[3] != 8 || p.Dims[0] != -1 || p.Dims[2] != -1 {
			t.Errorf("%s: dims %v, want [-1 2 -1 8]", p.Name, p.Dims)
		}
	}
	if !slices.Equal(pasts, kvPastInputs) {
		t.Fatalf("KV-cache inputs detected: %v, want %v", pasts, kvPastInputs)
	}
	if lpm.VocabSize() != 512 {
		t.Fatalf("vocab = %d, want 512", lpm.VocabSize())
	}
	plain, err := lm.LoadLogProbModel("../../testdata/models/llama_opset17.onnx", lm.ModelOptions{Threads: 1, PadID: o.PadID})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	checked, worst, worstPlain := 0, 0.0, 0.0
	for _, b := range o.Batches {
		if b.Model != "llama" {
			continue
		}
		rows := make([]lm.Sequence, len(b.InputIDs))
		for i := range rows {
			rows[i] = lm.Sequence{IDs: b.InputIDs[i][:b.PromptLen[i]+b.CompletionLen[i]], CompletionStart: b.PromptLen[i]}
		}
		got, err := lpm.SequenceLogps(rows)
		if err != nil {
			t.Fatalf("%s: %v", b.Name, err)
		}
		ref, err := plain.SequenceLogps(rows)
		if err != nil {
			t.Fatal(err)
		}
		for i := range got {
			d := math.Abs(got[i] - b.Logps[i])
			worst = max(worst, d)
			worstPlain = max(worstPlain, math.Abs(got[i]-ref[i]))
			if d > 1e-4 {
				t.Errorf("%s row %d: logps %.7f, PyTorch %.7f (diff %.2e)", b.Name, i, got[i], b.Logps[i], d)
			}
			checked++
		}
	}
	if checked == 0 {
		t.Fatal("no llama rows in the oracle")
	}
	if worstPlain > 1e-5 {
		t.Errorf("KV-cache model vs llama_opset17.onnx: max |diff| %.2e", worstPlain)
	}
	t.Logf("%d rows, max |diff| vs PyTorch float64 = %.2e, vs llama_opset17.onnx = %.2e", checked, worst, worstPlain)
}

// TestKVCacheModelTrains: a DPO step on the KV-cache export (empty past) gives PyTorch's
// loss and gradients (the llama oracle: each trainable initializer is matched by value to
// the llama_opset17.onnx initializer whose gradient the oracle holds), one SGD step with
// lr 1 moves each weight by minus its gradient, and the exported model keeps the
// past_key_values inputs and present outputs and still scores with an empty past.
func TestKVCacheModelTrains(t *testing.T) {
	var o dpoOracle
	readOracle(t, "../../testdata/expected/dpo_grads_llama.json.gz", &o)
	const plainFile = "models/llama_opset17.onnx"
	want := o.OnnxGrads[plainFile]
	if len(want) == 0 {
		t.Fatalf("oracle has no gradients for %s", plainFile)
	}
	plain, err := onnx.Load(filepath.Join("../../testdata", plainFile))
	if err != nil {
		t.Fatal(err)
	}
	pairs, refC, refR := oracleBatch(&o)
	m, err := onnx.Load(filepath.Join("../../testdata", kvModelFile))
	if err != nil {
		t.Fatal(err)
	}
	cfg := engine.TrainConfig{
		Optim: engine.OptimConfig{Name: engine.OptimSGD}, LR: 1, Scheduler: "constant",
		BatchSize: len(pairs), MaxSteps: 1, Threads: 1, PadID: o.PadID,
	}
	tr, err := engine.NewEngine(kvModelFile, m, cfg, DPO{Loss: LossConfig{Type: LossSigmoid, Beta: o.Beta}})
	if err != nil {
		t.Fatalf("NewTrainer on a model with KV-cache inputs: %v", err)
	}
	defer tr.Close()
	if len(tr.Trainable()) != len(want) {
		t.Fatalf("trains %d tensors, the oracle (llama_opset17.onnx) has %d", len(tr.Trainable()), len(want))
	}
	// The KV export names its folded MatMul weights differently: match them by value.
	twin := map[string]string{}
	for i, name := range tr.Trainable() {
		for plainName := range want {
			vals, err := onnx.TensorFloats(onnx.Initializer(plain.Graph(), plainName))
			if err != nil {
				t.Fatal(err)
			}
			if slices.Equal(vals, tr.Params()[i]) {
				if prev, dup := twin[name]; dup {
					t.Fatalf("%s equals both %s and %s", name, prev, plainName)
				}
				twin[name] = plainName
			}
		}
		if twin[name] == "" {
			t.Fatalf("trainable %q matches no initializer of %s", name, plainFile)
		}
	}
	loss, worst := checkSGDStep(t, tr, pairs, refC, refR, func(name string) []float64 { return want[twin[name]].Values })
	if d := math.Abs(loss - o.Loss); d > 1e-5 {
		t.Errorf("loss %.8f, PyTorch %.8f", loss, o.Loss)
	}
	t.Logf("loss %.8f (PyTorch %.8f), %d tensors, worst gradient relative L2 error %.2e", loss, o.Loss, len(tr.Trainable()), worst)

	// The exported model is the user's graph: same inputs (KV cache included) and outputs.
	sig := func(m *onnx.Model) (ins, outs []string) {
		for _, v := range m.Graph().GetInput() {
			_, dims, _ := onnx.TensorType(v)
			ins = append(ins, fmt.Sprint(v.GetName(), dims))
		}
		for _, v := range m.Graph().GetOutput() {
			_, dims, _ := onnx.TensorType(v)
			outs = append(outs, fmt.Sprint(v.GetName(), dims))
		}
		return ins, outs
	}
	exported, err := tr.Model()
	if err != nil {
		t.Fatal(err)
	}
	gotIn, gotOut := sig(exported)
	wantIn, wantOut := sig(m)
	if !slices.Equal(gotIn, wantIn) || !slices.Equal(gotOut, wantOut) {
		t.Errorf("exported model's inputs/outputs changed:\n got  %v -> %v\n want %v -> %v", gotIn, gotOut, wantIn, wantOut)
	}
	for _, name := range kvPastInputs {
		if onnx.Input(exported.Graph(), name) == nil {
			t.Errorf("exported model lost input %q", name)
		}
	}
	for _, name := range append([]string{lm.LogitsOutput}, kvPresents...) {
		if onnx.Output(exported.Graph(), name) == nil {
			t.Errorf("exported model lost output %q", name)
		}
	}
	// And it still scores with an empty past, now with the trained weights.
	lpm, err := lm.NewLogProbModel("trained "+kvModelFile, exported, lm.ModelOptions{Threads: 1, PadID: o.PadID})
	if err != nil {
		t.Fatal(err)
	}
	defer lpm.Close()
	lp := pairLogps(t, lpm, pairs)
	if len(lp) != 2*len(pairs) {
		t.Fatalf("%d log-probs for %d rows", len(lp), 2*len(pairs))
	}
	// DPO loss at the new weights vs PyTorch's loss after the same SGD step.
	var sgd struct {
		SGD struct {
			After map[string]float64 `json:"loss_after_sgd_step"`
		} `json:"sgd"`
	}
	readOracle(t, "../../testdata/expected/dpo_grads_llama.json.gz", &sgd)
	wantAfter, ok := sgd.SGD.After["untied"]
	if !ok {
		t.Fatal("oracle has no sgd.loss_after_sgd_step.untied")
	}
	n, loss := len(pairs), 0.0
	for i := 0; i < n; i++ {
		h := (lp[i] - refC[i]) - (lp[n+i] - refR[i])
		loss += math.Log1p(math.Exp(-o.Beta*h)) / float64(n) // -log sigmoid(beta h)
	}
	if e := math.Abs(loss-wantAfter) / wantAfter; e > 1e-3 {
		t.Errorf("loss after the step (exported model, empty past) %.6f, PyTorch %.6f", loss, wantAfter)
	}
	t.Logf("exported model: loss after one SGD step %.6f, PyTorch %.6f", loss, wantAfter)
}
