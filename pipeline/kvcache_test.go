package pipeline

import (
	"fmt"
	"maps"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
	"ortalign/onnx/ort"
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
// loss and gradients (the llama oracle: each trainable initializer is matched by value to
// the llama_opset17.onnx initializer whose gradient the oracle holds), one SGD step with
// lr 1 moves each weight by minus its gradient, and the exported model keeps the
// past_key_values inputs and present outputs and still scores with an empty past.
func TestKVCacheModelTrains(t *testing.T) {
	var o dpoOracle
	readOracle(t, "../testdata/expected/dpo_grads_llama.json.gz", &o)
	const plainFile = "models/llama_opset17.onnx"
	want := o.OnnxGrads[plainFile]
	if len(want) == 0 {
		t.Fatalf("oracle has no gradients for %s", plainFile)
	}
	plain, err := onnx.Load(filepath.Join("../testdata", plainFile))
	if err != nil {
		t.Fatal(err)
	}
	pairs, refC, refR := oracleBatch(&o)
	m, err := onnx.Load(filepath.Join("../testdata", kvModelFile))
	if err != nil {
		t.Fatal(err)
	}
	cfg := TrainConfig{
		Optim: OptimConfig{Name: OptimSGD}, LR: 1, Scheduler: "constant",
		BatchSize: len(pairs), MaxSteps: 1, Threads: 1, PadID: o.PadID,
	}
	tr, err := NewEngine(kvModelFile, m, cfg, DPO{Loss: LossConfig{Type: LossSigmoid, Beta: o.Beta}})
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
	for _, name := range append([]string{logitsOutput}, kvPresents...) {
		if onnx.Output(exported.Graph(), name) == nil {
			t.Errorf("exported model lost output %q", name)
		}
	}
	// And it still scores with an empty past, now with the trained weights.
	lm, err := NewLogProbModel("trained "+kvModelFile, exported, ModelOptions{Threads: 1, PadID: o.PadID})
	if err != nil {
		t.Fatal(err)
	}
	defer lm.Close()
	lp := pairLogps(t, lm, pairs)
	if len(lp) != 2*len(pairs) {
		t.Fatalf("%d log-probs for %d rows", len(lp), 2*len(pairs))
	}
	// DPO loss at the new weights vs PyTorch's loss after the same SGD step.
	var sgd struct {
		SGD struct {
			After map[string]float64 `json:"loss_after_sgd_step"`
		} `json:"sgd"`
	}
	readOracle(t, "../testdata/expected/dpo_grads_llama.json.gz", &sgd)
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

// kvStylesOracle is testdata/expected/kv_styles.json (testdata/gen_kv_styles.py): plain
// exports in five attention styles written as transformers writes them, and PyTorch's
// greedy tokens for a left-padded batch of prompts.
type kvStylesOracle struct {
	MaxNewTokens int       `json:"max_new_tokens"`
	Prompts      [][]int64 `json:"prompts"`
	Models       map[string]struct {
		File   string `json:"file"`
		Greedy []struct {
			IDs    []int64 `json:"ids"`
			MinGap float64 `json:"min_gap"`
		} `json:"greedy"`
	} `json:"models"`
}

// TestDerivedCacheStyles: on every export style of kv_styles.json a cache is derived (no
// notice, mode "derived"), and greedy decoding with it, of the prompts batched with left
// and with right padding, gives the tokens of decoding without a cache and PyTorch's.
func TestDerivedCacheStyles(t *testing.T) {
	var o kvStylesOracle
	readOracle(t, "../testdata/expected/kv_styles.json", &o)
	if len(o.Models) < 5 {
		t.Fatalf("%d styles in the oracle, want 5", len(o.Models))
	}
	var ps []Prompt
	for i, p := range o.Prompts {
		ps = append(ps, Prompt{IDs: p, Index: i})
	}
	for _, style := range slices.Sorted(maps.Keys(o.Models)) {
		want := o.Models[style]
		t.Run(style, func(t *testing.T) {
			path := filepath.Join("../testdata", want.File)
			var notices []string
			cached, err := LoadGenerator(path, GeneratorOptions{Threads: 1, Notice: func(s string) { notices = append(notices, s) }})
			if err != nil {
				t.Fatal(err)
			}
			defer cached.Close()
			if cached.CacheMode() != "derived" || len(notices) > 0 {
				t.Fatalf("cache mode %q, notices %q; want a derived cache and no notice", cached.CacheMode(), notices)
			}
			plain, err := LoadGenerator(path, GeneratorOptions{Threads: 1, Cache: CacheOff})
			if err != nil {
				t.Fatal(err)
			}
			defer plain.Close()
			opts := SampleOptions{MaxNewTokens: o.MaxNewTokens}
			ref := generate(t, plain, ps, opts)
			for i, w := range want.Greedy {
				if !slices.Equal(ref[i].IDs, w.IDs) {
					t.Errorf("no cache, prompt %d: %v, PyTorch %v (min top-2 gap %.3g)", i, ref[i].IDs, w.IDs, w.MinGap)
				}
			}
			for _, side := range []string{"left", "right"} {
				opts.PaddingSide = side
				got := generate(t, cached, ps, opts)
				for i, w := range want.Greedy {
					if !slices.Equal(got[i].IDs, w.IDs) {
						t.Errorf("derived cache, %s padding, prompt %d: %v, PyTorch %v (min top-2 gap %.3g)", side, i, got[i].IDs, w.IDs, w.MinGap)
					}
					for k := range ref[i].Logps {
						if d := math.Abs(got[i].Logps[k] - ref[i].Logps[k]); d > 1e-4 {
							t.Errorf("%s padding, prompt %d token %d: logp %.6f with the cache, %.6f without", side, i, k, got[i].Logps[k], ref[i].Logps[k])
							break
						}
					}
				}
			}
		})
	}
}

// TestDerivedCacheNoticeNamesNode: when the derived cache is wrong — here the llama_bool
// style's mask transposed before its Where (queries see later keys, which no cache can
// give) — the generator decodes without a cache, giving the plain model's tokens, and its
// one notice says what failed and names the mask's node and how it was extended.
func TestDerivedCacheNoticeNamesNode(t *testing.T) {
	m, err := onnx.Load("../testdata/models/kvstyle_llama_bool.onnx")
	if err != nil {
		t.Fatal(err)
	}
	g := m.Graph()
	b := onnx.NewBuilder(g, m.Opset(""), "test")
	var where string
	for _, n := range slices.Clone(g.GetNode()) {
		if n.GetOpType() == "Where" && strings.HasSuffix(n.GetName(), "self_attn/Where_2") {
			n.Input[0] = b.Transpose(n.Input[0], []int64{0, 1, 3, 2})
			if where == "" {
				where = n.GetName()
			}
		}
	}
	if where == "" {
		t.Fatal("no self_attn/Where_2 in kvstyle_llama_bool.onnx")
	}
	if err := onnx.TopologicalSort(g); err != nil {
		t.Fatal(err)
	}
	var notices []string
	gen, err := NewGenerator("anti-causal", m, GeneratorOptions{Threads: 1, Notice: func(s string) { notices = append(notices, s) }})
	if err != nil {
		t.Fatal(err)
	}
	defer gen.Close()
	if gen.CacheMode() != "none" || len(notices) != 1 {
		t.Fatalf("mode %q, notices %q; want no cache and one notice", gen.CacheMode(), notices)
	}
	for _, want := range []string{"differ from a full run", fmt.Sprintf("Where node %q", where), "query axis 2", "without a cache"} {
		if !strings.Contains(notices[0], want) {
			t.Errorf("notice lacks %q: %s", want, notices[0])
		}
	}
	plain, err := NewGenerator("anti-causal", m, GeneratorOptions{Threads: 1, Cache: CacheOff})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	ps := mixedPrompts()
	for i := range ps {
		for k := range ps[i].IDs {
			ps[i].IDs[k] %= int64(gen.VocabSize())
		}
	}
	opts := SampleOptions{MaxNewTokens: 6}
	got, want := generate(t, gen, ps, opts), generate(t, plain, ps, opts)
	for i := range want {
		if !slices.Equal(got[i].IDs, want[i].IDs) {
			t.Errorf("prompt %d: %v, without a cache %v", i, got[i].IDs, want[i].IDs)
		}
	}
	t.Log(notices[0])
}

// TestDerivedCacheMasksLinear: the masks and positions of a decoding step with the derived
// cache cost q·(P+q), not (P+q)²: run one step (2 rows, a past of 40, 1 new token) of the
// derived graph of each style and of the tiny GPT-2 and Llama, and check that no value the mask surgery added has two axes of the
// whole sequence's length.
func TestDerivedCacheMasksLinear(t *testing.T) {
	const batch, past = 2, 40
	var o kvStylesOracle
	readOracle(t, "../testdata/expected/kv_styles.json", &o)
	files := []string{"models/gpt2_opset17.onnx", "models/llama_opset17.onnx"}
	for _, style := range slices.Sorted(maps.Keys(o.Models)) {
		files = append(files, o.Models[style].File)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			m, err := onnx.Load(filepath.Join("../testdata", file))
			if err != nil {
				t.Fatal(err)
			}
			dv, err := deriveCacheGraph(m, GeneratorOptions{Threads: 1})
			if err != nil {
				t.Fatal(err)
			}
			g := dv.model.Graph()
			b := onnx.NewBuilder(g, dv.model.Opset(""), "test_shape")
			var outs, values []string
			for _, n := range slices.Clone(g.GetNode()) {
				if !strings.HasPrefix(n.GetName(), "ortalign_kvmask/") {
					continue
				}
				for _, v := range n.GetOutput() {
					s := b.Shape(v)
					if err := onnx.AddOutput(g, s, onnx.Int64, []onnx.Dim{onnx.DimParam("rank")}); err != nil {
						t.Fatal(err)
					}
					outs, values = append(outs, s), append(values, v)
				}
			}
			if len(outs) == 0 {
				t.Fatal("the surgery added no nodes")
			}
			// What a decoding step runs (the generator prunes the same way).
			var keep []*onnxpb.ValueInfoProto
			for _, out := range g.GetOutput() {
				if out.GetName() == logitsOutput || slices.Contains(outs, out.GetName()) {
					keep = append(keep, out)
				}
			}
			g.Output = keep
			onnx.Prune(g, nil)
			sess, err := newModelSession(dv.model, outs, ort.Options{Threads: 1})
			if err != nil {
				t.Fatal(err)
			}
			defer sess.Destroy()
			total := past + 1
			mask := make([]int64, batch*total)
			for i := range mask {
				mask[i] = 1
			}
			feeds := map[string]*ort.Tensor{
				inputIDs:      {Shape: []int64{batch, 1}, I64: []int64{3, 4}},
				attentionMask: {Shape: []int64{batch, int64(total)}, I64: mask},
				positionIDs:   {Shape: []int64{batch, 1}, I64: []int64{past, past}},
			}
			for _, p := range dv.pasts {
				shape := slices.Clone(p.dims)
				shape[p.batchAxis], shape[p.seqAxis] = batch, past
				n := int64(1)
				for _, d := range shape {
					n *= d
				}
				feeds[p.name] = &ort.Tensor{Shape: shape, F32: make([]float32, n)}
			}
			res, err := sess.Run(feeds, nil)
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range outs {
				long := 0
				for _, d := range res[s].I64 {
					if d == int64(total) {
						long++
					}
				}
				if long > 1 {
					t.Errorf("%s has shape %v: quadratic in the sequence (%d tokens)", values[i], res[s].I64, total)
				}
			}
			t.Logf("%d values added by the surgery", len(outs))
		})
	}
}
