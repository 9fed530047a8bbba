package objective

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
	"ortalign/onnx/ort"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/lm"
)

// loraOracle is testdata/expected/lora_oracle.json.gz, written by
// testdata/gen_lora_oracle.py (PEFT's LoRA formulas in plain PyTorch, float64).
type loraOracle struct {
	InputIDs  [][]int64 `json:"input_ids"`
	PromptLen []int     `json:"prompt_len"`
	SeqLen    []int     `json:"seq_len"`
	PadID     int64     `json:"pad_id"`
	Models    map[string]struct {
		ONNX     string   `json:"onnx"`
		Targets  []string `json:"targets"`
		R        int      `json:"r"`
		Alpha    float64  `json:"lora_alpha"`
		LossBase float64  `json:"loss_base_float64"`
		Loss     float64  `json:"loss_float64"`
		Values   map[string]struct {
			Shape  []int64   `json:"shape"`
			Values []float64 `json:"values"`
		} `json:"values"`
		Grads map[string]struct {
			Shape  []int64   `json:"shape"`
			Values []float64 `json:"values"`
		} `json:"grads"`
	} `json:"models"`
}

func (o *loraOracle) sequences() []lm.Sequence {
	seqs := make([]lm.Sequence, len(o.InputIDs))
	for i := range seqs {
		seqs[i] = lm.Sequence{IDs: o.InputIDs[i][:o.SeqLen[i]], CompletionStart: o.PromptLen[i]}
	}
	return seqs
}

func loadModel(t *testing.T, path string) *onnx.Model {
	t.Helper()
	m, err := onnx.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func newEngineOf[T any](t *testing.T, path string, cfg engine.TrainConfig, obj engine.Objective[T]) *engine.Engine[T] {
	t.Helper()
	e, err := engine.NewEngine(path, loadModel(t, path), cfg, obj)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

// TestLoRAGradientsMatchPyTorch: with adapters set to the oracle's (non-zero B) values,
// the SFT loss and the gradients of every lora_A and lora_B equal PyTorch autograd's on
// PEFT's formulas (loss within oracleLossTol, rel L2 <= oracleGradTol), on the tiny Llama (q_proj, v_proj, down_proj) and
// GPT-2 (c_attn, c_fc); the engine trains exactly the adapters, named as PEFT saves them.
func TestLoRAGradientsMatchPyTorch(t *testing.T) {
	var o loraOracle
	readOracle(t, "../../testdata/expected/lora_oracle.json.gz", &o)
	seqs := o.sequences()
	for name, om := range o.Models {
		t.Run(name, func(t *testing.T) {
			cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimAdamW}, LR: 1, BatchSize: len(seqs), Threads: 1, PadID: o.PadID,
				Adapter: engine.LoRA{R: om.R, Alpha: om.Alpha, TargetModules: om.Targets}}
			e := newEngineOf(t, filepath.Join("../../testdata", om.ONNX), cfg, SFT{})
			var peft []string
			for _, n := range e.Trainable() {
				peft = append(peft, "base_model.model."+n)
			}
			want := make([]string, 0, len(om.Values))
			for k := range om.Values {
				want = append(want, k)
			}
			got := slices.Sorted(slices.Values(peft))
			if slices.Sort(want); !slices.Equal(got, want) {
				t.Fatalf("trains\n%q\nwant PEFT's\n%q", got, want)
			}
			// Optimizer state: only the adapters'.
			size := 0
			for i, n := range e.Trainable() {
				w := om.Values["base_model.model."+n]
				if !slices.Equal(e.ParamShapes()[i], w.Shape) {
					t.Fatalf("%s: shape %v, PEFT's %v", n, e.ParamShapes()[i], w.Shape)
				}
				size += len(e.Params()[i])
			}
			moments := 0
			for _, m := range e.Optimizer().M {
				moments += len(m)
			}
			if moments != size {
				t.Fatalf("AdamW moments hold %d values, the adapters %d", moments, size)
			}
			// Base loss first (B = 0), then the oracle's adapter values.
			m0, err := e.ComputeGradients(seqs)
			if err != nil {
				t.Fatal(err)
			}
			if d := relErr(m0.Value("loss"), om.LossBase); d > oracleLossTol {
				t.Errorf("loss at the start %.8f, base model's %.8f", m0.Value("loss"), om.LossBase)
			}
			for i, n := range e.Trainable() {
				for j, v := range om.Values["base_model.model."+n].Values {
					e.Params()[i][j] = float32(v)
				}
			}
			m, err := e.ComputeGradients(seqs)
			if err != nil {
				t.Fatal(err)
			}
			if d := relErr(m.Value("loss"), om.Loss); d > oracleLossTol {
				t.Errorf("loss %.8f, PyTorch %.8f (rel %.1e)", m.Value("loss"), om.Loss, d)
			}
			worst := 0.0
			for i, n := range e.Trainable() {
				worst = max(worst, relL2(e.Grads()[i], om.Grads["base_model.model."+n].Values))
			}
			if worst > oracleGradTol {
				t.Errorf("worst gradient relative L2 error %.2e, want <= %.1e", worst, oracleGradTol)
			}
			t.Logf("%d adapters; loss %.8f (PyTorch %.8f), worst gradient rel L2 %.2e", len(e.Trainable())/2, m.Value("loss"), om.Loss, worst)
		})
	}
}

// forwardLogps runs the engine's forward graph over pairs: chosen then rejected log-probs
// of each batch, in order.
func forwardLogps(t *testing.T, e *engine.Engine[encode.EncodedPair], pairs []encode.EncodedPair) []float32 {
	t.Helper()
	var out []float32
	err := e.Forward(context.Background(), pairs, func(_ []encode.EncodedPair, o map[string]*ort.Tensor) error {
		out = append(out, o[lm.SequenceLogpsOutput].F32...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestLoRAStartsAsTheBaseModel: with B = 0 the adapted model's log-probs are the base
// model's exactly (so DPO's reference from the starting weights is the base model), A
// is drawn as PEFT does (uniform in ±1/sqrt(in), seeded), and B is zero.
func TestLoRAStartsAsTheBaseModel(t *testing.T) {
	pairs, pad := enginePairs(t)
	for _, file := range []string{"llama_opset17.onnx", "gpt2_opset14.onnx"} {
		t.Run(file, func(t *testing.T) {
			path := "../../testdata/models/" + file
			cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimAdamW}, LR: 1e-3, BatchSize: 4, Threads: 1, PadID: pad, TieTransposedCopies: true}
			dpo := DPO{Loss: LossConfig{Type: LossSigmoid, Beta: 0.1}}
			base := newEngineOf(t, path, cfg, dpo)
			cfg.Adapter = engine.LoRA{R: 8, Alpha: 16, Seed: 3}
			e := newEngineOf(t, path, cfg, dpo)
			want, got := forwardLogps(t, base, pairs), forwardLogps(t, e, pairs)
			if !slices.Equal(got, want) {
				t.Fatalf("LoRA model's log-probs at the start\n%v\nbase model's\n%v", got, want)
			}
			ref, err := ReferenceFromPolicy(context.Background(), e, pairs, nil)
			if err != nil {
				t.Fatal(err)
			}
			for i, p := range ref {
				if *p.RefChosenLogps != float64(want[i/4*8+i%4]) {
					t.Fatalf("reference of pair %d %v, base model's %v", i, *p.RefChosenLogps, want[i/4*8+i%4])
				}
			}
			cfg.Adapter = engine.LoRA{R: 8, Alpha: 16, Seed: 4}
			other := newEngineOf(t, path, cfg, dpo)
			for i, n := range e.Trainable() {
				p := e.Params()[i]
				if strings.Contains(n, "lora_B") {
					if slices.ContainsFunc(p, func(v float32) bool { return v != 0 }) {
						t.Fatalf("%s is not zero", n)
					}
					continue
				}
				in := e.ParamShapes()[i][1]
				bound := 1 / math.Sqrt(float64(in))
				lo, hi := slices.Min(p), slices.Max(p)
				if float64(lo) < -bound || float64(hi) > bound || float64(hi-lo) < bound {
					t.Fatalf("%s [r, %d] in [%g, %g], want spread over ±%g", n, in, lo, hi, bound)
				}
				if slices.Equal(p, other.Params()[i]) {
					t.Fatalf("%s: the same values with another seed", n)
				}
			}
		})
	}
}

// loraRun trains a LoRA DPO engine on the tiny Llama for steps, cancelling after cancel
// steps (0: never) with a checkpoint in dir.
func loraRun(t *testing.T, dir string, steps, cancel int) (*engine.Engine[encode.EncodedPair], error) {
	t.Helper()
	pairs, pad := enginePairs(t)
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimAdamW}, LR: 2e-2, BatchSize: 4, MaxSteps: steps, Threads: 1, PadID: pad,
		Adapter: engine.LoRA{R: 4, Alpha: 8, Seed: 1}}
	e := newEngineOf(t, engineModel, cfg, DPO{Loss: LossConfig{Type: LossSigmoid, Beta: 0.1}})
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	rc := engine.RunConfig[encode.EncodedPair]{Checkpoint: filepath.Join(dir, "checkpoint.bin")}
	if cancel > 0 {
		rc.Metrics = &cancelAfter{n: cancel, cancel: stop}
	}
	return e, e.Train(ctx, pairs, rc)
}

// TestLoRATrainResumeAndMerge: the checkpoint holds only the adapters; a run interrupted
// and resumed ends with the same adapters as an uninterrupted one; the exported model is
// the user's graph (same nodes, names, inputs, outputs; only the targeted weights
// changed) and gives the adapter model's log-probs within 1e-5.
func TestLoRATrainResumeAndMerge(t *testing.T) {
	full, err := loraRun(t, t.TempDir(), 6, 0)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if _, err := loraRun(t, dir, 6, 3); !errors.Is(err, context.Canceled) {
		t.Fatalf("want an interrupted run, got %v", err)
	}
	ck := readCheckpointFile(t, filepath.Join(dir, "checkpoint.bin"))
	var names []string
	for _, n := range ck.header["names"].([]any) {
		names = append(names, n.(string))
	}
	if len(names) != 28 || slices.ContainsFunc(names, func(n string) bool { return !strings.Contains(n, ".lora_") }) {
		t.Fatalf("checkpoint holds %q, want the 28 adapters only", names)
	}
	if ck.header["settings"].(map[string]any)["lora.r"] != "4" {
		t.Fatalf("checkpoint settings lack lora.r: %v", ck.header["settings"])
	}
	resumed, err := loraRun(t, dir, 6, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range full.Params() {
		if !slices.Equal(full.Params()[i], resumed.Params()[i]) {
			t.Fatalf("%s differs after resuming", full.Trainable()[i])
		}
	}

	pairs, pad := enginePairs(t)
	want := forwardLogps(t, resumed, pairs)
	path := filepath.Join(t.TempDir(), "model.onnx")
	if err := resumed.Export(path); err != nil {
		t.Fatal(err)
	}
	base := loadModel(t, engineModel)
	out := loadModel(t, path)
	bg, og := base.Graph(), out.Graph()
	if len(og.GetNode()) != len(bg.GetNode()) || len(og.GetInitializer()) != len(bg.GetInitializer()) {
		t.Fatalf("export has %d nodes and %d initializers, the model %d and %d", len(og.GetNode()), len(og.GetInitializer()), len(bg.GetNode()), len(bg.GetInitializer()))
	}
	for i, n := range bg.GetNode() {
		if !proto.Equal(n, og.GetNode()[i]) {
			t.Fatalf("node %d: %v, want %v", i, og.GetNode()[i], n)
		}
	}
	same := func(a, b []*onnxpb.ValueInfoProto) bool {
		return slices.EqualFunc(a, b, func(x, y *onnxpb.ValueInfoProto) bool { return proto.Equal(x, y) })
	}
	if !same(bg.GetInput(), og.GetInput()) || !same(bg.GetOutput(), og.GetOutput()) {
		t.Fatal("inputs or outputs changed")
	}
	changed := 0
	for i, w := range bg.GetInitializer() {
		o := og.GetInitializer()[i]
		if o.GetName() != w.GetName() {
			t.Fatalf("initializer %d is %q, want %q", i, o.GetName(), w.GetName())
		}
		a, _ := onnx.TensorFloats(w)
		b, _ := onnx.TensorFloats(o)
		if !slices.Equal(a, b) {
			changed++
		}
	}
	if changed != 14 {
		t.Fatalf("%d weights changed, want the 14 targeted ones", changed)
	}
	lpm, err := lm.LoadLogProbModel(path, lm.ModelOptions{Threads: 1, PadID: pad})
	if err != nil {
		t.Fatal(err)
	}
	defer lpm.Close()
	worst := 0.0
	for lo := 0; lo < len(pairs); lo += 4 {
		got := pairLogps(t, lpm, pairs[lo:lo+4])
		for i, v := range got {
			worst = max(worst, nanToInf(math.Abs(v-float64(want[2*lo+i]))))
		}
	}
	if worst > 1e-5 {
		t.Fatalf("merged export's log-probs differ from the adapter model's by %.2e", worst)
	}
	startLogps := forwardLogps(t, newEngineOf(t, engineModel, engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimSGD}, LR: 1, BatchSize: 4, Threads: 1, PadID: pad}, DPO{Loss: LossConfig{Type: LossSigmoid, Beta: 0.1}}), pairs)
	if slices.Equal(startLogps, want) {
		t.Fatal("training did not change the model")
	}
	t.Logf("merged export vs adapter model: max |Δ log-prob| %.2e", worst)
}

// TestSaveAdapterPEFTFormat: SaveAdapter writes adapter_model.safetensors (parsed back
// by an independent reader: PEFT's names and shapes, the trained values) and
// adapter_config.json as PEFT reads them; Export writes them too when SaveDir is set.
func TestSaveAdapterPEFTFormat(t *testing.T) {
	pairs, pad := enginePairs(t)
	dir := t.TempDir()
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimAdamW}, LR: 1e-2, BatchSize: 4, MaxSteps: 2, Threads: 1, PadID: pad,
		Adapter: engine.LoRA{R: 2, Alpha: 4, TargetModules: []string{"q_proj", "v_proj"}, BaseModel: "tiny-llama", SaveDir: dir}}
	e := newEngineOf(t, engineModel, cfg, DPO{Loss: LossConfig{Type: LossSigmoid, Beta: 0.1}})
	if err := e.Train(context.Background(), pairs, engine.RunConfig[encode.EncodedPair]{}); err != nil {
		t.Fatal(err)
	}
	if err := e.Export(filepath.Join(t.TempDir(), "model.onnx")); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, engine.AdapterWeightsFile))
	if err != nil {
		t.Fatal(err)
	}
	n := binary.LittleEndian.Uint64(b)
	var hdr map[string]json.RawMessage
	if err := json.Unmarshal(b[8:8+n], &hdr); err != nil {
		t.Fatal(err)
	}
	data := b[8+n:]
	want := map[string][]int64{}
	for _, l := range []string{"0", "1"} {
		want["base_model.model.model.layers."+l+".self_attn.q_proj.lora_A.weight"] = []int64{2, 32}
		want["base_model.model.model.layers."+l+".self_attn.q_proj.lora_B.weight"] = []int64{32, 2}
		want["base_model.model.model.layers."+l+".self_attn.v_proj.lora_A.weight"] = []int64{2, 32}
		want["base_model.model.model.layers."+l+".self_attn.v_proj.lora_B.weight"] = []int64{16, 2}
	}
	if len(hdr) != len(want)+1 {
		t.Fatalf("header has %d entries, want %d tensors and __metadata__", len(hdr), len(want))
	}
	end := 0
	for name, shape := range want {
		var entry struct {
			Dtype   string  `json:"dtype"`
			Shape   []int64 `json:"shape"`
			Offsets [2]int  `json:"data_offsets"`
		}
		if err := json.Unmarshal(hdr[name], &entry); err != nil {
			t.Fatalf("%s: %v (%s)", name, err, hdr[name])
		}
		if entry.Dtype != "F32" || !slices.Equal(entry.Shape, shape) {
			t.Fatalf("%s: %s %v, want F32 %v", name, entry.Dtype, entry.Shape, shape)
		}
		vals := make([]float32, (entry.Offsets[1]-entry.Offsets[0])/4)
		for i := range vals {
			vals[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[entry.Offsets[0]+4*i:]))
		}
		i := slices.Index(e.Trainable(), strings.TrimPrefix(name, "base_model.model."))
		if i < 0 || !slices.Equal(vals, e.Params()[i]) {
			t.Fatalf("%s: values differ from the trained adapter", name)
		}
		end = max(end, entry.Offsets[1])
	}
	if end != len(data) {
		t.Fatalf("tensors end at %d of %d data bytes", end, len(data))
	}
	var c map[string]any
	cb, err := os.ReadFile(filepath.Join(dir, engine.AdapterConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(cb, &c); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]any{"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 2.0, "lora_alpha": 4.0, "lora_dropout": 0.0, "bias": "none", "base_model_name_or_path": "tiny-llama", "fan_in_fan_out": false} {
		if c[k] != v {
			t.Errorf("adapter_config.json %s = %v, want %v", k, c[k], v)
		}
	}
	if tm := c["target_modules"].([]any); len(tm) != 2 || tm[0] != "q_proj" || tm[1] != "v_proj" {
		t.Errorf("target_modules %v", tm)
	}
	// LoraConfig's lora_dropout is a float: Python must read 0.0, not the int 0.
	if !bytes.Contains(cb, []byte(`"lora_dropout": 0.0,`)) {
		t.Errorf("adapter_config.json writes lora_dropout as an integer:\n%s", cb)
	}
}

// TestPyFloatJSON: pyFloat values read back as the same float64, always in a form
// Python's json reads as a float.
func TestPyFloatJSON(t *testing.T) {
	for _, v := range []float64{0, 1, -2, 0.05, 0.1, 1e-7, 1e21, 123456789} {
		b, err := json.Marshal(engine.PyFloat(v))
		if err != nil {
			t.Fatal(err)
		}
		var back float64
		if err := json.Unmarshal(b, &back); err != nil || back != v || !bytes.ContainsAny(b, ".eE") {
			t.Errorf("%v encodes as %s (reads back %v, %v)", v, b, back, err)
		}
	}
}

// TestPEFTBaseModel: adapter_config.json's default base_model_name_or_path is the
// name_or_path of the tokenizer_config.json beside the tokenizer, else the absolute path
// of the model's folder; a malformed tokenizer config is an error naming it.
func TestPEFTBaseModel(t *testing.T) {
	dir := t.TempDir()
	model := filepath.Join(dir, "onnx", "model.onnx")
	tokDir := func(config string) string {
		d := t.TempDir()
		if config != "" {
			if err := os.WriteFile(filepath.Join(d, "tokenizer_config.json"), []byte(config), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return filepath.Join(d, "tokenizer.json")
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, model, tokenizer, want string
	}{
		{"hub id", model, tokDir(`{"name_or_path": "HuggingFaceTB/SmolLM2-135M", "eos_token": "</s>"}`), "HuggingFaceTB/SmolLM2-135M"},
		{"local folder", model, tokDir(`{"name_or_path": "/models/base"}`), "/models/base"},
		{"no name_or_path", model, tokDir(`{"eos_token": "</s>"}`), filepath.Join(dir, "onnx")},
		{"empty name_or_path", model, tokDir(`{"name_or_path": ""}`), filepath.Join(dir, "onnx")},
		{"not a string", model, tokDir(`{"name_or_path": null}`), filepath.Join(dir, "onnx")},
		{"no tokenizer_config.json", model, tokDir(""), filepath.Join(dir, "onnx")},
		{"no tokenizer", model, "", filepath.Join(dir, "onnx")},
		{"relative model path", "m/model.onnx", "", filepath.Join(wd, "m")},
	} {
		got, err := engine.PEFTBaseModel(c.model, c.tokenizer)
		if err != nil || got != c.want {
			t.Errorf("%s: %q, %v; want %q", c.name, got, err, c.want)
		}
	}
	bad := tokDir(`{"name_or_path": `)
	if _, err := engine.PEFTBaseModel(model, bad); err == nil || !strings.Contains(err.Error(), filepath.Join(filepath.Dir(bad), "tokenizer_config.json")) {
		t.Errorf("malformed tokenizer_config.json: %v", err)
	}
}

// TestLoRASettings: dropout other than 0 is refused with the reason; Freeze applies to
// the adapters; a full-model checkpoint is not resumed by a LoRA run.
func TestLoRASettings(t *testing.T) {
	pairs, pad := enginePairs(t)
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimSGD}, LR: 1e-3, BatchSize: 4, MaxSteps: 1, Threads: 1, PadID: pad}
	dpo := DPO{Loss: LossConfig{Type: LossSigmoid, Beta: 0.1}}
	cfg.Adapter = engine.LoRA{R: 4, Alpha: 8, Dropout: 0.05}
	if _, err := engine.NewEngine(engineModel, loadModel(t, engineModel), cfg, dpo); err == nil || !strings.Contains(err.Error(), "dropout") {
		t.Fatalf("want a dropout error, got %v", err)
	}
	cfg.Adapter = engine.LoRA{R: 4, Alpha: 8}
	cfg.Freeze = regexp.MustCompile(`layers\.1\.`)
	e := newEngineOf(t, engineModel, cfg, dpo)
	if len(e.Trainable()) != 14 {
		t.Fatalf("with layers.1 frozen, trains %d tensors, want 14", len(e.Trainable()))
	}
	// A full fine-tuning checkpoint is refused.
	ckpt := filepath.Join(t.TempDir(), "checkpoint.bin")
	plain := newEngineOf(t, engineModel, engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimSGD}, LR: 1e-3, BatchSize: 4, MaxSteps: 1, Threads: 1, PadID: pad}, dpo)
	if err := plain.Train(context.Background(), pairs, engine.RunConfig[encode.EncodedPair]{Checkpoint: ckpt}); err != nil {
		t.Fatal(err)
	}
	cfg.Freeze = nil
	lo := newEngineOf(t, engineModel, cfg, dpo)
	if err := lo.Train(context.Background(), pairs, engine.RunConfig[encode.EncodedPair]{Checkpoint: ckpt}); err == nil {
		t.Fatal("a LoRA run resumed a full fine-tuning checkpoint")
	}
}
