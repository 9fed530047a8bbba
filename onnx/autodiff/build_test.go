package autodiff

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
	"ortalign/onnx/ort"
)

// newCase returns an empty float64 case graph at opset 17 with one unused
// input (onnxruntime_go cannot run a session without inputs).
func newCase(name string) (*onnx.Model, *tc) {
	m := onnx.NewModel(&onnxpb.ModelProto{
		IrVersion:   proto.Int64(8),
		OpsetImport: []*onnxpb.OperatorSetIdProto{{Domain: proto.String(""), Version: proto.Int64(17)}},
		Graph:       &onnxpb.GraphProto{Name: proto.String(name)},
	})
	g := m.Graph()
	return m, &tc{b: onnx.NewBuilder(g, 17, ""), g: g, rng: rand.New(rand.NewPCG(3, 4)), feeds: map[string]*ort.Tensor{}}
}

func setLoss(m *onnx.Model, loss string) {
	m.Graph().Output = []*onnxpb.ValueInfoProto{onnx.TensorValueInfo(loss, onnx.Double, []onnx.Dim{})}
}

func TestUnsupportedOpIsAnError(t *testing.T) {
	m, c := newCase("unsupported")
	c.data([]int64{1})
	p := c.param(2, 3)
	hs := c.op("HardSigmoid", []string{p})
	frozen := c.op("Selu", []string{c.data([]int64{2, 3})}) // no trainable behind it: fine
	loss := c.b.ReduceSum(c.b.Mul(hs, frozen), nil, false)
	setLoss(m, loss)

	refs := Unsupported(m, loss, c.trainable)
	if len(refs) != 1 || refs[0].OpType != "HardSigmoid" || refs[0].Name != "HardSigmoid_0" {
		t.Fatalf("Unsupported = %v, want the HardSigmoid node only", refs)
	}
	_, err := Build(m, Config{Loss: loss, Trainable: c.trainable, SampleFeeds: c.feeds})
	var ue *UnsupportedError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), `HardSigmoid node "HardSigmoid_0"`) {
		t.Fatalf("Build error = %v, want one naming HardSigmoid node \"HardSigmoid_0\"", err)
	}
}

func TestConfigErrors(t *testing.T) {
	m, c := newCase("config")
	c.data([]int64{1})
	p := c.param(2)
	frozen := c.b.Const(onnx.Int64Tensor("", []int64{2}, []int64{1, 2}))
	loss := c.b.ReduceSum(p, nil, false)
	setLoss(m, loss)
	for _, tt := range []struct {
		cfg  Config
		want string
	}{
		{Config{Loss: "nope", Trainable: []string{p}}, `loss "nope" is not a value`},
		{Config{Loss: loss}, "no trainable parameters"},
		{Config{Loss: loss, Trainable: []string{"q"}}, `"q" is not an initializer`},
		{Config{Loss: loss, Trainable: []string{frozen}}, "only floating-point initializers"},
		{Config{Loss: loss, Trainable: []string{p, p}}, "listed twice"},
		{Config{Loss: p, Trainable: []string{p}}, "must be a scalar"},
		{Config{Loss: loss, Trainable: []string{p}, KeepOutputs: []string{"x"}}, `kept output "x"`},
	} {
		_, err := Build(m, tt.cfg)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Build(%+v) error = %v, want it to contain %q", tt.cfg, err, tt.want)
		}
	}
}

// A parameter without a path to the loss gets a zero gradient, and the
// branch that does not reach the loss is not differentiated.
func TestPruning(t *testing.T) {
	m, c := newCase("prune")
	c.data([]int64{1})
	p, q := c.param(2, 3), c.param(3)
	loss := c.b.ReduceSum(c.b.Mul(p, p), nil, false)
	// Einsum has no rule, but this one does not reach the loss.
	metric := c.op("Einsum", []string{c.b.Add(p, q)}, onnx.AttrString("equation", "ij->i"))
	setLoss(m, loss)
	res, err := Build(m, Config{Loss: loss, Trainable: []string{p, q}, KeepOutputs: []string{metric}, SampleFeeds: c.feeds})
	if err != nil {
		t.Fatal(err)
	}
	in := map[string]*ort.Tensor{"d1": c.feeds["d1"]}
	for _, name := range []string{p, q} {
		in[name] = paramTensor(t, onnx.Initializer(m.Graph(), name))
	}
	got := runModel(t, res.Model, []string{loss, metric, res.Grads[p], res.Grads[q]}, in)
	for i, v := range got[res.Grads[p]].F64 {
		if want := 2 * in[p].F64[i]; v != want {
			t.Errorf("grad p[%d] = %v, want %v", i, v, want)
		}
	}
	if gq := got[res.Grads[q]]; !slices.Equal(gq.Shape, []int64{3}) || slices.ContainsFunc(gq.F64, func(v float64) bool { return v != 0 }) {
		t.Errorf("grad q = %v %v, want zeros [3]", gq.Shape, gq.F64)
	}
	if len(res.Model.Graph().GetInput()) != 2 {
		t.Errorf("inputs %v: the unused data input should be pruned, the parameters kept", res.Model.Graph().GetInput())
	}
	wantOut := []string{loss, metric, GradPrefix + p, GradPrefix + q}
	var outs []string
	for _, o := range res.Manifest.Outputs {
		outs = append(outs, o.Name)
	}
	if !slices.Equal(outs, wantOut) {
		t.Errorf("manifest outputs %v, want %v", outs, wantOut)
	}
}

// A dynamic dim sampled at size 1 must not be taken for a broadcast axis:
// build with a batch of 1, run with batches of 4 and 1.
func TestDynamicDimSampledAtOne(t *testing.T) {
	m, c := newCase("dynamic")
	x := c.data([]int64{1, 3}, onnx.DimParam("n"), onnx.DimValue(3))
	b, bias := c.param(1, 3), c.param(3)
	h := c.b.Add(c.b.Mul(x, b), bias)           // b and bias broadcast over n
	mean := c.b.ReduceMean(h, []int64{1}, true) // [n, 1]
	z := c.b.Sub(h, mean)                       // mean broadcast over axis 1 only
	loss := c.b.ReduceSum(c.b.Mul(z, c.b.Tanh(h)), nil, false)
	setLoss(m, loss)
	sample := map[string]*ort.Tensor{x: {Shape: []int64{1, 3}, F64: []float64{0.1, -0.2, 0.3}}}
	for _, n := range []int64{4, 1} {
		feeds := map[string]*ort.Tensor{x: {Shape: []int64{n, 3}, F64: c.fill(3*n, "")}}
		if w := fdCheckSample(t, m, c.trainable, feeds, sample); w > 1e-6 {
			t.Errorf("batch %d: error %.3g", n, w)
		}
	}
}

func TestManifestJSON(t *testing.T) {
	mf := Manifest{Loss: "loss", Inputs: []Value{{Name: "input_ids", ElemType: "INT64", Shape: Shape{onnx.DimParam("batch"), onnx.DimValue(8), onnx.DimUnknown()}}}}
	b, err := json.Marshal(mf)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"shape":["batch",8,null]`) {
		t.Errorf("JSON %s: want shape [\"batch\",8,null]", b)
	}
	var back Manifest
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if s := back.Inputs[0].Shape; len(s) != 3 || s[0].Param != "batch" || s[1].Value != 8 || s[2].IsKnown() {
		t.Errorf("round trip shape %v", s)
	}
}

// The log-prob pattern GatherElements(LogSoftmax(x)) takes the fused sparse gradient:
// one scatter onto −softmax·Σg, no dense zeros and no vocabulary-wide subtraction.
// (The finite-difference cases "fused-log-softmax*" check its values.)
func TestLogSoftmaxGatherIsFused(t *testing.T) {
	m, c := newCase("fused")
	x := c.param(2, 3, 7)
	idx := c.b.Const(onnx.Int64Tensor("", []int64{2, 3, 1}, []int64{0, 6, 2, 1, 1, 3}))
	loss := c.b.ReduceSum(c.b.GatherElements(c.b.LogSoftmax(x, -1), idx, 2), nil, false)
	setLoss(m, loss)
	res, err := Build(m, Config{Loss: loss, Trainable: []string{x}, SampleFeeds: c.feeds})
	if err != nil {
		t.Fatal(err)
	}
	ops := map[string]int{}
	for _, n := range res.Model.Graph().GetNode() {
		ops[n.GetOpType()]++
	}
	if ops["ScatterElements"] != 1 || ops["ConstantOfShape"] != 0 || ops["Sub"] != 0 {
		t.Fatalf("want the fused gradient (one ScatterElements, no ConstantOfShape or Sub), got %v", ops)
	}
}

// The shape probe feeds a large weight's transpose as the weight's own bytes with the
// transposed shape (it learns shapes only): gradients through MatMul(x, Transpose(W)),
// as exports near 2 GB write every projection, are still right for a batch size the
// sample did not have.
func TestProbeFeedsTransposedWeights(t *testing.T) {
	m, c := newCase("transposed")
	x := c.data([]int64{3, 40}, onnx.DimParam("n"), onnx.DimValue(40))
	w := c.f32(32, 40) // 1280 elements: fed to the probe
	wt := c.b.Op("Transpose", []string{w}, onnx.AttrInts("perm", []int64{1, 0}))
	h := c.b.Cast(c.b.MatMul(c.b.Cast(x, onnx.Float), wt), onnx.Double)
	setLoss(m, c.b.ReduceSum(c.b.Mul(h, c.b.Tanh(h)), nil, false))
	sample := map[string]*ort.Tensor{x: {Shape: []int64{1, 40}, F64: c.fill(40, "")}}
	if e := fdCheckSample(t, m, c.trainable, c.feeds, sample); e > 1e-2 {
		t.Fatalf("gradient error %.3g", e)
	}
}

// The probe feeds a large float initializer from Config.Values when the caller gives
// one of its size (the caller's copy, not another), else from the initializer itself.
func TestProbeFeedsGivenValues(t *testing.T) {
	own := make([]float32, 2*probeFedElements)
	for i := range own {
		own[i] = float32(i)
	}
	big, small := onnx.FloatTensor("w", []int64{2, probeFedElements}, own), onnx.FloatTensor("b", []int64{4}, own[:4])
	given := make([]float32, len(own))
	tests := []struct {
		name  string
		t     *onnxpb.TensorProto
		given []float32
		want  []float32 // nil: not fed
		same  bool      // want is given itself
	}{
		{"given", big, given, given, true},
		{"given of another size", big, given[:10], own, false},
		{"none given", big, nil, own, false},
		{"small", small, own[:4], nil, false},
	}
	for _, tc := range tests {
		got := fedFloats(tc.t, tc.given)
		if !slices.Equal(got, tc.want) || (tc.want == nil) != (got == nil) {
			t.Errorf("%s: fed %d values, want %d", tc.name, len(got), len(tc.want))
			continue
		}
		if tc.same && &got[0] != &tc.given[0] {
			t.Errorf("%s: fed a copy of the given values", tc.name)
		}
	}
	// Given values change nothing in the graph built.
	m, c := newCase("given")
	x := c.data([]int64{3, 32}, onnx.DimParam("n"), onnx.DimValue(32))
	w := c.f32(32, 40)
	h := c.b.Cast(c.b.MatMul(c.b.Cast(x, onnx.Float), w), onnx.Double)
	setLoss(m, c.b.ReduceSum(c.b.Mul(h, c.b.Tanh(h)), nil, false))
	wv, err := onnx.TensorFloats(onnx.Initializer(m.Graph(), w))
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Loss: m.Graph().GetOutput()[0].GetName(), Trainable: c.trainable}
	plain, err := Build(m, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Values = map[string][]float32{w: wv}
	withValues, err := Build(m, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(plain.Model.Proto(), withValues.Model.Proto()) {
		t.Error("the graph built with Config.Values differs from the one built without")
	}
}
