package pipeline

import (
	"math"
	"path/filepath"
	"slices"
	"testing"

	"ortalign/onnx"
)

// The KV-cache fixture: testdata/models/llama_kv_opset17.onnx (testdata/gen_models.py), the
// llama weights exported the way optimum exports a decoder with past (inputs
// past_key_values.{0,1}.{key,value} [batch, 2, past_sequence, 8], outputs logits and
// present.{0,1}.{key,value}). DESIGN.md: such models are accepted with an empty past.
const kvModelFile = "models/llama_kv_opset17.onnx"

var (
	kvPastInputs = []string{"past_key_values.0.key", "past_key_values.0.value", "past_key_values.1.key", "past_key_values.1.value"}
	kvPresents   = []string{"present.0.key", "present.0.value", "present.1.key", "present.1.value"}
)

// TestKVCacheModelLogpsMatchPyTorch: the KV-cache export, fed an empty past, scores the
// llama batches of expected/logps.json like PyTorch (1e-4) and like llama_opset17.onnx.
func TestKVCacheModelLogpsMatchPyTorch(t *testing.T) {
	o := loadOracle(t)
	lm, err := LoadLogProbModel(filepath.Join("../testdata", kvModelFile), ModelOptions{Threads: 1, PadID: o.PadID})
	if err != nil {
		t.Fatal(err)
	}
	defer lm.Close()
	var pasts []string
	for _, p := range lm.pasts {
		pasts = append(pasts, p.name)
		if p.dims[1] != 2 || p.dims[3] != 8 || p.dims[0] != -1 || p.dims[2] != -1 {
			t.Errorf("%s: dims %v, want [-1 2 -1 8]", p.name, p.dims)
		}
	}
	if !slices.Equal(pasts, kvPastInputs) {
		t.Fatalf("KV-cache inputs detected: %v, want %v", pasts, kvPastInputs)
	}
	if lm.VocabSize() != 512 {
		t.Fatalf("vocab = %d, want 512", lm.VocabSize())
	}
	plain, err := LoadLogProbModel("../testdata/models/llama_opset17.onnx", ModelOptions{Threads: 1, PadID: o.PadID})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	checked, worst, worstPlain := 0, 0.0, 0.0
	for _, b := range o.Batches {
		if b.Model != "llama" {
			continue
		}
		rows := make([]Sequence, len(b.InputIDs))
		for i := range rows {
			rows[i] = Sequence{IDs: b.InputIDs[i][:b.PromptLen[i]+b.CompletionLen[i]], CompletionStart: b.PromptLen[i]}
		}
		got, err := lm.SequenceLogps(rows)
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
// loss and gradients (the llama oracle; its initializers are matched to llama_opset17.onnx's
// by value), and the exported model keeps the past_key_values inputs and present outputs.
func TestKVCacheModelTrains(t *testing.T) {
	var o dpoOracle
	readOracle(t, "../testdata/expected/dpo_grads_llama.json.gz", &o)
	pairs, refC, refR := oracleBatch(&o)
	m, err := onnx.Load(filepath.Join("../testdata", kvModelFile))
	if err != nil {
		t.Fatal(err)
	}
	cfg := TrainConfig{
		Loss:  LossConfig{Type: LossSigmoid, Beta: o.Beta},
		Optim: OptimConfig{Name: OptimSGD}, LR: 1, Scheduler: "constant",
		BatchSize: len(pairs), MaxSteps: 1, Threads: 1, PadID: o.PadID,
	}
	tr, err := NewTrainer(kvModelFile, m, cfg, pairs)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	metrics, err := tr.Step(pairs, refC, refR, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("loss %.8f, PyTorch %.8f", metrics.Loss, o.Loss)
}
