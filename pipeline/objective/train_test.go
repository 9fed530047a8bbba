package objective

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ortalign/onnx"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/lm"
)

// dpoOracle is testdata/expected/dpo_grads_<model>.json.gz, written by
// testdata/gen_dpo_oracle.py with PyTorch autograd in float64.
type dpoOracle struct {
	InputIDs  [][]int64 `json:"input_ids"`
	PromptLen []int     `json:"prompt_len"`
	SeqLen    []int     `json:"seq_len"`
	RefLogps  []float64 `json:"ref_logps"`
	// PolicyLogps are the starting model's log-probs of the rows, in float64.
	PolicyLogps []float64 `json:"policy_logps_float64"`
	Loss        float64   `json:"loss_float64"`
	PadID       int64     `json:"pad_id"`
	Beta        float64   `json:"beta"`
	OnnxGrads   map[string]map[string]struct {
		Shape  []int64   `json:"shape"`
		Values []float64 `json:"values"`
	} `json:"onnx_grads"`
}

// adamwOracle is testdata/expected/dpo_adamw_<model>.json.
type adamwOracle struct {
	Files  map[string][]string `json:"curve_onnx_files"`
	Curves map[string]map[string]struct {
		Steps []engine.Metrics `json:"steps"`
	} `json:"curves"`
}

func readOracle(t *testing.T, path string, v any) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var r interface{ Read([]byte) (int, error) } = f
	if filepath.Ext(path) == ".gz" {
		gz, err := gzip.NewReader(f)
		if err != nil {
			t.Fatal(err)
		}
		r = gz
	}
	if err := json.NewDecoder(r).Decode(v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// oracleBatch turns the oracle's rows (4 chosen, then 4 rejected) into pairs and refs.
func oracleBatch(o *dpoOracle) ([]encode.EncodedPair, []float64, []float64) {
	n := len(o.InputIDs) / 2
	seq := func(i int) lm.Sequence {
		return lm.Sequence{IDs: o.InputIDs[i][:o.SeqLen[i]], CompletionStart: o.PromptLen[i]}
	}
	pairs := make([]encode.EncodedPair, n)
	for i := range pairs {
		pairs[i] = encode.EncodedPair{Index: i, Chosen: seq(i), Rejected: seq(n + i)}
	}
	return pairs, o.RefLogps[:n], o.RefLogps[n:]
}

// relL2 is ‖got − want‖ / ‖want‖; +Inf when got or want holds a NaN, so that
// `relL2(...) > tol` and a running max of it fail on NaN.
func relL2(got []float32, want []float64) float64 {
	var num, den float64
	for i := range want {
		d := float64(got[i]) - want[i]
		num += d * d
		den += want[i] * want[i]
	}
	return nanToInf(math.Sqrt(num / math.Max(den, 1e-30)))
}

// TestDPOGradientsAndSGDStepMatchPyTorch: the generated training graph's DPO gradients
// equal PyTorch autograd's (relative L2 ≤ 1e-3 per tensor) on both tiny models at opsets
// 14 and 17 with padding in the batch, and one SGD step with lr 1 moves every parameter by
// exactly minus its gradient in the exported model.
func TestDPOGradientsAndSGDStepMatchPyTorch(t *testing.T) {
	for _, model := range []string{"gpt2", "llama"} {
		var o dpoOracle
		readOracle(t, "../../testdata/expected/dpo_grads_"+model+".json.gz", &o)
		pairs, refC, refR := oracleBatch(&o)
		for file, want := range o.OnnxGrads {
			t.Run(filepath.Base(file), func(t *testing.T) {
				m, err := onnx.Load(filepath.Join("../../testdata", file))
				if err != nil {
					t.Fatal(err)
				}
				cfg := engine.TrainConfig{
					Optim: engine.OptimConfig{Name: engine.OptimSGD}, LR: 1, Scheduler: "constant",
					BatchSize: len(pairs), MaxSteps: 1, Threads: 1, PadID: o.PadID,
				}
				tr, err := engine.NewEngine(file, m, cfg, DPO{Loss: LossConfig{Type: LossSigmoid, Beta: o.Beta}})
				if err != nil {
					t.Fatal(err)
				}
				defer tr.Close()
				if len(tr.Trainable()) != len(want) {
					t.Fatalf("trains %d tensors, oracle has %d", len(tr.Trainable()), len(want))
				}
				for _, name := range tr.Trainable() {
					if _, ok := want[name]; !ok {
						t.Fatalf("no oracle gradient for %q", name)
					}
				}
				loss, worst := checkSGDStep(t, tr, pairs, refC, refR, func(name string) []float64 { return want[name].Values })
				if d := nanToInf(math.Abs(loss - o.Loss)); d > 1e-5 {
					t.Errorf("loss %.8f, PyTorch %.8f", loss, o.Loss)
				}
				t.Logf("%d tensors, worst gradient relative L2 error %.2e", len(tr.Trainable()), worst)
			})
		}
	}
}

// TestDPOAdamWCurveMatchesPyTorch: 20 full-batch AdamW steps reproduce PyTorch's loss
// curve within 1e-3 relative at every step.
func TestDPOAdamWCurveMatchesPyTorch(t *testing.T) {
	for _, model := range []string{"gpt2", "llama"} {
		var o dpoOracle
		readOracle(t, "../../testdata/expected/dpo_grads_"+model+".json.gz", &o)
		var a adamwOracle
		readOracle(t, "../../testdata/expected/dpo_adamw_"+model+".json", &a)
		pairs, refC, refR := oracleBatch(&o)
		for kind, files := range a.Files {
			curve := a.Curves[kind]["float32"].Steps
			file := files[len(files)-1]
			t.Run(model+"/"+kind, func(t *testing.T) {
				m, err := onnx.Load(filepath.Join("../../testdata", file))
				if err != nil {
					t.Fatal(err)
				}
				cfg := engine.TrainConfig{
					Optim: engine.OptimConfig{Name: engine.OptimAdamW, WeightDecay: 0.01}, LR: 1e-3, Scheduler: "constant",
					BatchSize: len(pairs), MaxSteps: len(curve), Threads: 1, PadID: o.PadID,
				}
				tr, err := engine.NewEngine(file, m, cfg, DPO{Loss: LossConfig{Type: LossSigmoid, Beta: o.Beta}})
				if err != nil {
					t.Fatal(err)
				}
				defer tr.Close()
				var got []engine.Metrics
				rec := jsonRecorder{&got}
				if err := tr.Train(context.Background(), WithReference(pairs, refC, refR), engine.RunConfig[encode.EncodedPair]{Metrics: rec}); err != nil {
					t.Fatal(err)
				}
				if len(got) != len(curve) {
					t.Fatalf("%d steps, want %d", len(got), len(curve))
				}
				for k, want := range curve {
					if e := relErr(got[k].Value("loss"), want.Value("loss")); e > 1e-3 {
						t.Errorf("step %d: loss %.6f, PyTorch %.6f (rel %.1e)", k+1, got[k].Value("loss"), want.Value("loss"), e)
					}
					if e := relErr(got[k].Value("grad_norm"), want.Value("grad_norm")); e > 1e-3 {
						t.Errorf("step %d: grad_norm %.6f, PyTorch %.6f", k+1, got[k].Value("grad_norm"), want.Value("grad_norm"))
					}
					if got[k].Value("step") != want.Value("step") || nanToInf(math.Abs(got[k].Value("rewards/chosen")-want.Value("rewards/chosen"))) > 1e-4 {
						t.Errorf("step %d: metrics %+v, PyTorch %+v", k+1, got[k], want)
					}
					// TRL's logits/*: float32 rounding at the starting weights, then the
					// curves' drift.
					tol := 1e-6
					if k == 0 {
						tol = 1e-7
					}
					for _, name := range []string{"logits/chosen", "logits/rejected"} {
						if _, ok := want.Get(name); !ok {
							t.Fatalf("the oracle has no %s (testdata/gen_dpo_oracle.py)", name)
						}
						if e := nanToInf(math.Abs(got[k].Value(name) - want.Value(name))); e > tol {
							t.Errorf("step %d: %s %.8f, PyTorch %.8f (|diff| %.1e, tolerance %.0e)", k+1, name, got[k].Value(name), want.Value(name), e, tol)
						}
					}
				}
			})
		}
	}
}

// jsonRecorder decodes the trainer's metrics lines of steps and evaluations back into
// structs; the run's last line (its train_runtime, with no step) is left out.
type jsonRecorder struct{ out *[]engine.Metrics }

func (r jsonRecorder) Write(b []byte) (int, error) {
	var m engine.Metrics
	if err := json.Unmarshal(b, &m); err != nil {
		return 0, err
	}
	if _, ok := m.Get("step"); ok {
		*r.out = append(*r.out, m)
	}
	return len(b), nil
}

// cancelAfter cancels a context after n metric lines, like a Ctrl-C during training.
type cancelAfter struct {
	n      int
	cancel context.CancelFunc
}

func (c *cancelAfter) Write(b []byte) (int, error) {
	if c.n--; c.n == 0 {
		c.cancel()
	}
	return len(b), nil
}

// TestInterruptSavesCheckpointAndResumes: cancelling mid-run saves a checkpoint at the
// last finished step, and a new trainer resumes from it.
func TestInterruptSavesCheckpointAndResumes(t *testing.T) {
	var o dpoOracle
	readOracle(t, "../../testdata/expected/dpo_grads_llama.json.gz", &o)
	pairs, refC, refR := oracleBatch(&o)
	m, err := onnx.Load("../../testdata/models/llama_opset14.onnx")
	if err != nil {
		t.Fatal(err)
	}
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimAdamW}, LR: 1e-3,
		BatchSize: 2, MaxSteps: 8, Threads: 1, PadID: o.PadID}
	ckpt := filepath.Join(t.TempDir(), "checkpoint.bin")
	ctx, cancel := context.WithCancel(context.Background())
	tr, err := engine.NewEngine("llama", m, cfg, DPO{Loss: LossConfig{Type: LossSigmoid, Beta: 0.1}})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	err = tr.Train(ctx, WithReference(pairs, refC, refR), engine.RunConfig[encode.EncodedPair]{Checkpoint: ckpt, Metrics: &cancelAfter{n: 3, cancel: cancel}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v", err)
	}
	tr2, err := engine.NewEngine("llama", m, cfg, DPO{Loss: LossConfig{Type: LossSigmoid, Beta: 0.1}})
	if err != nil {
		t.Fatal(err)
	}
	defer tr2.Close()
	var got []engine.Metrics
	if err := tr2.Train(context.Background(), WithReference(pairs, refC, refR), engine.RunConfig[encode.EncodedPair]{Checkpoint: ckpt, Metrics: jsonRecorder{&got}}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 5 || got[0].Value("step") != 4 {
		t.Fatalf("resumed run did %d steps starting at %v, want 5 starting at step 4", len(got), got)
	}
}

// TestCheckpointOfAnotherModelIsAnError: a checkpoint is never applied to the wrong model.
func TestCheckpointOfAnotherModelIsAnError(t *testing.T) {
	var o dpoOracle
	readOracle(t, "../../testdata/expected/dpo_grads_llama.json.gz", &o)
	pairs, refC, refR := oracleBatch(&o)
	ckpt := filepath.Join(t.TempDir(), "checkpoint.bin")
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimSGD}, LR: 1e-3,
		BatchSize: 4, MaxSteps: 1, Threads: 1, PadID: o.PadID}
	for i, file := range []string{"llama_opset14.onnx", "gpt2_opset14.onnx"} {
		m, err := onnx.Load("../../testdata/models/" + file)
		if err != nil {
			t.Fatal(err)
		}
		tr, err := engine.NewEngine(file, m, cfg, DPO{Loss: LossConfig{Type: LossSigmoid, Beta: 0.1}})
		if err != nil {
			t.Fatal(err)
		}
		err = tr.Train(context.Background(), WithReference(pairs, refC, refR), engine.RunConfig[encode.EncodedPair]{Checkpoint: ckpt})
		tr.Close()
		if i == 1 && (err == nil || !strings.Contains(err.Error(), "another model")) {
			t.Fatalf("want an error about another model's checkpoint, got %v", err)
		}
	}
}

// TestExportedModelGivesTrainerLogps: the exported model, loaded in ONNX Runtime, gives
// the same log-probs as the trainer's final policy (within 1e-5).
func TestExportedModelGivesTrainerLogps(t *testing.T) {
	var o dpoOracle
	readOracle(t, "../../testdata/expected/dpo_grads_gpt2.json.gz", &o)
	pairs, refC, refR := oracleBatch(&o)
	m, err := onnx.Load("../../testdata/models/gpt2_opset17.onnx")
	if err != nil {
		t.Fatal(err)
	}
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimAdamW}, LR: 1e-2,
		BatchSize: 4, MaxSteps: 5, Threads: 1, PadID: o.PadID}
	tr, err := engine.NewEngine("gpt2", m, cfg, DPO{Loss: LossConfig{Type: LossSigmoid, Beta: 0.1}})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	before, err := tr.ComputeGradients(WithReference(pairs, refC, refR)) // the starting policy's log-probs
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Train(context.Background(), WithReference(pairs, refC, refR), engine.RunConfig[encode.EncodedPair]{}); err != nil {
		t.Fatal(err)
	}
	after, err := tr.ComputeGradients(WithReference(pairs, refC, refR)) // the trained policy's own log-probs
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "model.onnx")
	if err := tr.Export(path); err != nil {
		t.Fatal(err)
	}
	lpm, err := lm.LoadLogProbModel(path, lm.ModelOptions{Threads: 1, PadID: o.PadID})
	if err != nil {
		t.Fatal(err)
	}
	defer lpm.Close()
	lp := pairLogps(t, lpm, pairs)
	n := len(pairs)
	var chosen, rejected float64
	for i := 0; i < n; i++ {
		chosen += lp[i] / float64(n)
		rejected += lp[n+i] / float64(n)
	}
	if !(math.Abs(chosen-after.Value("logps/chosen")) <= 1e-5 && math.Abs(rejected-after.Value("logps/rejected")) <= 1e-5) {
		t.Fatalf("exported model logps chosen %.7f rejected %.7f; trainer %.7f %.7f", chosen, rejected, after.Value("logps/chosen"), after.Value("logps/rejected"))
	}
	// The starting policy's mean chosen log-prob is the oracle's (float64) within float32
	// rounding; training moves it.
	start := 0.0
	for i := range n {
		start += o.PolicyLogps[i] / float64(n)
	}
	if !(math.Abs(before.Value("logps/chosen")-start) <= 1e-4) {
		t.Fatalf("starting policy's logps/chosen %.7f, PyTorch %.7f", before.Value("logps/chosen"), start)
	}
	if !(math.Abs(after.Value("logps/chosen")-before.Value("logps/chosen")) >= 1e-3) {
		t.Fatalf("training did not change the policy: logps/chosen %.7f before, %.7f after", before.Value("logps/chosen"), after.Value("logps/chosen"))
	}
}

// TestExportKeepsExternalDataLayout: a model whose weights live in external data (as
// optimum exports do) is exported with the same layout and file name.
func TestExportKeepsExternalDataLayout(t *testing.T) {
	var o dpoOracle
	readOracle(t, "../../testdata/expected/dpo_grads_llama.json.gz", &o)
	pairs, refC, refR := oracleBatch(&o)
	src, err := onnx.Load("../../testdata/models/llama_opset17.onnx")
	if err != nil {
		t.Fatal(err)
	}
	in := filepath.Join(t.TempDir(), "model.onnx")
	if err := src.Save(in, onnx.SaveOptions{ExternalData: onnx.ExternalAlways, ExternalDataName: "weights.bin"}); err != nil {
		t.Fatal(err)
	}
	m, err := onnx.Load(in)
	if err != nil {
		t.Fatal(err)
	}
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimSGD}, LR: 1,
		BatchSize: 4, MaxSteps: 1, Threads: 1, PadID: o.PadID}
	tr, err := engine.NewEngine(in, m, cfg, DPO{Loss: LossConfig{Type: LossSigmoid, Beta: 0.1}})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := tr.Train(context.Background(), WithReference(pairs, refC, refR), engine.RunConfig[encode.EncodedPair]{}); err != nil {
		t.Fatal(err)
	}
	outDir := t.TempDir()
	if err := tr.Export(filepath.Join(outDir, "model.onnx")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(outDir, "weights.bin")); err != nil {
		t.Fatalf("external data file not kept: %v", err)
	}
	got, err := onnx.Load(filepath.Join(outDir, "model.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	name := tr.Trainable()[0]
	if _, external := got.ExternalLocation(onnx.Initializer(got.Graph(), name)); !external {
		t.Fatalf("%s is inline in the export; the input kept it in external data", name)
	}
	vals, _ := onnx.TensorFloats(onnx.Initializer(got.Graph(), name))
	if vals[0] != tr.Params()[0][0] {
		t.Fatalf("exported %s[0] = %v, trainer %v", name, vals[0], tr.Params()[0][0])
	}
}

// TestTiedCopyTrainsAsOneWeight: in the plain GPT-2 export the lm_head is a transposed
// copy of the embedding; with TieTransposedCopies the trainer finds it, trains one weight
// (PyTorch's tied gradient and AdamW curve) and exports the copy as its transpose.
func TestTiedCopyTrainsAsOneWeight(t *testing.T) {
	var o dpoOracle
	readOracle(t, "../../testdata/expected/dpo_grads_gpt2.json.gz", &o)
	var a adamwOracle
	readOracle(t, "../../testdata/expected/dpo_adamw_gpt2.json", &a)
	pairs, refC, refR := oracleBatch(&o)
	m, err := onnx.Load("../../testdata/models/gpt2_opset17.onnx")
	if err != nil {
		t.Fatal(err)
	}
	curve := a.Curves["tied"]["float32"].Steps
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimAdamW, WeightDecay: 0.01},
		LR: 1e-3, Scheduler: "constant", BatchSize: len(pairs), MaxSteps: len(curve), Threads: 1, PadID: o.PadID,
		TieTransposedCopies: true}
	tr, err := engine.NewEngine("gpt2", m, cfg, DPO{Loss: LossConfig{Type: LossSigmoid, Beta: o.Beta}})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ties := tr.Ties()
	if len(ties) != 1 || ties[0].Source != "transformer.wte.weight" {
		t.Fatalf("ties %+v, want the embedding's transposed copy", ties)
	}
	if _, err := tr.ComputeGradients(WithReference(pairs, refC, refR)); err != nil {
		t.Fatal(err)
	}
	want := o.OnnxGrads["models/gpt2_tied_opset17.onnx"]["transformer.wte.weight"].Values
	for i, name := range tr.Trainable() {
		if name == ties[0].Copy {
			t.Fatalf("the copy %q is still trained", name)
		}
		if name == ties[0].Source {
			if e := relL2(tr.Grads()[i], want); e > 1e-3 {
				t.Fatalf("tied embedding gradient relative L2 error %.2e", e)
			}
		}
	}
	var got []engine.Metrics
	if err := tr.Train(context.Background(), WithReference(pairs, refC, refR), engine.RunConfig[encode.EncodedPair]{Metrics: jsonRecorder{&got}}); err != nil {
		t.Fatal(err)
	}
	for k, w := range curve {
		if e := math.Abs(got[k].Value("loss")-w.Value("loss")) / w.Value("loss"); e > 1e-3 {
			t.Errorf("step %d: loss %.6f, PyTorch tied %.6f", k+1, got[k].Value("loss"), w.Value("loss"))
		}
	}
	exported, err := tr.Model()
	if err != nil {
		t.Fatal(err)
	}
	src := onnx.Initializer(exported.Graph(), ties[0].Source)
	cp := onnx.Initializer(exported.Graph(), ties[0].Copy)
	if cp == nil {
		t.Fatal("the export lost the copy: the user's graph must keep its initializers")
	}
	if same, _ := lm.IsTranspose(src, cp); !same {
		t.Fatal("exported copy is not the transpose of the trained embedding")
	}
}

// TestNonFiniteLossStopsAndKeepsWork: a NaN loss is an error naming the step, raised
// before the update, and the state of the steps before it is saved.
func TestNonFiniteLossStopsAndKeepsWork(t *testing.T) {
	var o dpoOracle
	readOracle(t, "../../testdata/expected/dpo_grads_llama.json.gz", &o)
	pairs, refC, refR := oracleBatch(&o)
	refC = append([]float64(nil), refC...)
	refC[2] = math.NaN() // the second batch of two pairs
	m, err := onnx.Load("../../testdata/models/llama_opset17.onnx")
	if err != nil {
		t.Fatal(err)
	}
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimAdamW}, LR: 1e-3,
		BatchSize: 2, MaxSteps: 4, Threads: 1, PadID: o.PadID}
	tr, err := engine.NewEngine("llama", m, cfg, DPO{Loss: LossConfig{Type: LossSigmoid, Beta: 0.1}})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ckpt := filepath.Join(t.TempDir(), "checkpoint.bin")
	err = tr.Train(context.Background(), WithReference(pairs, refC, refR), engine.RunConfig[encode.EncodedPair]{Checkpoint: ckpt})
	if err == nil || !strings.Contains(err.Error(), "step 2") || !strings.Contains(err.Error(), "non-finite") || !strings.Contains(err.Error(), "saved") {
		t.Fatalf("want a non-finite loss error at step 2 that says the state was saved, got %v", err)
	}
	if _, err := os.Stat(ckpt); err != nil {
		t.Fatal(err)
	}
	for _, p := range tr.Params() {
		for _, v := range p {
			if math.IsNaN(float64(v)) {
				t.Fatal("a NaN reached the parameters")
			}
		}
	}
}

// checkSGDStep takes one SGD step with lr 1 and checks, per trainable tensor, that the
// gradient and the move of the exported weights (old − new) both equal the oracle
// gradient want(name) within 1e-3 relative L2. It returns the step's loss and the worst
// gradient error.
func checkSGDStep(t *testing.T, tr *engine.Engine[encode.EncodedPair], pairs []encode.EncodedPair, refC, refR []float64, want func(name string) []float64) (float64, float64) {
	t.Helper()
	start := make([][]float32, len(tr.Params()))
	for i, p := range tr.Params() {
		start[i] = append([]float32(nil), p...)
	}
	metrics, err := tr.StepOn([][]encode.EncodedPair{WithReference(pairs, refC, refR)}, 1)
	if err != nil {
		t.Fatal(err)
	}
	exported, err := tr.Model()
	if err != nil {
		t.Fatal(err)
	}
	worst := 0.0
	for i, name := range tr.Trainable() {
		w := want(name)
		e := relL2(tr.Grads()[i], w)
		worst = max(worst, e)
		if e > 1e-3 {
			t.Errorf("%s: gradient relative L2 error %.2e", name, e)
		}
		after, err := onnx.TensorFloats(onnx.Initializer(exported.Graph(), name))
		if err != nil {
			t.Fatal(err)
		}
		step := make([]float32, len(after))
		for k := range after {
			step[k] = start[i][k] - after[k] // = grad for lr 1
		}
		if e := relL2(step, w); e > 1e-3 {
			t.Errorf("%s: SGD step differs from -grad: relative L2 %.2e", name, e)
		}
	}
	return metrics.Value("loss"), worst
}

// pairLogps scores pairs with lm: log-probs of the chosen rows, then the rejected rows.
func pairLogps(t *testing.T, lpm *lm.LogProbModel, pairs []encode.EncodedPair) []float64 {
	t.Helper()
	lp, err := lpm.SequenceLogps(encode.PairRows(pairs))
	if err != nil {
		t.Fatal(err)
	}
	return lp
}
