package autodiff

import (
	"compress/gzip"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"ortalign/onnx"
	"ortalign/onnx/ort"
)

// dpoOracle is the part of testdata/expected/dpo_grads_<model>.json.gz
// (testdata/gen_dpo_oracle.py) the whole-model test reads.
type dpoOracle struct {
	Beta           float64     `json:"beta"`
	InputIDs       [][]int64   `json:"input_ids"`
	AttentionMask  [][]int64   `json:"attention_mask"`
	PositionIDs    [][]int64   `json:"position_ids"`
	CompletionMask [][]float64 `json:"completion_mask"`
	RefLogps       []float64   `json:"ref_logps"`
	LossFloat32    float64     `json:"loss_float32"`
	LossFloat64    float64     `json:"loss_float64"`
	// OnnxGrads maps "models/<file>.onnx" to initializer -> gradient
	// (nil for initializers that are not parameters).
	OnnxGrads map[string]map[string]*struct {
		Shape  []int64   `json:"shape"`
		Values []float64 `json:"values"`
	} `json:"onnx_grads"`
}

func readOracle(t *testing.T, model string) *dpoOracle {
	t.Helper()
	path := filepath.Join("..", "..", "testdata", "expected", "dpo_grads_"+model+".json.gz")
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		t.Skipf("%s missing: run /usr/bin/python3 testdata/gen_dpo_oracle.py", path)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var o dpoOracle
	if err := json.NewDecoder(zr).Decode(&o); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return &o
}

// appendDPOLoss adds to a causal LM the DPO sigmoid loss of TRL:
// mean over pairs of -log σ(β((pc - pr) - (rc - rr))), where the batch
// holds the chosen rows then the rejected rows, the policy log-probs are
// sums of completion-token log-probs (as pipeline's log-prob head), and the
// reference log-probs are the input "ref_logps". It returns the loss and
// the per-sequence log-probs.
func appendDPOLoss(t *testing.T, m *onnx.Model, beta float32) (loss, logps string) {
	t.Helper()
	g := m.Graph()
	batchSeq := []onnx.Dim{onnx.DimParam("batch"), onnx.DimParam("sequence")}
	if err := onnx.AddInput(g, "completion_mask", onnx.Float, batchSeq); err != nil {
		t.Fatal(err)
	}
	if err := onnx.AddInput(g, "ref_logps", onnx.Float, batchSeq[:1]); err != nil {
		t.Fatal(err)
	}
	b := onnx.NewBuilder(g, m.Opset(""), "dpo")
	const end = math.MaxInt64
	prev := b.Slice("logits", []int64{0}, []int64{-1}, []int64{1}, nil)
	next := b.Slice("input_ids", []int64{1}, []int64{end}, []int64{1}, nil)
	lp := b.LogSoftmax(prev, -1)
	tok := b.Squeeze(b.GatherElements(lp, b.Unsqueeze(next, []int64{2}), 2), []int64{2})
	mask := b.Slice("completion_mask", []int64{1}, []int64{end}, []int64{1}, nil)
	logps = b.ReduceSum(b.Mul(tok, mask), []int64{1}, false)

	pol := b.Split(logps, 0, nil, 2)
	ref := b.Split("ref_logps", 0, nil, 2)
	margin := b.Sub(b.Sub(pol[0], pol[1]), b.Sub(ref[0], ref[1]))
	loss = b.ReduceMean(b.Neg(b.Log(b.Sigmoid(b.Mul(b.ConstFloat(beta), margin)))), nil, false)
	return loss, logps
}

func TestWholeModelsMatchPyTorch(t *testing.T) {
	for _, file := range []string{"gpt2_opset14", "gpt2_opset17", "gpt2_tied_opset17", "llama_opset14", "llama_opset17"} {
		t.Run(file, func(t *testing.T) {
			model := strings.SplitN(file, "_", 2)[0]
			o := readOracle(t, model)
			want := o.OnnxGrads["models/"+file+".onnx"]
			if want == nil {
				t.Fatalf("oracle has no gradients for models/%s.onnx", file)
			}
			m, err := onnx.Load(filepath.Join("..", "..", "testdata", "models", file+".onnx"))
			if err != nil {
				t.Fatal(err)
			}
			loss, logps := appendDPOLoss(t, m, float32(o.Beta))
			var trainable []string
			for _, init := range m.Graph().GetInitializer() {
				if want[init.GetName()] != nil {
					trainable = append(trainable, init.GetName())
				}
			}
			res, err := Build(m, Config{Loss: loss, Trainable: trainable, KeepOutputs: []string{logps}})
			if err != nil {
				t.Fatal(err)
			}

			feeds := map[string]*ort.Tensor{
				"input_ids":       ints2D(o.InputIDs),
				"attention_mask":  ints2D(o.AttentionMask),
				"completion_mask": floats2D(o.CompletionMask),
				"ref_logps":       {Shape: []int64{int64(len(o.RefLogps))}, F32: f32s(o.RefLogps)},
			}
			if onnx.Input(res.Model.Graph(), "position_ids") != nil {
				feeds["position_ids"] = ints2D(o.PositionIDs)
			}
			for _, p := range trainable {
				feeds[p] = paramTensor(t, onnx.Initializer(m.Graph(), p))
			}
			outs := []string{loss}
			for _, p := range trainable {
				outs = append(outs, res.Grads[p])
			}
			got := runModel(t, res.Model, outs, feeds)
			if l := float64(got[loss].F32[0]); math.Abs(l-o.LossFloat64) > 1e-5*math.Abs(o.LossFloat64) {
				t.Errorf("loss %.8f, PyTorch float64 %.8f", l, o.LossFloat64)
			}
			worst, worstName := 0.0, ""
			for _, p := range trainable {
				g, w := got[res.Grads[p]], want[p]
				if !slices.Equal(g.Shape, w.Shape) {
					t.Fatalf("%s: gradient shape %v, PyTorch %v", p, g.Shape, w.Shape)
				}
				var num, den float64
				for i, v := range w.Values {
					d := float64(g.F32[i]) - v
					num += d * d
					den += v * v
				}
				rel := math.Sqrt(num / den)
				if rel > worst {
					worst, worstName = rel, p
				}
				if !(rel <= 1e-3) {
					t.Errorf("%s: relative L2 error %.3g against PyTorch", p, rel)
				}
			}
			t.Logf("%d parameters; largest relative L2 error %.3g (%s); loss %.8f (PyTorch float64 %.8f)",
				len(trainable), worst, worstName, got[loss].F32[0], o.LossFloat64)
		})
	}
}

func ints2D(v [][]int64) *ort.Tensor {
	t := &ort.Tensor{Shape: []int64{int64(len(v)), int64(len(v[0]))}}
	for _, row := range v {
		t.I64 = append(t.I64, row...)
	}
	return t
}

func floats2D(v [][]float64) *ort.Tensor {
	t := &ort.Tensor{Shape: []int64{int64(len(v)), int64(len(v[0]))}}
	for _, row := range v {
		t.F32 = append(t.F32, f32s(row)...)
	}
	return t
}

func f32s(v []float64) []float32 {
	out := make([]float32, len(v))
	for i, x := range v {
		out[i] = float32(x)
	}
	return out
}
