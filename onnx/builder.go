package onnx

import (
	"encoding/binary"
	"fmt"
	"strconv"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx/onnxpb"
)

// Builder appends nodes to a graph with short calls that read like the math
// they compute:
//
//	b := onnx.NewBuilder(g, m.Opset(""), "dpo")
//	margin := b.Sub(b.Mul(beta, chosen), b.Mul(beta, rejected))
//	loss := b.Neg(b.ReduceMean(b.Log(b.Sigmoid(margin)), nil, false))
//
// Each call adds one node (constants become initializers) and returns the
// name of its output. Names are made unique across the whole graph,
// including subgraphs, and start with the builder's prefix. Operators whose
// axes or splits moved from an attribute to an input between opsets
// (ReduceSum at 13, the other Reduce* at 18, Squeeze/Unsqueeze at 13, Split
// at 13 and 18) are emitted in the form the builder's opset expects; opsets
// 13 to 21 are supported.
//
// The builder only appends: as long as its inputs already exist, the graph
// stays topologically sorted. A Builder is not safe for concurrent use.
type Builder struct {
	g      *onnxpb.GraphProto
	opset  int64
	prefix string
	used   map[string]bool
	next   map[string]int
	consts map[string]string
}

// NewBuilder returns a builder that appends to g, emitting operators of the
// default-domain opset version opset (usually Model.Opset("")). Every name
// it creates starts with prefix (followed by "/" unless prefix is empty).
func NewBuilder(g *onnxpb.GraphProto, opset int64, prefix string) *Builder {
	return &Builder{
		g:      g,
		opset:  opset,
		prefix: prefix,
		used:   Names(g),
		next:   map[string]int{},
		consts: map[string]string{},
	}
}

// Graph returns the graph the builder appends to.
func (b *Builder) Graph() *onnxpb.GraphProto { return b.g }

// Opset returns the default-domain opset version the builder emits for.
func (b *Builder) Opset() int64 { return b.opset }

// Name returns a new name, unique in the graph, made of the builder's prefix
// and base, and reserves it.
func (b *Builder) Name(base string) string {
	stem := base
	if b.prefix != "" {
		stem = b.prefix + "/" + base
	}
	for {
		i := b.next[stem]
		b.next[stem] = i + 1
		name := stem + "_" + strconv.Itoa(i)
		if !b.used[name] {
			b.used[name] = true
			return name
		}
	}
}

// reserve returns want, or want_1, want_2, ... if taken, and reserves it.
func (b *Builder) reserve(want string) string {
	name := want
	for i := 1; b.used[name]; i++ {
		name = want + "_" + strconv.Itoa(i)
	}
	b.used[name] = true
	return name
}

// Op appends a default-domain node with one output and returns the output's name.
func (b *Builder) Op(opType string, inputs []string, attrs ...*onnxpb.AttributeProto) string {
	return b.OpDomain("", opType, inputs, 1, attrs...)[0]
}

// OpN appends a default-domain node with nOut outputs and returns their names.
func (b *Builder) OpN(opType string, inputs []string, nOut int, attrs ...*onnxpb.AttributeProto) []string {
	return b.OpDomain("", opType, inputs, nOut, attrs...)
}

// OpDomain appends a node of the given domain ("" for the default ONNX
// domain; the model must import any other) with nOut outputs and returns
// their names. The node is named like its first output's stem.
func (b *Builder) OpDomain(domain, opType string, inputs []string, nOut int, attrs ...*onnxpb.AttributeProto) []string {
	nodeName := b.Name(opType)
	outs := make([]string, max(nOut, 0))
	for i := range outs {
		if nOut == 1 {
			outs[i] = b.reserve(nodeName + "_out")
		} else {
			outs[i] = b.reserve(nodeName + "_out" + strconv.Itoa(i))
		}
	}
	n := &onnxpb.NodeProto{
		Name:   proto.String(nodeName),
		OpType: proto.String(opType),
		Input:  append([]string(nil), inputs...),
		Output: outs,
	}
	if domain != "" {
		n.Domain = proto.String(domain)
	}
	for _, a := range attrs {
		if a != nil {
			n.Attribute = append(n.Attribute, a)
		}
	}
	b.g.Node = append(b.g.Node, n)
	return outs
}

// Const adds t as an initializer and returns its name. A tensor equal in
// type, dims and data to one this builder already added is not added
// again: the earlier name is returned. t's own name is replaced by a
// unique one.
func (b *Builder) Const(t *onnxpb.TensorProto) string {
	key, ok := constKey(t)
	if ok {
		if name, dup := b.consts[key]; dup {
			return name
		}
	}
	name := b.Name("const")
	c := proto.Clone(t).(*onnxpb.TensorProto)
	c.Name = proto.String(name)
	b.g.Initializer = append(b.g.Initializer, c)
	if ok {
		b.consts[key] = name
	}
	return name
}

// constKey identifies a raw-data tensor by type, dims and bytes.
func constKey(t *onnxpb.TensorProto) (string, bool) {
	if t.RawData == nil || t.Segment != nil {
		return "", false
	}
	buf := make([]byte, 0, 16+8*len(t.Dims)+len(t.RawData))
	buf = binary.AppendVarint(buf, int64(t.GetDataType()))
	buf = binary.AppendVarint(buf, int64(len(t.Dims)))
	for _, d := range t.Dims {
		buf = binary.AppendVarint(buf, d)
	}
	buf = append(buf, t.RawData...)
	return string(buf), true
}

// ConstFloat returns a FLOAT scalar constant.
func (b *Builder) ConstFloat(v float32) string { return b.Const(ScalarFloat("", v)) }

// ConstFloats returns a 1-D FLOAT constant.
func (b *Builder) ConstFloats(v []float32) string {
	return b.Const(FloatTensor("", []int64{int64(len(v))}, v))
}

// ConstScalarInt64 returns an INT64 scalar constant.
func (b *Builder) ConstScalarInt64(v int64) string { return b.Const(ScalarInt64("", v)) }

// ConstInt64s returns a 1-D INT64 constant (for shapes, axes, indices).
func (b *Builder) ConstInt64s(v []int64) string {
	return b.Const(Int64Tensor("", []int64{int64(len(v))}, v))
}

// AttrInt returns an INT attribute.
func AttrInt(name string, v int64) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: proto.String(name), Type: onnxpb.AttributeProto_INT.Enum(), I: proto.Int64(v)}
}

// AttrInts returns an INTS attribute.
func AttrInts(name string, v []int64) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: proto.String(name), Type: onnxpb.AttributeProto_INTS.Enum(), Ints: append([]int64(nil), v...)}
}

// AttrFloat returns a FLOAT attribute.
func AttrFloat(name string, v float32) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: proto.String(name), Type: onnxpb.AttributeProto_FLOAT.Enum(), F: proto.Float32(v)}
}

// AttrFloats returns a FLOATS attribute.
func AttrFloats(name string, v []float32) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: proto.String(name), Type: onnxpb.AttributeProto_FLOATS.Enum(), Floats: append([]float32(nil), v...)}
}

// AttrString returns a STRING attribute.
func AttrString(name, v string) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: proto.String(name), Type: onnxpb.AttributeProto_STRING.Enum(), S: []byte(v)}
}

// AttrStrings returns a STRINGS attribute.
func AttrStrings(name string, v []string) *onnxpb.AttributeProto {
	a := &onnxpb.AttributeProto{Name: proto.String(name), Type: onnxpb.AttributeProto_STRINGS.Enum()}
	for _, s := range v {
		a.Strings = append(a.Strings, []byte(s))
	}
	return a
}

// AttrTensor returns a TENSOR attribute.
func AttrTensor(name string, t *onnxpb.TensorProto) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: proto.String(name), Type: onnxpb.AttributeProto_TENSOR.Enum(), T: t}
}

// AttrGraph returns a GRAPH attribute (If branches, Loop and Scan bodies).
func AttrGraph(name string, g *onnxpb.GraphProto) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: proto.String(name), Type: onnxpb.AttributeProto_GRAPH.Enum(), G: g}
}

// FindAttr returns n's attribute called name, or nil.
func FindAttr(n *onnxpb.NodeProto, name string) *onnxpb.AttributeProto {
	for _, a := range n.GetAttribute() {
		if a.GetName() == name {
			return a
		}
	}
	return nil
}

// Elementwise and unary operators.

// Add returns x + y (broadcasting).
func (b *Builder) Add(x, y string) string { return b.Op("Add", []string{x, y}) }

// Sub returns x - y (broadcasting).
func (b *Builder) Sub(x, y string) string { return b.Op("Sub", []string{x, y}) }

// Mul returns x * y (broadcasting).
func (b *Builder) Mul(x, y string) string { return b.Op("Mul", []string{x, y}) }

// Div returns x / y (broadcasting).
func (b *Builder) Div(x, y string) string { return b.Op("Div", []string{x, y}) }

// Pow returns x ** y (broadcasting).
func (b *Builder) Pow(x, y string) string { return b.Op("Pow", []string{x, y}) }

// Max returns the elementwise maximum of xs (broadcasting).
func (b *Builder) Max(xs ...string) string { return b.Op("Max", xs) }

// Min returns the elementwise minimum of xs (broadcasting).
func (b *Builder) Min(xs ...string) string { return b.Op("Min", xs) }

// Sum returns the elementwise sum of xs (broadcasting).
func (b *Builder) Sum(xs ...string) string { return b.Op("Sum", xs) }

// Neg returns -x.
func (b *Builder) Neg(x string) string { return b.Op("Neg", []string{x}) }

// Exp returns e**x.
func (b *Builder) Exp(x string) string { return b.Op("Exp", []string{x}) }

// Log returns the natural logarithm of x.
func (b *Builder) Log(x string) string { return b.Op("Log", []string{x}) }

// Sqrt returns the square root of x.
func (b *Builder) Sqrt(x string) string { return b.Op("Sqrt", []string{x}) }

// Abs returns |x|.
func (b *Builder) Abs(x string) string { return b.Op("Abs", []string{x}) }

// Sigmoid returns 1 / (1 + e**-x).
func (b *Builder) Sigmoid(x string) string { return b.Op("Sigmoid", []string{x}) }

// Tanh returns tanh(x).
func (b *Builder) Tanh(x string) string { return b.Op("Tanh", []string{x}) }

// Relu returns max(x, 0).
func (b *Builder) Relu(x string) string { return b.Op("Relu", []string{x}) }

// Identity returns a copy of x.
func (b *Builder) Identity(x string) string { return b.Op("Identity", []string{x}) }

// Not returns the logical negation of a BOOL tensor.
func (b *Builder) Not(x string) string { return b.Op("Not", []string{x}) }

// Equal returns x == y as BOOL.
func (b *Builder) Equal(x, y string) string { return b.Op("Equal", []string{x, y}) }

// Less returns x < y as BOOL.
func (b *Builder) Less(x, y string) string { return b.Op("Less", []string{x, y}) }

// Greater returns x > y as BOOL.
func (b *Builder) Greater(x, y string) string { return b.Op("Greater", []string{x, y}) }

// Where returns cond ? x : y elementwise (broadcasting).
func (b *Builder) Where(cond, x, y string) string { return b.Op("Where", []string{cond, x, y}) }

// MatMul returns the matrix product of x and y (numpy semantics).
func (b *Builder) MatMul(x, y string) string { return b.Op("MatMul", []string{x, y}) }

// Transpose permutes the axes of x; nil perm reverses them.
func (b *Builder) Transpose(x string, perm []int64) string {
	if perm == nil {
		return b.Op("Transpose", []string{x})
	}
	return b.Op("Transpose", []string{x}, AttrInts("perm", perm))
}

// Cast converts x to element type to.
func (b *Builder) Cast(x string, to DataType) string {
	return b.Op("Cast", []string{x}, AttrInt("to", int64(to)))
}

// Shape returns the shape of x as a 1-D INT64 tensor.
func (b *Builder) Shape(x string) string { return b.Op("Shape", []string{x}) }

// Reshape reshapes x to shape, the name of a 1-D INT64 value (0 copies a
// dim, -1 infers one).
func (b *Builder) Reshape(x, shape string) string { return b.Op("Reshape", []string{x, shape}) }

// Expand broadcasts x to shape, the name of a 1-D INT64 value.
func (b *Builder) Expand(x, shape string) string { return b.Op("Expand", []string{x, shape}) }

// Concat concatenates xs along axis.
func (b *Builder) Concat(axis int64, xs ...string) string {
	return b.Op("Concat", xs, AttrInt("axis", axis))
}

// Gather takes the entries of x at indices idx along axis.
func (b *Builder) Gather(x, idx string, axis int64) string {
	return b.Op("Gather", []string{x, idx}, AttrInt("axis", axis))
}

// GatherElements takes, along axis, the entries of x given by idx, which has
// x's rank.
func (b *Builder) GatherElements(x, idx string, axis int64) string {
	return b.Op("GatherElements", []string{x, idx}, AttrInt("axis", axis))
}

// Softmax returns softmax(x) along axis.
func (b *Builder) Softmax(x string, axis int64) string {
	return b.Op("Softmax", []string{x}, AttrInt("axis", axis))
}

// LogSoftmax returns log(softmax(x)) along axis.
func (b *Builder) LogSoftmax(x string, axis int64) string {
	return b.Op("LogSoftmax", []string{x}, AttrInt("axis", axis))
}

// Slice takes x[starts:ends:steps] along axes. axes and steps may be nil
// (all leading axes, step 1). Since opset 10 the bounds are inputs.
func (b *Builder) Slice(x string, starts, ends, axes, steps []int64) string {
	in := []string{x, b.ConstInt64s(starts), b.ConstInt64s(ends)}
	if axes != nil || steps != nil {
		if axes == nil {
			axes = make([]int64, len(starts))
			for i := range axes {
				axes[i] = int64(i)
			}
		}
		in = append(in, b.ConstInt64s(axes))
	}
	if steps != nil {
		in = append(in, b.ConstInt64s(steps))
	}
	return b.Op("Slice", in)
}

// reduceAxesInputSince is the opset at which each Reduce* operator takes its
// axes as an input instead of an attribute.
func reduceAxesInputSince(op string) int64 {
	if op == "ReduceSum" {
		return 13
	}
	return 18
}

// Reduce applies the reduction op (ReduceSum, ReduceMean, ReduceMax,
// ReduceMin, ReduceProd, ReduceL2, ReduceLogSumExp, ...) over axes of x;
// nil or empty axes reduce over all axes. keepdims keeps reduced axes as
// size 1. The axes go in an attribute or an input, as the opset requires.
func (b *Builder) Reduce(op, x string, axes []int64, keepdims bool) string {
	kd := AttrInt("keepdims", boolInt(keepdims))
	if len(axes) == 0 {
		return b.Op(op, []string{x}, kd)
	}
	if b.opset >= reduceAxesInputSince(op) {
		return b.Op(op, []string{x, b.ConstInt64s(axes)}, kd)
	}
	return b.Op(op, []string{x}, AttrInts("axes", axes), kd)
}

// ReduceSum sums x over axes; see Reduce.
func (b *Builder) ReduceSum(x string, axes []int64, keepdims bool) string {
	return b.Reduce("ReduceSum", x, axes, keepdims)
}

// ReduceMean averages x over axes; see Reduce.
func (b *Builder) ReduceMean(x string, axes []int64, keepdims bool) string {
	return b.Reduce("ReduceMean", x, axes, keepdims)
}

// ReduceMax takes the maximum of x over axes; see Reduce.
func (b *Builder) ReduceMax(x string, axes []int64, keepdims bool) string {
	return b.Reduce("ReduceMax", x, axes, keepdims)
}

// ReduceLogSumExp returns log(sum(exp(x))) over axes; see Reduce.
func (b *Builder) ReduceLogSumExp(x string, axes []int64, keepdims bool) string {
	return b.Reduce("ReduceLogSumExp", x, axes, keepdims)
}

// Unsqueeze inserts size-1 axes into x (attribute before opset 13, input since).
func (b *Builder) Unsqueeze(x string, axes []int64) string {
	if b.opset >= 13 {
		return b.Op("Unsqueeze", []string{x, b.ConstInt64s(axes)})
	}
	return b.Op("Unsqueeze", []string{x}, AttrInts("axes", axes))
}

// Squeeze removes size-1 axes from x; nil axes removes all of them
// (attribute before opset 13, input since).
func (b *Builder) Squeeze(x string, axes []int64) string {
	switch {
	case len(axes) == 0:
		return b.Op("Squeeze", []string{x})
	case b.opset >= 13:
		return b.Op("Squeeze", []string{x, b.ConstInt64s(axes)})
	}
	return b.Op("Squeeze", []string{x}, AttrInts("axes", axes))
}

// Split splits x along axis into n parts: of the given sizes when split is
// non-nil (len(split) must be n), else equal parts. The sizes are an
// attribute before opset 13 and an input since; from opset 18 equal splits
// state num_outputs.
func (b *Builder) Split(x string, axis int64, split []int64, n int) []string {
	attrs := []*onnxpb.AttributeProto{AttrInt("axis", axis)}
	in := []string{x}
	switch {
	case split != nil && b.opset >= 13:
		in = append(in, b.ConstInt64s(split))
	case split != nil:
		attrs = append(attrs, AttrInts("split", split))
	case b.opset >= 18:
		attrs = append(attrs, AttrInt("num_outputs", int64(n)))
	}
	return b.OpN("Split", in, n, attrs...)
}

// Clip limits x to [lo, hi]; either bound may be "" for none. lo and hi are
// scalar values of x's type (inputs since opset 11).
func (b *Builder) Clip(x, lo, hi string) string {
	in := []string{x, lo, hi}
	for len(in) > 1 && in[len(in)-1] == "" {
		in = in[:len(in)-1]
	}
	return b.Op("Clip", in)
}

func boolInt(v bool) int64 {
	if v {
		return 1
	}
	return 0
}

// String describes the builder for debugging.
func (b *Builder) String() string {
	return fmt.Sprintf("onnx.Builder{graph %q, opset %d, prefix %q, %d nodes}", b.g.GetName(), b.opset, b.prefix, len(b.g.GetNode()))
}
