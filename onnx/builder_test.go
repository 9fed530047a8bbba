package onnx

import (
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx/onnxpb"
)

func attrNames(n *onnxpb.NodeProto) []string {
	var out []string
	for _, a := range n.Attribute {
		out = append(out, a.GetName())
	}
	return out
}

func lastNode(g *onnxpb.GraphProto) *onnxpb.NodeProto { return g.Node[len(g.Node)-1] }

func TestBuilderOpsetForms(t *testing.T) {
	tests := []struct {
		name      string
		opset     int64
		build     func(b *Builder)
		op        string
		nInputs   int
		attrs     []string
		axesInput []int64 // expected value of the second input, if any
	}{
		{"ReduceSum 11", 11, func(b *Builder) { b.ReduceSum("x", []int64{1}, true) }, "ReduceSum", 1, []string{"axes", "keepdims"}, nil},
		{"ReduceSum 13", 13, func(b *Builder) { b.ReduceSum("x", []int64{1}, false) }, "ReduceSum", 2, []string{"keepdims"}, []int64{1}},
		{"ReduceSum all 13", 13, func(b *Builder) { b.ReduceSum("x", nil, false) }, "ReduceSum", 1, []string{"keepdims"}, nil},
		{"ReduceMean 17", 17, func(b *Builder) { b.ReduceMean("x", []int64{-1}, true) }, "ReduceMean", 1, []string{"axes", "keepdims"}, nil},
		{"ReduceMean 18", 18, func(b *Builder) { b.ReduceMean("x", []int64{-1}, true) }, "ReduceMean", 2, []string{"keepdims"}, []int64{-1}},
		{"ReduceMax 17", 17, func(b *Builder) { b.ReduceMax("x", []int64{0, 2}, true) }, "ReduceMax", 1, []string{"axes", "keepdims"}, nil},
		{"ReduceMax 21", 21, func(b *Builder) { b.ReduceMax("x", []int64{0, 2}, true) }, "ReduceMax", 2, []string{"keepdims"}, []int64{0, 2}},
		{"ReduceSum 17 (input since 13)", 17, func(b *Builder) { b.ReduceSum("x", []int64{0}, true) }, "ReduceSum", 2, []string{"keepdims"}, []int64{0}},
		{"Unsqueeze 11", 11, func(b *Builder) { b.Unsqueeze("x", []int64{0}) }, "Unsqueeze", 1, []string{"axes"}, nil},
		{"Unsqueeze 13", 13, func(b *Builder) { b.Unsqueeze("x", []int64{0}) }, "Unsqueeze", 2, nil, []int64{0}},
		{"Squeeze 11", 11, func(b *Builder) { b.Squeeze("x", []int64{1}) }, "Squeeze", 1, []string{"axes"}, nil},
		{"Squeeze 13", 13, func(b *Builder) { b.Squeeze("x", []int64{1}) }, "Squeeze", 2, nil, []int64{1}},
		{"Squeeze all 13", 13, func(b *Builder) { b.Squeeze("x", nil) }, "Squeeze", 1, nil, nil},
		{"Split sizes 11", 11, func(b *Builder) { b.Split("x", 1, []int64{1, 2}, 2) }, "Split", 1, []string{"axis", "split"}, nil},
		{"Split sizes 13", 13, func(b *Builder) { b.Split("x", 1, []int64{1, 2}, 2) }, "Split", 2, []string{"axis"}, []int64{1, 2}},
		{"Split equal 13", 13, func(b *Builder) { b.Split("x", 1, nil, 3) }, "Split", 1, []string{"axis"}, nil},
		{"Split equal 18", 18, func(b *Builder) { b.Split("x", 1, nil, 3) }, "Split", 1, []string{"axis", "num_outputs"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := &onnxpb.GraphProto{}
			b := NewBuilder(g, tc.opset, "t")
			tc.build(b)
			n := lastNode(g)
			if n.GetOpType() != tc.op {
				t.Fatalf("op = %s, want %s", n.GetOpType(), tc.op)
			}
			if len(n.Input) != tc.nInputs {
				t.Errorf("inputs %v, want %d", n.Input, tc.nInputs)
			}
			if got := attrNames(n); !slices.Equal(got, tc.attrs) {
				t.Errorf("attributes %v, want %v", got, tc.attrs)
			}
			if tc.axesInput != nil && len(n.Input) > 1 {
				init := Initializer(g, n.Input[1])
				if init == nil {
					t.Fatalf("second input %q is not an initializer", n.Input[1])
				}
				got, err := TensorInt64s(init)
				if err != nil || !slices.Equal(got, tc.axesInput) || !slices.Equal(init.Dims, []int64{int64(len(tc.axesInput))}) {
					t.Errorf("axes input = %v (dims %v), %v; want %v", got, init.Dims, err, tc.axesInput)
				}
			}
		})
	}
}

func TestBuilderNamesAndConstants(t *testing.T) {
	m := mustLoad(t, mlpPath)
	g := m.Graph()
	before := Names(g)
	b := NewBuilder(g, m.Opset(""), "head")
	var outs []string
	for range 3 {
		outs = append(outs, b.Add("h2", "h2"))
	}
	outs = append(outs, b.OpN("Split", []string{"h2"}, 3, AttrInt("axis", 1))...)
	outs = append(outs, b.OpDomain("com.example", "Custom", []string{"x"}, 1)...)
	seen := map[string]bool{}
	for _, o := range outs {
		if seen[o] || before[o] {
			t.Errorf("name %q is not unique", o)
		}
		seen[o] = true
		if !strings.HasPrefix(o, "head/") {
			t.Errorf("name %q lacks the prefix", o)
		}
	}
	nodes := map[string]bool{}
	for _, n := range g.Node {
		if nodes[n.GetName()] {
			t.Errorf("duplicate node name %q", n.GetName())
		}
		nodes[n.GetName()] = true
	}
	if d := lastNode(g).GetDomain(); d != "com.example" {
		t.Errorf("OpDomain domain = %q", d)
	}
	// A second builder with the same prefix on the same graph avoids the
	// first one's names.
	b2 := NewBuilder(g, m.Opset(""), "head")
	if o := b2.Add("h2", "h2"); seen[o] {
		t.Errorf("second builder reused %q", o)
	}

	nInit := len(g.Initializer)
	c1 := b.ConstFloat(0.5)
	c2 := b.ConstFloat(0.5)
	c3 := b.ConstFloats([]float32{0.5})
	c4 := b.ConstInt64s([]int64{1, 2})
	c5 := b.ConstInt64s([]int64{1, 2})
	c6 := b.ConstScalarInt64(1)
	c7 := b.ConstInt64s([]int64{1})
	if c1 != c2 || c4 != c5 {
		t.Errorf("equal constants not deduplicated: %s %s, %s %s", c1, c2, c4, c5)
	}
	if c1 == c3 || c6 == c7 {
		t.Error("constants of different shapes were merged")
	}
	if got := len(g.Initializer) - nInit; got != 5 {
		t.Errorf("%d initializers added, want 5", got)
	}
	if v, err := TensorFloats(Initializer(g, c1)); err != nil || !slices.Equal(v, []float32{0.5}) || len(Initializer(g, c1).Dims) != 0 {
		t.Errorf("ConstFloat initializer = %v, %v", v, err)
	}
	if _, err := m.Marshal(); err != nil {
		t.Fatal(err)
	}
}

// buildAllOps uses every convenience method of the builder on a float input
// x of shape [2, 3, 4] and returns the final output, of shape [2, 4, 3].
func buildAllOps(b *Builder) string {
	x := "x"
	y := b.Add(x, b.ConstFloat(1))
	y = b.Sub(y, b.Mul(x, b.ConstFloat(0.5)))
	y = b.Div(y, b.Add(b.Exp(b.Neg(b.Abs(x))), b.ConstFloat(1)))
	y = b.Sigmoid(b.Tanh(b.Relu(y)))
	y = b.Log(b.Add(y, b.ConstFloat(1)))
	y = b.Sqrt(b.Pow(y, b.ConstFloat(2)))
	w := b.ConstFloats(make([]float32, 4*5))
	w = b.Reshape(w, b.ConstInt64s([]int64{4, 5}))
	y = b.MatMul(y, w)                        // [2,3,5]
	y = b.Transpose(y, []int64{0, 2, 1})      // [2,5,3]
	y = b.Transpose(b.Transpose(y, nil), nil) // [2,5,3]
	s := b.ReduceSum(y, []int64{2}, true)     // [2,5,1]
	mn := b.ReduceMean(y, []int64{1}, false)  // [2,3]
	mx := b.ReduceMax(y, nil, false)          // []
	lse := b.ReduceLogSumExp(y, []int64{-1}, true)
	y = b.Sub(b.Add(y, s), lse)
	y = b.Add(y, b.Unsqueeze(mn, []int64{1})) // [2,5,3]
	y = b.Max(y, b.Min(y, mx))
	y = b.Squeeze(b.Unsqueeze(y, []int64{0}), []int64{0})
	lp := b.LogSoftmax(y, -1)
	p := b.Softmax(y, -1)
	idx := b.ConstInt64s([]int64{0, 2})
	g1 := b.Gather(lp, idx, 2) // [2,5,2]
	ge := b.GatherElements(p, b.Expand(b.Reshape(b.ConstInt64s([]int64{1}), b.ConstInt64s([]int64{1, 1, 1})), b.ConstInt64s([]int64{2, 5, 1})), 2)
	y = b.Concat(2, g1, ge) // [2,5,3]
	parts := b.Split(y, 2, []int64{1, 2}, 2)
	eq := b.Split(y, 1, nil, 5)
	y = b.Sum(b.Concat(2, parts...), b.Concat(1, eq...), b.Identity(y))
	cond := b.Not(b.Equal(b.Greater(y, b.ConstFloat(0)), b.Less(y, b.ConstFloat(0))))
	y = b.Where(cond, y, b.Cast(b.Cast(y, Double), Float))
	y = b.Clip(y, b.ConstFloat(-10), "")
	y = b.Slice(y, []int64{0, 1}, []int64{2, 5}, nil, nil)
	y = b.Slice(y, []int64{0}, []int64{3}, []int64{2}, []int64{1})
	// Side branches whose shapes onnx's inference does not follow.
	b.Reshape(y, b.Shape(y))
	b.Squeeze(b.Unsqueeze(y, []int64{3}), nil)
	return y
}

func TestBuilderModelsPassONNXChecker(t *testing.T) {
	dir := t.TempDir()
	var paths []string
	for _, opset := range []int64{11, 13, 17} {
		g := &onnxpb.GraphProto{Name: proto.String("built")}
		if err := AddInput(g, "x", Float, Dims(2, 3, 4)); err != nil {
			t.Fatal(err)
		}
		b := NewBuilder(g, opset, "b")
		out := buildAllOps(b)
		// The ONNX checker wants a shape on main-graph outputs; the dims
		// are left for shape inference to find.
		if err := AddOutput(g, out, Float, []Dim{DimUnknown(), DimUnknown(), DimUnknown()}); err != nil {
			t.Fatal(err)
		}
		if err := TopologicalSort(g); err != nil {
			t.Fatal(err)
		}
		m := NewModel(&onnxpb.ModelProto{IrVersion: proto.Int64(8), Graph: g})
		m.SetOpset("", opset)
		path := filepath.Join(dir, "built"+strconv.FormatInt(opset, 10)+".onnx")
		if err := m.Save(path, SaveOptions{}); err != nil {
			t.Fatal(err)
		}
		back := mustLoad(t, path)
		if !proto.Equal(back.Proto(), m.Proto()) {
			t.Error("built model changed in a save/load round trip")
		}
		paths = append(paths, path)
	}
	if pythonWithONNX() == "" {
		t.Skip("python3 with onnx not found; skipping the onnx.checker check of built models")
	}
	// Full check: schema (inputs, attributes per opset) plus strict shape
	// inference, which fails on an axes attribute where an input is expected
	// and the reverse. onnx 1.12 knows opsets up to 17.
	runPython(t, `
import sys, onnx
for p in sys.argv[1:]:
    m = onnx.load(p)
    onnx.checker.check_model(m, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
    out = inferred.graph.output[0].type.tensor_type
    assert out.elem_type == onnx.TensorProto.FLOAT, p
    dims = [d.dim_value if d.HasField("dim_value") else None for d in out.shape.dim]
    assert dims == [2, 4, 3], (p, dims)
`, paths...)
}
