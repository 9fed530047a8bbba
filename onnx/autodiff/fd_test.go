package autodiff

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
	"ortalign/onnx/ort"
)

// tc builds the forward graph of one finite-difference case.
type tc struct {
	b         *onnx.Builder
	g         *onnxpb.GraphProto
	rng       *rand.Rand
	feeds     map[string]*ort.Tensor
	trainable []string
	n         int
}

func (c *tc) name(kind string) string {
	c.n++
	return fmt.Sprintf("%s%d", kind, c.n)
}

// fill draws n values: kind "" is N(0,1); "pos" is in [0.5, 2]; "away" is
// N(0,1) moved at least 0.2 away from 0 and made distinct (for kinks).
func (c *tc) fill(n int64, kind string) []float64 {
	v := make([]float64, n)
	for i := range v {
		switch kind {
		case "pos":
			v[i] = 0.5 + 1.5*c.rng.Float64()
		case "away":
			x := c.rng.NormFloat64()
			v[i] = math.Copysign(0.2+math.Abs(x), x) + 0.01*float64(i)
		default:
			v[i] = c.rng.NormFloat64()
		}
	}
	return v
}

// paramT adds a trainable initializer of element type dt.
func (c *tc) paramT(dt onnx.DataType, kind string, shape ...int64) string {
	name := c.name("p")
	v := c.fill(numel(shape), kind)
	var t *onnxpb.TensorProto
	if dt == onnx.Float {
		f := make([]float32, len(v))
		for i := range v {
			f[i] = float32(v[i])
		}
		t = onnx.FloatTensor(name, shape, f)
	} else {
		t = onnx.DoubleTensor(name, shape, v)
	}
	if err := onnx.AddInitializer(c.g, t); err != nil {
		panic(err)
	}
	c.trainable = append(c.trainable, name)
	return name
}

func (c *tc) param(shape ...int64) string { return c.paramT(onnx.Double, "", shape...) }
func (c *tc) pos(shape ...int64) string   { return c.paramT(onnx.Double, "pos", shape...) }
func (c *tc) away(shape ...int64) string  { return c.paramT(onnx.Double, "away", shape...) }
func (c *tc) f32(shape ...int64) string   { return c.paramT(onnx.Float, "", shape...) }

// data adds a float64 graph input that is not trained (fed at run time),
// with symbolic dims where dims has a name.
func (c *tc) data(shape []int64, dims ...onnx.Dim) string {
	name := c.name("d")
	if dims == nil {
		dims = onnx.Dims(shape...)
	}
	if err := onnx.AddInput(c.g, name, onnx.Double, dims); err != nil {
		panic(err)
	}
	c.feeds[name] = &ort.Tensor{Shape: shape, F64: c.fill(numel(shape), "")}
	return name
}

// constD adds a constant float64 tensor (not trained).
func (c *tc) constD(shape ...int64) string {
	return c.b.Const(onnx.DoubleTensor("", shape, c.fill(numel(shape), "")))
}

func (c *tc) ints(v ...int64) string { return c.b.ConstInt64s(v) }

func (c *tc) boolT(shape []int64, v ...bool) string {
	return c.b.Const(onnx.BoolTensor("", shape, v))
}

// op appends a node with attributes.
func (c *tc) op(op string, in []string, attrs ...*onnxpb.AttributeProto) string {
	return c.b.Op(op, in, attrs...)
}

type fdCase struct {
	op    string // the rule the case checks
	name  string
	opset int64 // 0 means 17
	// fused marks a case of a pattern the walk differentiates in one piece
	// instead of through the rule (fusedLogSoftmaxGather): the rule must not
	// run.
	fused bool
	build func(c *tc) []string
}

func ai(name string, v int64) *onnxpb.AttributeProto     { return onnx.AttrInt(name, v) }
func ais(name string, v ...int64) *onnxpb.AttributeProto { return onnx.AttrInts(name, v) }
func af(name string, v float32) *onnxpb.AttributeProto   { return onnx.AttrFloat(name, v) }

func unary(op, kind string) fdCase {
	return fdCase{op: op, name: kind, build: func(c *tc) []string {
		return []string{c.op(op, []string{c.paramT(onnx.Double, kind, 2, 3)})}
	}}
}

// unaryF32 is a float32 case, for operators ONNX Runtime's CPU build lacks
// in float64.
func unaryF32(op string) fdCase {
	return fdCase{op: op, name: "f32", build: func(c *tc) []string {
		return []string{c.b.Cast(c.op(op, []string{c.f32(2, 3)}), onnx.Double)}
	}}
}

// fdCases is the table: every registered rule has at least one case.
var fdCases = []fdCase{
	{op: "Add", name: "bias", build: func(c *tc) []string { return []string{c.b.Add(c.param(2, 3), c.param(3))} }},
	{op: "Add", name: "both-broadcast", build: func(c *tc) []string { return []string{c.b.Add(c.param(2, 1, 4), c.param(3, 1))} }},
	{op: "Add", name: "scalar", build: func(c *tc) []string { return []string{c.b.Add(c.param(), c.param(2, 3))} }},
	{op: "Add", name: "same-input", build: func(c *tc) []string { x := c.param(2, 3); return []string{c.b.Add(x, x)} }},
	{op: "Sub", name: "broadcast-middle", build: func(c *tc) []string { return []string{c.b.Sub(c.param(2, 3, 4), c.param(1, 3, 1))} }},
	{op: "Sub", name: "leading", build: func(c *tc) []string { return []string{c.b.Sub(c.param(4), c.param(2, 3, 4))} }},
	{op: "Mul", name: "same-shape", build: func(c *tc) []string { return []string{c.b.Mul(c.param(2, 3), c.param(2, 3))} }},
	{op: "Mul", name: "outer", build: func(c *tc) []string { return []string{c.b.Mul(c.param(4, 1), c.param(1, 5))} }},
	{op: "Mul", name: "square", build: func(c *tc) []string { x := c.param(3, 2); return []string{c.b.Mul(x, x)} }},
	{op: "Mul", name: "frozen-data", build: func(c *tc) []string { return []string{c.b.Mul(c.data([]int64{2, 3}), c.param(3))} }},
	{op: "Div", name: "broadcast", build: func(c *tc) []string { return []string{c.b.Div(c.param(2, 3), c.pos(3))} }},
	{op: "Div", name: "scalar-num", build: func(c *tc) []string { return []string{c.b.Div(c.param(), c.pos(2, 2))} }},
	{op: "Sum", name: "three", build: func(c *tc) []string { return []string{c.b.Sum(c.param(2, 3), c.param(3), c.param(2, 1))} }},
	{op: "Pow", name: "square", build: func(c *tc) []string {
		return []string{c.b.Pow(c.param(2, 3), c.b.Const(onnx.DoubleTensor("", nil, []float64{2})))}
	}},
	{op: "Pow", name: "cube-float-exponent", build: func(c *tc) []string {
		return []string{c.b.Pow(c.param(2, 3), c.b.ConstFloat(3))}
	}},
	{op: "Pow", name: "sqrt-constant-node", build: func(c *tc) []string {
		e := c.op("Constant", nil, onnx.AttrTensor("value", onnx.DoubleTensor("", nil, []float64{0.5})))
		return []string{c.b.Pow(c.pos(2, 3), e)}
	}},
	{op: "Pow", name: "tensor-exponent", build: func(c *tc) []string { return []string{c.b.Pow(c.pos(2, 3), c.param(3))} }},
	{op: "Pow", name: "scalar-base", build: func(c *tc) []string { return []string{c.b.Pow(c.pos(), c.param(2, 2))} }},
	{op: "Max", name: "two-broadcast", build: func(c *tc) []string { return []string{c.b.Max(c.param(2, 3), c.param(3))} }},
	{op: "Max", name: "three", build: func(c *tc) []string { return []string{c.b.Max(c.param(2, 3), c.param(2, 3), c.param(1, 3))} }},
	{op: "Max", name: "one", build: func(c *tc) []string { return []string{c.b.Max(c.param(2, 3))} }},
	{op: "Min", name: "two", build: func(c *tc) []string { return []string{c.b.Min(c.param(2, 1), c.param(2, 3))} }},
	unary("Neg", ""), unary("Identity", ""), unary("Exp", ""), unary("Log", "pos"), unary("Sqrt", "pos"),
	unary("Reciprocal", "pos"), unaryF32("Sin"), unaryF32("Cos"), unary("Abs", "away"), unary("Tanh", ""),
	unary("Sigmoid", ""), unaryF32("Erf"), unary("Relu", "away"), unaryF32("Softplus"),
	{op: "Dropout", name: "inference", build: func(c *tc) []string {
		return c.b.OpN("Dropout", []string{c.param(2, 3)}, 2)[:1]
	}},
	{op: "Dropout", name: "training-mode-false", build: func(c *tc) []string {
		off := c.b.Const(onnx.BoolTensor("", nil, []bool{false}))
		return []string{c.op("Dropout", []string{c.param(2, 3), c.b.Const(onnx.DoubleTensor("", nil, []float64{0.5})), off})}
	}},
	{op: "Cast", name: "f32-to-f64", build: func(c *tc) []string { return []string{c.b.Cast(c.f32(2, 3), onnx.Double)} }},
	{op: "Cast", name: "f64-to-f64", build: func(c *tc) []string { return []string{c.b.Cast(c.param(2, 3), onnx.Double)} }},
	{op: "Clip", name: "constant-bounds", build: func(c *tc) []string {
		return []string{c.b.Clip(c.away(3, 4), c.b.Const(onnx.DoubleTensor("", nil, []float64{-0.7})), c.b.Const(onnx.DoubleTensor("", nil, []float64{0.9})))}
	}},
	{op: "Clip", name: "min-only", build: func(c *tc) []string {
		return []string{c.b.Clip(c.away(3, 4), c.b.Const(onnx.DoubleTensor("", nil, []float64{0.1})), "")}
	}},
	{op: "Clip", name: "trainable-bounds", build: func(c *tc) []string {
		k := func(v float64) string { return c.b.Const(onnx.DoubleTensor("", nil, []float64{v})) }
		lo := c.b.Sub(c.b.Mul(c.param(), k(0.1)), k(0.5))
		hi := c.b.Add(c.b.Mul(c.param(), k(0.1)), k(0.5))
		return []string{c.b.Clip(c.away(3, 4), lo, hi)}
	}},
	{op: "Where", name: "broadcast", build: func(c *tc) []string {
		cond := c.boolT([]int64{2, 1, 4}, true, false, false, true, true, true, false, false)
		return []string{c.b.Where(cond, c.param(3, 4), c.param())}
	}},
	{op: "Where", name: "mask-constant", build: func(c *tc) []string {
		cond := c.boolT([]int64{1, 3}, true, false, true)
		return []string{c.b.Where(cond, c.param(2, 3), c.b.Const(onnx.DoubleTensor("", nil, []float64{-30})))}
	}},
	{op: "Softmax", name: "last", build: func(c *tc) []string { return []string{c.b.Softmax(c.param(2, 3, 4), -1)} }},
	{op: "Softmax", name: "middle", build: func(c *tc) []string { return []string{c.b.Softmax(c.param(2, 3, 4), 1)} }},
	{op: "Softmax", name: "default-axis", build: func(c *tc) []string { return []string{c.op("Softmax", []string{c.param(3, 4)})} }},
	{op: "LogSoftmax", name: "last", build: func(c *tc) []string { return []string{c.b.LogSoftmax(c.param(2, 5), -1)} }},
	{op: "LogSoftmax", name: "first", build: func(c *tc) []string { return []string{c.b.LogSoftmax(c.param(3, 2, 2), 0)} }},
	{op: "LayerNormalization", name: "last-axis", build: func(c *tc) []string {
		return []string{c.op("LayerNormalization", []string{c.param(2, 3, 4), c.param(4), c.param(4)}, af("epsilon", 1e-5))}
	}},
	{op: "LayerNormalization", name: "two-axes-no-bias", build: func(c *tc) []string {
		return []string{c.op("LayerNormalization", []string{c.param(2, 3, 4), c.param(3, 4)}, ai("axis", 1))}
	}},
	{op: "LayerNormalization", name: "frozen-scale", build: func(c *tc) []string {
		return []string{c.op("LayerNormalization", []string{c.param(3, 5), c.constD(5), c.param(5)})}
	}},
	{op: "LayerNormalization", name: "all-outputs", build: func(c *tc) []string {
		// float32: ONNX Runtime has no float64 kernel with Mean and InvStdDev.
		ln := c.b.OpN("LayerNormalization", []string{c.f32(2, 3, 4), c.f32(4), c.f32(4)}, 3, ai("axis", -1), af("epsilon", 1e-3))
		outs := slices.Clone(ln) // OpN returns the node's own output list
		for i := range outs {
			outs[i] = c.b.Cast(outs[i], onnx.Double)
		}
		return outs
	}},
	{op: "CumSum", name: "forward", build: func(c *tc) []string {
		return []string{c.op("CumSum", []string{c.param(3, 4), c.b.ConstScalarInt64(1)})}
	}},
	{op: "CumSum", name: "reverse-exclusive", build: func(c *tc) []string {
		return []string{c.op("CumSum", []string{c.param(3, 4), c.b.ConstScalarInt64(0)}, ai("reverse", 1), ai("exclusive", 1))}
	}},
	{op: "Trilu", name: "upper-k", build: func(c *tc) []string {
		return []string{c.op("Trilu", []string{c.param(2, 3, 4), c.b.ConstScalarInt64(1)})}
	}},
	{op: "Trilu", name: "lower", build: func(c *tc) []string {
		return []string{c.op("Trilu", []string{c.param(4, 3)}, ai("upper", 0))}
	}},
	{op: "MatMul", name: "2d", build: func(c *tc) []string { return []string{c.b.MatMul(c.param(3, 4), c.param(4, 5))} }},
	{op: "MatMul", name: "batched-weight", build: func(c *tc) []string { return []string{c.b.MatMul(c.param(2, 3, 4), c.param(4, 5))} }},
	{op: "MatMul", name: "batched-both", build: func(c *tc) []string { return []string{c.b.MatMul(c.param(2, 3, 4), c.param(2, 4, 5))} }},
	{op: "MatMul", name: "broadcast-batch", build: func(c *tc) []string { return []string{c.b.MatMul(c.param(2, 1, 3, 4), c.param(3, 4, 2))} }},
	{op: "MatMul", name: "2d-by-batched", build: func(c *tc) []string { return []string{c.b.MatMul(c.param(3, 4), c.param(2, 4, 5))} }},
	{op: "MatMul", name: "vector-matrix", build: func(c *tc) []string { return []string{c.b.MatMul(c.param(4), c.param(2, 4, 3))} }},
	{op: "MatMul", name: "matrix-vector", build: func(c *tc) []string { return []string{c.b.MatMul(c.param(2, 3, 4), c.param(4))} }},
	{op: "MatMul", name: "dot", build: func(c *tc) []string { return []string{c.b.MatMul(c.param(4), c.param(4))} }},
	{op: "MatMul", name: "f32-batched-weight", build: func(c *tc) []string {
		return []string{c.b.Cast(c.b.MatMul(c.f32(2, 3, 4), c.f32(4, 5)), onnx.Double)}
	}},
	{op: "MatMul", name: "f32-broadcast-batch", build: func(c *tc) []string {
		return []string{c.b.Cast(c.b.MatMul(c.f32(2, 1, 3, 4), c.f32(3, 4, 2)), onnx.Double)}
	}},
	{op: "Gemm", name: "plain", build: func(c *tc) []string {
		return []string{c.op("Gemm", []string{c.param(3, 4), c.param(4, 5), c.param(5)})}
	}},
	{op: "Gemm", name: "transA-alpha-beta", build: func(c *tc) []string {
		return []string{c.op("Gemm", []string{c.param(4, 3), c.param(4, 5), c.param(3, 5)}, ai("transA", 1), af("alpha", 0.5), af("beta", 2))}
	}},
	{op: "Gemm", name: "transB-row-bias", build: func(c *tc) []string {
		return []string{c.op("Gemm", []string{c.param(3, 4), c.param(5, 4), c.param(1, 5)}, ai("transB", 1), af("alpha", -1.5))}
	}},
	{op: "Gemm", name: "transA-transB-scalar-bias", build: func(c *tc) []string {
		return []string{c.op("Gemm", []string{c.param(4, 3), c.param(5, 4), c.param()}, ai("transA", 1), ai("transB", 1), af("beta", 0.25))}
	}},
	{op: "Gemm", name: "no-bias", build: func(c *tc) []string {
		return []string{c.op("Gemm", []string{c.param(3, 4), c.param(5, 4)}, ai("transB", 1))}
	}},
	{op: "ReduceSum", name: "axis-keepdims0", build: func(c *tc) []string { return []string{c.b.ReduceSum(c.param(2, 3, 4), []int64{1}, false)} }},
	{op: "ReduceSum", name: "axes-keepdims1", build: func(c *tc) []string { return []string{c.b.ReduceSum(c.param(2, 3, 4), []int64{0, -1}, true)} }},
	{op: "ReduceSum", name: "all", build: func(c *tc) []string { return []string{c.b.ReduceSum(c.param(2, 3), nil, false)} }},
	{op: "ReduceSum", name: "noop", build: func(c *tc) []string {
		return []string{c.op("ReduceSum", []string{c.param(2, 3)}, ai("noop_with_empty_axes", 1))}
	}},
	{op: "ReduceSum", name: "opset13", opset: 13, build: func(c *tc) []string { return []string{c.b.ReduceSum(c.param(2, 3, 4), []int64{-2}, false)} }},
	{op: "ReduceMean", name: "attr-keepdims1", build: func(c *tc) []string { return []string{c.b.ReduceMean(c.param(2, 3, 4), []int64{-1}, true)} }},
	{op: "ReduceMean", name: "attr-keepdims0", build: func(c *tc) []string { return []string{c.b.ReduceMean(c.param(2, 3, 4), []int64{0, 2}, false)} }},
	{op: "ReduceMean", name: "opset18-input", opset: 18, build: func(c *tc) []string { return []string{c.b.ReduceMean(c.param(2, 3, 4), []int64{1}, false)} }},
	{op: "ReduceMax", name: "axis", build: func(c *tc) []string { return []string{c.b.ReduceMax(c.away(3, 4), []int64{1}, false)} }},
	{op: "ReduceMin", name: "all-keepdims", build: func(c *tc) []string { return []string{c.b.Reduce("ReduceMin", c.away(3, 4), nil, true)} }},
	{op: "Reshape", name: "infer", build: func(c *tc) []string { return []string{c.b.Reshape(c.param(2, 6), c.ints(3, -1))} }},
	{op: "Flatten", name: "axis2", build: func(c *tc) []string { return []string{c.op("Flatten", []string{c.param(2, 3, 4)}, ai("axis", 2))} }},
	{op: "Squeeze", name: "axes", build: func(c *tc) []string { return []string{c.b.Squeeze(c.param(2, 1, 3), []int64{1})} }},
	{op: "Unsqueeze", name: "axes", build: func(c *tc) []string { return []string{c.b.Unsqueeze(c.param(2, 3), []int64{0, 3})} }},
	{op: "Transpose", name: "perm", build: func(c *tc) []string { return []string{c.b.Transpose(c.param(2, 3, 4), []int64{2, 0, 1})} }},
	{op: "Transpose", name: "reverse", build: func(c *tc) []string { return []string{c.b.Transpose(c.param(2, 3, 4), nil)} }},
	{op: "Expand", name: "broadcast", build: func(c *tc) []string { return []string{c.b.Expand(c.param(3, 1), c.ints(2, 3, 4))} }},
	{op: "Expand", name: "no-op-dims", build: func(c *tc) []string { return []string{c.b.Expand(c.param(2, 3), c.ints(3))} }},
	{op: "Tile", name: "repeats", build: func(c *tc) []string { return []string{c.op("Tile", []string{c.param(2, 3), c.ints(2, 3)})} }},
	{op: "Concat", name: "axis1", build: func(c *tc) []string { return []string{c.b.Concat(1, c.param(2, 1), c.param(2, 3), c.param(2, 2))} }},
	{op: "Concat", name: "negative-axis-reuse", build: func(c *tc) []string {
		x := c.param(2, 2)
		return []string{c.b.Concat(-1, c.b.Neg(x), x)}
	}},
	{op: "Split", name: "opset13-input", opset: 13, build: func(c *tc) []string {
		return c.b.OpN("Split", []string{c.param(2, 6), c.ints(1, 2, 3)}, 3, ai("axis", 1))
	}},
	{op: "Split", name: "opset18-num-outputs", opset: 18, build: func(c *tc) []string {
		return c.b.OpN("Split", []string{c.param(4, 3)}, 2, ai("axis", 0), ai("num_outputs", 2))
	}},
	{op: "Split", name: "equal-some-unused", opset: 14, build: func(c *tc) []string {
		outs := c.b.OpN("Split", []string{c.param(2, 6)}, 3, ai("axis", -1))
		return []string{outs[0], outs[2]}
	}},
	{op: "Slice", name: "axes", build: func(c *tc) []string {
		return []string{c.b.Slice(c.param(4, 5), []int64{1}, []int64{3}, []int64{1}, nil)}
	}},
	{op: "Slice", name: "negative-bounds", build: func(c *tc) []string {
		return []string{c.b.Slice(c.param(3, 5, 2), []int64{-4, 0}, []int64{-1, math.MaxInt64}, []int64{1, -3}, nil)}
	}},
	{op: "Slice", name: "default-axes-clamped", build: func(c *tc) []string {
		return []string{c.b.Slice(c.param(4, 3), []int64{1, -100}, []int64{100, 2}, nil, nil)}
	}},
	{op: "Slice", name: "axes-computed", build: func(c *tc) []string {
		// Axes and bounds computed from constants, as torch.onnx.export writes
		// Qwen2-style attention without constant folding.
		unsq := func(v int64) string { return c.op("Unsqueeze", []string{c.b.ConstScalarInt64(v), c.ints(0)}) }
		axes := c.op("Cast", []string{c.op("Squeeze", []string{c.op("Unsqueeze", []string{unsq(1), c.ints(1)}), c.ints(1)})}, ai("to", int64(onnx.Int64)))
		return []string{c.op("Slice", []string{c.param(4, 5), c.op("Concat", []string{unsq(1)}, ai("axis", 0)), unsq(4), c.op("Identity", []string{axes})})}
	}},
	{op: "Slice", name: "steps", build: func(c *tc) []string {
		return []string{c.b.Slice(c.param(5, 6), []int64{0, 5}, []int64{5, 0}, []int64{0, 1}, []int64{2, -2})}
	}},
	{op: "Slice", name: "reverse-all", build: func(c *tc) []string {
		return []string{c.b.Slice(c.param(2, 4), []int64{-1}, []int64{math.MinInt64}, []int64{-1}, []int64{-1})}
	}},
	{op: "Gather", name: "rows-repeated", build: func(c *tc) []string {
		return []string{c.b.Gather(c.param(5, 3), c.b.Const(onnx.Int64Tensor("", []int64{2, 3}, []int64{0, 2, 2, 4, 0, -1})), 0)}
	}},
	{op: "Gather", name: "axis1", build: func(c *tc) []string {
		return []string{c.b.Gather(c.param(2, 4, 3), c.b.Const(onnx.Int64Tensor("", []int64{3}, []int64{3, 1, 3})), 1)}
	}},
	{op: "Gather", name: "scalar-index", build: func(c *tc) []string {
		return []string{c.b.Gather(c.param(2, 4), c.b.ConstScalarInt64(-2), 1)}
	}},
	{op: "GatherElements", name: "repeated", build: func(c *tc) []string {
		idx := c.b.Const(onnx.Int64Tensor("", []int64{3, 2}, []int64{0, 0, 3, 1, 2, -1}))
		return []string{c.b.GatherElements(c.param(3, 4), idx, 1)}
	}},
	{op: "ScatterElements", name: "add-repeated", opset: 16, build: func(c *tc) []string {
		idx := c.b.Const(onnx.Int64Tensor("", []int64{2, 3}, []int64{0, 2, 2, 1, 1, 0}))
		return []string{c.b.Op("ScatterElements", []string{c.param(2, 4), idx, c.param(2, 3)},
			onnx.AttrInt("axis", 1), onnx.AttrString("reduction", "add"))}
	}},
	{op: "ScatterElements", name: "add-axis0", opset: 16, build: func(c *tc) []string {
		idx := c.b.Const(onnx.Int64Tensor("", []int64{4}, []int64{0, 2, 0, 1}))
		return []string{c.b.Op("ScatterElements", []string{c.param(3), idx, c.param(4)},
			onnx.AttrInt("axis", 0), onnx.AttrString("reduction", "add"))}
	}},
	// GatherElements of a LogSoftmax along its axis takes the fused sparse rule.
	{op: "GatherElements", name: "fused-log-softmax", fused: true, build: func(c *tc) []string {
		idx := c.b.Const(onnx.Int64Tensor("", []int64{2, 3, 1}, []int64{0, 4, 2, 1, 1, 3}))
		return []string{c.b.GatherElements(c.b.LogSoftmax(c.param(2, 3, 5), -1), idx, 2)}
	}},
	{op: "GatherElements", name: "fused-log-softmax-repeated", fused: true, build: func(c *tc) []string {
		idx := c.b.Const(onnx.Int64Tensor("", []int64{2, 2}, []int64{1, 1, 0, 3}))
		return []string{c.b.GatherElements(c.b.LogSoftmax(c.param(2, 4), 1), idx, 1)}
	}},
	// Not fused: another axis, and a LogSoftmax output read twice.
	{op: "GatherElements", name: "log-softmax-other-axis", build: func(c *tc) []string {
		idx := c.b.Const(onnx.Int64Tensor("", []int64{1, 3}, []int64{0, 2, 1}))
		return []string{c.b.GatherElements(c.b.LogSoftmax(c.param(3, 3), 1), idx, 0)}
	}},
	{op: "GatherElements", name: "log-softmax-shared", build: func(c *tc) []string {
		lp := c.b.LogSoftmax(c.param(2, 4), -1)
		idx := c.b.Const(onnx.Int64Tensor("", []int64{2, 1}, []int64{3, 0}))
		return []string{c.b.GatherElements(lp, idx, 1), lp}
	}},
}

// caseModel builds the forward model of a case: the case's outputs
// combined into loss = Σ ReduceSum(out_i · w_i) with random w_i.
func caseModel(t *testing.T, fc fdCase, seed uint64) (*onnx.Model, *tc) {
	t.Helper()
	opset := fc.opset
	if opset == 0 {
		opset = 17
	}
	m := onnx.NewModel(&onnxpb.ModelProto{
		IrVersion:   proto.Int64(8),
		OpsetImport: []*onnxpb.OperatorSetIdProto{{Domain: proto.String(""), Version: proto.Int64(opset)}},
		Graph:       &onnxpb.GraphProto{Name: proto.String(fc.op + "_" + fc.name)},
	})
	g := m.Graph()
	c := &tc{b: onnx.NewBuilder(g, opset, ""), g: g, rng: rand.New(rand.NewPCG(seed, 7)), feeds: map[string]*ort.Tensor{}}
	c.data([]int64{1}) // onnxruntime_go cannot run a session without inputs
	outs := fc.build(c)
	// Learn the outputs' shapes, then weight them.
	probe := m.Clone()
	types := inferTypes(probe.Graph())
	for _, o := range outs {
		probe.Graph().Output = append(probe.Graph().Output, onnx.TensorValueInfo(o, types[o], nil))
	}
	res := runModel(t, probe, outs, c.feeds)
	var terms []string
	for _, o := range outs {
		w := c.b.Const(onnx.DoubleTensor("", res[o].Shape, c.fill(numel(res[o].Shape), "")))
		v := o
		if types[o] != onnx.Double {
			v = c.b.Cast(o, onnx.Double)
		}
		terms = append(terms, c.b.ReduceSum(c.b.Mul(v, w), nil, false))
	}
	loss := terms[0]
	if len(terms) > 1 {
		loss = c.b.Sum(terms...)
	}
	g.Output = []*onnxpb.ValueInfoProto{onnx.TensorValueInfo(loss, onnx.Double, []onnx.Dim{})}
	return m, c
}

// sessionOptions: ONNX Runtime's MatMul-Transpose fusion makes float64
// FusedMatMul nodes, which its CPU build cannot run, so float64 graphs run
// unoptimised.
func sessionOptions(m *onnx.Model) ort.Options {
	for _, t := range m.Graph().GetInitializer() {
		if onnx.DataType(t.GetDataType()) == onnx.Float {
			return ort.Options{Threads: 1}
		}
	}
	for _, in := range m.Graph().GetInput() {
		if et, _, _ := onnx.TensorType(in); et == onnx.Float {
			return ort.Options{Threads: 1}
		}
	}
	return ort.Options{Threads: 1, DisableOptimizations: true}
}

func runModel(t *testing.T, m *onnx.Model, outs []string, feeds map[string]*ort.Tensor) map[string]*ort.Tensor {
	t.Helper()
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	s, err := ort.NewSession(b, outs, sessionOptions(m))
	if err != nil {
		t.Fatalf("session: %v", err)
	}
	defer s.Destroy()
	res, err := s.Run(feeds, nil)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return res
}

// paramTensor reads an initializer as a feed.
func paramTensor(t *testing.T, p *onnxpb.TensorProto) *ort.Tensor {
	t.Helper()
	shape := append([]int64{}, p.GetDims()...)
	if onnx.DataType(p.GetDataType()) == onnx.Float {
		v, err := onnx.TensorFloats(p)
		if err != nil {
			t.Fatal(err)
		}
		return &ort.Tensor{Shape: shape, F32: v}
	}
	v, err := onnx.TensorDoubles(p)
	if err != nil {
		t.Fatal(err)
	}
	return &ort.Tensor{Shape: shape, F64: v}
}

// fdCheck compares the emitted gradients of model m (loss = its only
// output) with central differences and returns the largest error
// |grad - fd| / max(1, |fd|).
func fdCheck(t *testing.T, m *onnx.Model, trainable []string, feeds map[string]*ort.Tensor) float64 {
	t.Helper()
	return fdCheckSample(t, m, trainable, feeds, feeds)
}

// fdCheckSample is fdCheck with a different sample for Build.
func fdCheckSample(t *testing.T, m *onnx.Model, trainable []string, feeds, sample map[string]*ort.Tensor) float64 {
	t.Helper()
	loss := m.Graph().GetOutput()[0].GetName()
	res, err := Build(m, Config{Loss: loss, Trainable: trainable, SampleFeeds: sample})
	if err != nil {
		t.Fatal(err)
	}
	// Inputs of both runs: the feeds plus the parameters.
	in := map[string]*ort.Tensor{}
	for k, v := range feeds {
		in[k] = v
	}
	for _, p := range trainable {
		in[p] = paramTensor(t, onnx.Initializer(m.Graph(), p))
	}
	outs := []string{loss}
	for _, p := range trainable {
		outs = append(outs, res.Grads[p])
	}
	got := runModel(t, res.Model, outs, in)

	fwd := m.Clone()
	for _, p := range trainable {
		tp := onnx.RemoveInitializer(fwd.Graph(), p)
		if err := onnx.AddInput(fwd.Graph(), p, onnx.DataType(tp.GetDataType()), onnx.Dims(tp.GetDims()...)); err != nil {
			t.Fatal(err)
		}
	}
	b, err := fwd.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	sess, err := ort.NewSession(b, []string{loss}, sessionOptions(fwd))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Destroy()
	lossAt := func() float64 {
		r, err := sess.Run(in, nil)
		if err != nil {
			t.Fatal(err)
		}
		return r[loss].F64[0]
	}
	if l0 := lossAt(); math.Abs(l0-got[loss].F64[0]) > 1e-12*math.Max(1, math.Abs(l0)) {
		t.Errorf("training model loss %v, forward %v", got[loss].F64[0], l0)
	}
	worst := 0.0
	for _, p := range trainable {
		x := in[p]
		grad := got[res.Grads[p]]
		if fmt.Sprint(grad.Shape) != fmt.Sprint(x.Shape) {
			t.Fatalf("%s: gradient shape %v, parameter shape %v", p, grad.Shape, x.Shape)
		}
		n := max(len(x.F64), len(x.F32))
		for i := range n {
			var fd, an float64
			if x.F32 != nil {
				const eps = 1e-2
				v := x.F32[i]
				x.F32[i] = v + eps
				lp := lossAt()
				x.F32[i] = v - eps
				lm := lossAt()
				x.F32[i] = v
				fd = (lp - lm) / (2 * eps)
				an = float64(grad.F32[i])
			} else {
				const eps = 1e-6
				v := x.F64[i]
				x.F64[i] = v + eps
				lp := lossAt()
				x.F64[i] = v - eps
				lm := lossAt()
				x.F64[i] = v
				fd = (lp - lm) / (2 * eps)
				an = grad.F64[i]
			}
			errv := math.Abs(an-fd) / math.Max(1, math.Abs(fd))
			if x.F32 != nil {
				errv /= 1e3 // float32 cases: tolerance 1e-3 instead of 1e-6
			}
			if errv > worst || math.IsNaN(errv) {
				worst = errv
			}
			if !(errv <= 1e-6) {
				t.Errorf("%s[%d]: gradient %.9g, finite difference %.9g", p, i, an, fd)
			}
		}
	}
	return worst
}

// TestRulesFiniteDifferences runs every gradient rule of the registry
// against central finite differences, through the cases of its operator in
// fdCases: a rule without a case that runs it fails, as does a case whose
// model never reaches its rule (or, for a fused case, takes it) or whose
// operator has none.
func TestRulesFiniteDifferences(t *testing.T) {
	byOp := map[string][]int{}
	for i, fc := range fdCases {
		if _, ok := ops[fc.op]; !ok || ops[fc.op].grad == nil {
			t.Errorf("case %s/%s is for %s, which has no rule", fc.op, fc.name, fc.op)
		}
		byOp[fc.op] = append(byOp[fc.op], i)
	}
	worst, cases := 0.0, 0
	for _, op := range Rules() {
		t.Run(op, func(t *testing.T) {
			if !slices.ContainsFunc(byOp[op], func(i int) bool { return !fdCases[i].fused }) {
				t.Fatalf("rule %s has no finite-difference case", op)
			}
			calls := 0
			r := ops[op].grad
			withRule(t, op, func(e *emitter, n *node) []string {
				calls++
				return r(e, n)
			})
			for _, i := range byOp[op] {
				fc := fdCases[i]
				t.Run(fc.name, func(t *testing.T) {
					before := calls
					m, c := caseModel(t, fc, uint64(i+1))
					w := fdCheck(t, m, c.trainable, c.feeds)
					if ran := calls > before; ran == fc.fused {
						t.Errorf("the rule of %s ran: %v, want %v (fused case: %v)", op, ran, !fc.fused, fc.fused)
					}
					worst = max(worst, w)
					cases++
				})
			}
		})
	}
	t.Logf("%d cases, %d rules; largest error %.3g (relative, float32 cases scaled by 1e-3)", cases, len(Rules()), worst)
}

// TestRegistryEntries checks what the walk relies on in every entry: an
// operator without gradient has no rule, and a random one has no gradient.
func TestRegistryEntries(t *testing.T) {
	for op, d := range ops {
		if d.noGrad && d.grad != nil {
			t.Errorf("%s is marked without gradient but has a rule", op)
		}
		if d.random && !d.noGrad {
			t.Errorf("%s is random but not marked without gradient", op)
		}
		if d.grad == nil && !d.noGrad && d.types == nil {
			t.Errorf("%s has an empty entry: it says nothing a missing one would not", op)
		}
	}
}
