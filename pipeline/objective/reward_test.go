package objective

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/lm"
	"ortalign/pipeline/score"
)

// rewardOracle is testdata/expected/reward_oracle_llama.json.gz, written by
// testdata/gen_reward_oracle.py with PyTorch autograd in float64.
type rewardOracle struct {
	InputIDs    [][]int64 `json:"input_ids"`
	PromptLen   []int     `json:"prompt_len"`
	SeqLen      []int     `json:"seq_len"`
	PadID       int64     `json:"pad_id"`
	ScoreWeight []float64 `json:"score_weight"`
	Cases       []struct {
		Name      string             `json:"name"`
		Margin    []float64          `json:"margin"`
		Coef      *float64           `json:"center_rewards_coefficient"`
		Rewards   []float64          `json:"rewards"`
		Loss      float64            `json:"loss_float64"`
		Metrics   map[string]float64 `json:"metrics"`
		ScoreGrad []float64          `json:"score_grad"`
		Grads     map[string][]float64
	} `json:"cases"`
}

func (o *rewardOracle) pairs(margin []float64) []encode.EncodedPair {
	n := len(o.InputIDs) / 2
	pairs := make([]encode.EncodedPair, n)
	for i := range pairs {
		pairs[i] = encode.EncodedPair{
			Index:    i,
			Chosen:   lm.Sequence{IDs: o.InputIDs[i][:o.SeqLen[i]], CompletionStart: o.PromptLen[i]},
			Rejected: lm.Sequence{IDs: o.InputIDs[n+i][:o.SeqLen[n+i]], CompletionStart: o.PromptLen[n+i]},
		}
		if margin != nil {
			m := margin[i]
			pairs[i].Margin = &m
		}
	}
	return pairs
}

// paramsMap is testdata/models/params_map.json: ONNX initializer -> PyTorch parameter.
type paramsMap map[string]map[string]*struct {
	Param     string `json:"param"`
	Transpose bool   `json:"transpose"`
}

func readParamsMap(t *testing.T) paramsMap {
	t.Helper()
	b, err := os.ReadFile("../../testdata/models/params_map.json")
	if err != nil {
		t.Fatal(err)
	}
	var pm paramsMap
	if err := json.Unmarshal(b, &pm); err != nil {
		t.Fatal(err)
	}
	return pm
}

// rewardGraphWithWeight grafts the head on a tiny model and sets its weight to w.
func rewardGraphWithWeight(t *testing.T, file string, w []float64) *lm.RewardGraph {
	t.Helper()
	m, err := onnx.Load(filepath.Join("../../testdata", file))
	if err != nil {
		t.Fatal(err)
	}
	rg, err := lm.NewRewardGraph(m, lm.RewardHeadOptions{Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if rg.Kind != lm.RewardHeadGrafted || rg.Weight != lm.ScoreWeightName {
		t.Fatalf("kind %q weight %q, want a grafted %s", rg.Kind, rg.Weight, lm.ScoreWeightName)
	}
	if w != nil {
		f := make([]float32, len(w))
		for i, v := range w {
			f[i] = float32(v)
		}
		if err := onnx.SetTensorFloats(onnx.Initializer(rg.Model.Graph(), rg.Weight), f); err != nil {
			t.Fatal(err)
		}
	}
	return rg
}

// TestRewardLossAndGradientsMatchPyTorch: the reward graph (grafted scalar head at the
// last real token) and the Bradley–Terry loss give PyTorch's rewards, loss, TRL metrics
// and gradients (every backbone parameter and the head), with and without a margin and
// the centering term, on the tiny Llama at opsets 14 and 17 with padding in the batch.
func TestRewardLossAndGradientsMatchPyTorch(t *testing.T) {
	var o rewardOracle
	readOracle(t, "../../testdata/expected/reward_oracle_llama.json.gz", &o)
	pm := readParamsMap(t)
	for _, file := range []string{"models/llama_opset14.onnx", "models/llama_opset17.onnx"} {
		t.Run(filepath.Base(file), func(t *testing.T) {
			rg := rewardGraphWithWeight(t, file, o.ScoreWeight)
			engines := map[float64]*engine.Engine[encode.EncodedPair]{}
			for _, c := range o.Cases {
				coef := 0.0
				if c.Coef != nil {
					coef = *c.Coef
				}
				e := engines[coef]
				if e == nil {
					cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimSGD}, LR: 1, BatchSize: 4, Threads: 1, PadID: o.PadID}
					var err error
					if e, err = engine.NewEngine(file, rg.Model, cfg, Reward{CenterRewardsCoefficient: coef}); err != nil {
						t.Fatal(err)
					}
					defer e.Close()
					engines[coef] = e
				}
				pairs := o.pairs(c.Margin)
				got, err := e.ComputeGradients(pairs)
				if err != nil {
					t.Fatal(err)
				}
				if d := relErr(got.Value("loss"), c.Loss); d > oracleLossTol {
					t.Errorf("%s: loss %.8f, PyTorch %.8f (rel %.1e)", c.Name, got.Value("loss"), c.Loss, d)
				}
				for _, name := range []string{"accuracy", "margin", "min_reward", "mean_reward", "max_reward"} {
					if d := nanToInf(math.Abs(got.Value(name) - c.Metrics[name])); d > 1e-5*math.Max(1, math.Abs(c.Metrics[name])) {
						t.Errorf("%s: %s %.8f, PyTorch %.8f", c.Name, name, got.Value(name), c.Metrics[name])
					}
				}
				if w := (Reward{}).Weight(pairs); w != 4 {
					t.Errorf("weight %v, want 4 pairs", w)
				}
				worst, checked := 0.0, 0
				for i, name := range e.Trainable() {
					var want []float64
					if name == lm.ScoreWeightName {
						want = c.ScoreGrad
					} else {
						info := pm[filepath.Base(file)][name]
						if info == nil {
							t.Fatalf("%s: no PyTorch parameter for %q", c.Name, name)
						}
						want = c.Grads[info.Param]
						if info.Transpose {
							dims := onnx.Initializer(rg.Model.Graph(), name).GetDims()
							want = transposed64(want, int(dims[1]), int(dims[0]))
						}
					}
					if len(want) != len(e.Grads()[i]) {
						t.Fatalf("%s: %q has %d gradient values, PyTorch %d", c.Name, name, len(e.Grads()[i]), len(want))
					}
					worst = math.Max(worst, relL2(e.Grads()[i], want))
					checked++
				}
				if checked != len(c.Grads)+1 {
					t.Errorf("%s: checked %d tensors, PyTorch has %d parameters and the head", c.Name, checked, len(c.Grads))
				}
				if worst > oracleGradTol {
					t.Errorf("%s: worst gradient relative L2 error %.2e, want <= %.1e", c.Name, worst, oracleGradTol)
				}
				t.Logf("%s: loss %.8f (PyTorch %.8f), worst gradient relative L2 error %.2e over %d tensors", c.Name, got.Value("loss"), c.Loss, worst, checked)
			}
		})
	}
}

// transposed64 transposes a rows×cols row-major matrix.
func transposed64(v []float64, rows, cols int) []float64 {
	out := make([]float64, len(v))
	for r := 0; r < rows; r++ {
		for c := 0; c < cols; c++ {
			out[c*rows+r] = v[r*cols+c]
		}
	}
	return out
}

// TestRewardGraphShapes: every tiny model becomes a graph with exactly the inputs
// input_ids, attention_mask and the output rewards [batch]; the LM head is pruned; the KV
// export (past fed empty inside) and the plain export of the same Llama give the same
// rewards, which are PyTorch's; a reward graph and a sequence-classification export
// ([batch, 1] output, with position_ids to feed) are used as they are.
func TestRewardGraphShapes(t *testing.T) {
	var o rewardOracle
	readOracle(t, "../../testdata/expected/reward_oracle_llama.json.gz", &o)
	rows := encode.PairRows(o.pairs(nil))
	want := o.Cases[0].Rewards
	scoreOf := func(t *testing.T, m *onnx.Model, vocab int64) []float64 {
		t.Helper()
		rm, err := score.NewRewardModel("test", m, lm.ModelOptions{Threads: 1, PadID: o.PadID})
		if err != nil {
			t.Fatal(err)
		}
		defer rm.Close()
		if rm.VocabSize() != vocab {
			t.Errorf("vocabulary %d, want %d", rm.VocabSize(), vocab)
		}
		r, err := rm.Rewards(rows)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	for _, file := range []string{"models/llama_opset17.onnx", "models/llama_kv_opset17.onnx", "models/llama_opset14.onnx", "models/gpt2_opset17.onnx", "models/gpt2_tied_opset17.onnx"} {
		t.Run(filepath.Base(file), func(t *testing.T) {
			w := o.ScoreWeight
			if filepath.Base(file)[:4] == "gpt2" {
				w = nil
			}
			rg := rewardGraphWithWeight(t, file, w)
			g := rg.Model.Graph()
			if in := lm.ValueNames(g.GetInput()); !slices.Equal(in, []string{lm.InputIDs, lm.AttentionMask}) {
				t.Errorf("inputs %v, want [input_ids attention_mask]", in)
			}
			if out := lm.ValueNames(g.GetOutput()); !slices.Equal(out, []string{lm.RewardOutput}) {
				t.Errorf("outputs %v, want [rewards]", out)
			}
			for _, init := range g.GetInitializer() {
				if d := init.GetDims(); len(d) == 2 && d[1] == 512 {
					t.Errorf("initializer %q %v survived: the LM head should be pruned", init.GetName(), d)
				}
			}
			for _, n := range g.GetNode() {
				if n.GetOpType() == "MatMul" && slices.Contains(n.GetInput(), "lm_head.weight") {
					t.Errorf("LM head node %q survived", n.GetName())
				}
			}
			got := scoreOf(t, rg.Model, 512)
			if w != nil {
				for i := range want {
					if !(math.Abs(got[i]-want[i]) <= 1e-4) {
						t.Errorf("row %d: reward %.6f, PyTorch %.6f", i, got[i], want[i])
					}
				}
			}
			// Already a reward model: used as is.
			again, err := lm.NewRewardGraph(rg.Model, lm.RewardHeadOptions{Seed: 99})
			if err != nil {
				t.Fatal(err)
			}
			if again.Kind != lm.RewardHeadExisting || len(again.Model.Graph().GetNode()) != len(g.GetNode()) {
				t.Errorf("a reward graph again: kind %q, %d nodes (was %d)", again.Kind, len(again.Model.Graph().GetNode()), len(g.GetNode()))
			}
			if r := scoreOf(t, again.Model, 512); !slices.Equal(r, got) {
				t.Errorf("a reward graph again scores %v, was %v", r, got)
			}
			// A sequence-classification export of the same model and head: a [batch, 1]
			// output beside the export's others, and its own inputs (position_ids, past);
			// nothing records its vocabulary.
			sc := seqClassExport(t, file, rg)
			exp, err := lm.NewRewardGraph(sc, lm.RewardHeadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if exp.Kind != lm.RewardHeadExported || exp.Weight != "" {
				t.Errorf("sequence-classification export: kind %q weight %q", exp.Kind, exp.Weight)
			}
			if r := scoreOf(t, exp.Model, 0); !slices.Equal(r, got) {
				t.Errorf("as a sequence-classification export it scores %v, was %v", r, got)
			}
		})
	}
	// A plain causal LM is not a reward model to score with.
	m, err := onnx.Load("../../testdata/models/llama_opset17.onnx")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := score.NewRewardModel("llama", m, lm.ModelOptions{}); err == nil {
		t.Error("a causal LM was accepted as a reward model")
	}
}

// seqClassExport is the model file with the head of rg as a sequence-classification
// export has it: score_logits [batch, 1] beside the model's other outputs, the model's
// own inputs.
func seqClassExport(t *testing.T, file string, rg *lm.RewardGraph) *onnx.Model {
	t.Helper()
	m, err := onnx.Load(filepath.Join("../../testdata", file))
	if err != nil {
		t.Fatal(err)
	}
	g := m.Graph()
	head, ok := lm.FindLMHead(g)
	if !ok {
		t.Fatal("no LM head")
	}
	w := onnx.Initializer(rg.Model.Graph(), rg.Weight)
	if err := onnx.AddInitializer(g, onnx.FloatTensor("seqcls.score", w.GetDims(), mustFloats(t, w))); err != nil {
		t.Fatal(err)
	}
	b := onnx.NewBuilder(g, m.Opset(""), "seqcls")
	lm.AddIdentity(g, b.MatMul(lm.LastTokenHidden(b, head.Hidden, w.GetDims()[0]), "seqcls.score"), "score_logits")
	g.Output = append([]*onnxpb.ValueInfoProto{onnx.TensorValueInfo("score_logits", onnx.Float, []onnx.Dim{onnx.DimParam("batch"), onnx.DimValue(1)})}, g.Output[1:]...)
	onnx.Prune(g, lm.ValueNames(g.GetInput()))
	return m
}

func mustFloats(t *testing.T, init *onnxpb.TensorProto) []float32 {
	t.Helper()
	v, err := onnx.TensorFloats(init)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestRewardHeadInit: the grafted head is normal(0, 0.02) by default, fixed by the seed.
func TestRewardHeadInit(t *testing.T) {
	m, err := onnx.Load("../../testdata/models/llama_opset17.onnx")
	if err != nil {
		t.Fatal(err)
	}
	weights := func(seed int64) []float32 {
		rg, err := lm.NewRewardGraph(m, lm.RewardHeadOptions{Seed: seed})
		if err != nil {
			t.Fatal(err)
		}
		init := onnx.Initializer(rg.Model.Graph(), rg.Weight)
		if d := init.GetDims(); !slices.Equal(d, []int64{32, 1}) {
			t.Fatalf("head weight dims %v, want [32 1]", d)
		}
		w, err := onnx.TensorFloats(init)
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	a, b, c := weights(42), weights(42), weights(7)
	if !slices.Equal(a, b) || slices.Equal(a, c) {
		t.Error("the head's weights do not follow the seed")
	}
	var ss float64
	for _, v := range append(a, c...) {
		ss += float64(v) * float64(v)
	}
	if std := math.Sqrt(ss / 64); std < 0.01 || std > 0.03 {
		t.Errorf("head weights' std %.4f, want about 0.02", std)
	}
}

// TestRewardTrainingSeparatesPairs: a few AdamW steps on a fixed batch raise the
// accuracy and the margin, lower the loss, and num_tokens counts every token seen.
func TestRewardTrainingSeparatesPairs(t *testing.T) {
	var o rewardOracle
	readOracle(t, "../../testdata/expected/reward_oracle_llama.json.gz", &o)
	pairs := o.pairs(nil)
	rg := rewardGraphWithWeight(t, "models/llama_opset17.onnx", nil)
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimAdamW, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8}, LR: 3e-3, BatchSize: 2, GradAccum: 2, MaxSteps: 20, Threads: 1, PadID: o.PadID}
	e, err := engine.NewEngine("llama", rg.Model, cfg, Reward{CenterRewardsCoefficient: 0.01})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	var got []engine.Metrics
	if err := e.Train(context.Background(), pairs, engine.RunConfig[encode.EncodedPair]{Metrics: jsonRecorder{&got}}); err != nil {
		t.Fatal(err)
	}
	tokens := 0
	for _, p := range pairs {
		tokens += len(p.Chosen.IDs) + len(p.Rejected.IDs)
	}
	first, last := got[0], got[len(got)-1]
	if first.Value("num_tokens") != float64(tokens) || last.Value("num_tokens") != float64(20*tokens) {
		t.Errorf("num_tokens %v after one step and %v after 20, want %d and %d", first.Value("num_tokens"), last.Value("num_tokens"), tokens, 20*tokens)
	}
	if !(last.Value("loss") < 0.5*first.Value("loss")) || last.Value("accuracy") != 1 || !(last.Value("margin") > first.Value("margin")) {
		t.Fatalf("loss %.4f -> %.4f, accuracy %.2f -> %.2f, margin %.3f -> %.3f: want the loss halved, every pair right and a wider margin",
			first.Value("loss"), last.Value("loss"), first.Value("accuracy"), last.Value("accuracy"), first.Value("margin"), last.Value("margin"))
	}
	for _, m := range got {
		if !(m.Value("min_reward") <= m.Value("mean_reward") && m.Value("mean_reward") <= m.Value("max_reward")) {
			t.Fatalf("min/mean/max reward out of order: %v", m)
		}
	}
	t.Logf("loss %.4f -> %.4f, accuracy %.2f -> %.2f, margin %.3f -> %.3f", first.Value("loss"), last.Value("loss"), first.Value("accuracy"), last.Value("accuracy"), first.Value("margin"), last.Value("margin"))
}

// TestLoadPairsReadsMargin: the margin column reaches the encoded pairs (nil where null
// or absent), and the reward objective feeds it (0 for nil).
func TestLoadPairsReadsMargin(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pairs.jsonl")
	rows := `{"prompt_input_ids": [1, 2], "chosen_input_ids": [3], "rejected_input_ids": [4], "margin": 1.5}
{"prompt_input_ids": [1, 2], "chosen_input_ids": [5], "rejected_input_ids": [6], "margin": null}
`
	if err := os.WriteFile(path, []byte(rows), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := encode.LoadPairs(path, encode.DataOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Items) != 2 || l.Items[0].Margin == nil || *l.Items[0].Margin != 1.5 || l.Items[1].Margin != nil {
		t.Fatalf("margins: %+v", l.Items)
	}
	feeds, err := (Reward{}).Feeds(engine.ModelInputs{}, l.Items)
	if err != nil {
		t.Fatal(err)
	}
	if got := feeds[MarginInput].F32; !slices.Equal(got, []float32{1.5, 0}) {
		t.Errorf("margin feed %v, want [1.5 0]", got)
	}
	if _, ok := feeds[lm.CompletionMaskInput]; ok {
		t.Error("a reward graph takes no completion mask")
	}
}
