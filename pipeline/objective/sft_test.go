package objective

import (
	"context"
	"math"
	"path/filepath"
	"testing"

	"ortalign/onnx"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/lm"
)

// sftOracle is testdata/expected/sft_oracle_<model>.json.gz, written by
// testdata/gen_sft_oracle.py with PyTorch autograd in float64.
type sftOracle struct {
	InputIDs  [][]int64 `json:"input_ids"`
	PromptLen []int     `json:"prompt_len"`
	SeqLen    []int     `json:"seq_len"`
	PadID     int64     `json:"pad_id"`
	Loss      float64   `json:"loss_float64"`
	Accuracy  float64   `json:"mean_token_accuracy"`
	Tokens    int       `json:"completion_tokens"`
	OnnxGrads map[string]map[string]struct {
		Values []float64 `json:"values"`
	} `json:"onnx_grads"`
}

func (o *sftOracle) sequences() []lm.Sequence {
	seqs := make([]lm.Sequence, len(o.InputIDs))
	for i := range seqs {
		seqs[i] = lm.Sequence{IDs: o.InputIDs[i][:o.SeqLen[i]], CompletionStart: o.PromptLen[i]}
	}
	return seqs
}

// TestSFTLossAndGradientsMatchPyTorch: the SFT objective's loss is PyTorch's token-mean
// cross-entropy over the batch's completion tokens, and its gradients are autograd's, on
// both tiny models at opsets 14 and 17 with padding in the batch.
func TestSFTLossAndGradientsMatchPyTorch(t *testing.T) {
	for _, model := range []string{"gpt2", "llama"} {
		var o sftOracle
		readOracle(t, "../../testdata/expected/sft_oracle_"+model+".json.gz", &o)
		seqs := o.sequences()
		for file, want := range o.OnnxGrads {
			t.Run(filepath.Base(file), func(t *testing.T) {
				m, err := onnx.Load(filepath.Join("../../testdata", file))
				if err != nil {
					t.Fatal(err)
				}
				cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimSGD}, LR: 1, BatchSize: len(seqs), Threads: 1, PadID: o.PadID}
				e, err := engine.NewEngine(file, m, cfg, SFT{})
				if err != nil {
					t.Fatal(err)
				}
				defer e.Close()
				got, err := e.ComputeGradients(seqs)
				if err != nil {
					t.Fatal(err)
				}
				if d := relErr(got.Value("loss"), o.Loss); d > oracleLossTol {
					t.Errorf("loss %.8f, PyTorch %.8f (rel %.1e)", got.Value("loss"), o.Loss, d)
				}
				if d := nanToInf(math.Abs(got.Value("mean_token_accuracy") - o.Accuracy)); d > 1e-9 {
					t.Errorf("mean_token_accuracy %v, PyTorch %v", got.Value("mean_token_accuracy"), o.Accuracy)
				}
				if w := (SFT{}).Weight(seqs); int(w) != o.Tokens {
					t.Errorf("weight %v completion tokens, PyTorch counts %d", w, o.Tokens)
				}
				if len(e.Trainable()) != len(want) {
					t.Fatalf("trains %d tensors, oracle has %d", len(e.Trainable()), len(want))
				}
				worst := 0.0
				for i, name := range e.Trainable() {
					w, ok := want[name]
					if !ok {
						t.Fatalf("no oracle gradient for %q", name)
					}
					if err := relL2(e.Grads()[i], w.Values); err > worst {
						worst = err
					}
				}
				if worst > oracleGradTol {
					t.Errorf("worst gradient relative L2 error %.2e, want <= %.1e", worst, oracleGradTol)
				}
				t.Logf("loss %.8f (PyTorch %.8f), worst gradient relative L2 error %.2e", got.Value("loss"), o.Loss, worst)
			})
		}
	}
}

// TestSFTLossFallsAndTokensAccumulate: a few AdamW steps on a fixed batch lower the loss
// and raise the token accuracy, and num_tokens counts every token seen so far.
func TestSFTLossFallsAndTokensAccumulate(t *testing.T) {
	var o sftOracle
	readOracle(t, "../../testdata/expected/sft_oracle_llama.json.gz", &o)
	seqs := o.sequences()
	m, err := onnx.Load("../../testdata/models/llama_opset17.onnx")
	if err != nil {
		t.Fatal(err)
	}
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimAdamW}, LR: 3e-3, BatchSize: 4, GradAccum: 2, MaxSteps: 15, Threads: 1, PadID: o.PadID}
	e, err := engine.NewEngine("llama", m, cfg, SFT{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	var got []engine.Metrics
	if err := e.Train(context.Background(), seqs, engine.RunConfig[lm.Sequence]{Metrics: jsonRecorder{&got}}); err != nil {
		t.Fatal(err)
	}
	tokens := 0
	for _, s := range seqs {
		tokens += len(s.IDs)
	}
	first, last := got[0], got[len(got)-1]
	if first.Value("num_tokens") != float64(tokens) || last.Value("num_tokens") != float64(15*tokens) {
		t.Errorf("num_tokens %v after one step and %v after 15, want %d and %d", first.Value("num_tokens"), last.Value("num_tokens"), tokens, 15*tokens)
	}
	if !(last.Value("loss") < 0.5*first.Value("loss")) || !(last.Value("mean_token_accuracy") > first.Value("mean_token_accuracy")) {
		t.Fatalf("loss %.4f -> %.4f, accuracy %.3f -> %.3f: want the loss halved and the accuracy up",
			first.Value("loss"), last.Value("loss"), first.Value("mean_token_accuracy"), last.Value("mean_token_accuracy"))
	}
	t.Logf("loss %.4f -> %.4f, mean_token_accuracy %.3f -> %.3f", first.Value("loss"), last.Value("loss"), first.Value("mean_token_accuracy"), last.Value("mean_token_accuracy"))
}
