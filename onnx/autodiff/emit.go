package autodiff

import (
	"fmt"
	"slices"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
)

// emitter appends the gradient computation to the training graph. Its
// helpers fail by panicking with a ruleError, which apply turns into an
// error that names the node; rules stay one-liners.
type emitter struct {
	b      *onnx.Builder
	m      *onnx.Model
	types  map[string]onnx.DataType
	shapes map[string][]int64             // shapes of forward values on sample a
	other  map[string][]int64             // on sample b (nil when unavailable)
	consts map[string]*onnxpb.TensorProto // fixed contents: initializers, Constant outputs
	static map[string]bool                // values whose shape is fixed
	index  map[*onnxpb.NodeProto]int      // position of each node in the forward graph, for errors
}

type ruleError struct{ msg string }

// fail aborts the current rule with a message.
func fail(format string, args ...any) {
	panic(ruleError{fmt.Sprintf(format, args...)})
}

// node is a forward node as a rule sees it, with the gradients of its
// outputs.
type node struct {
	*onnxpb.NodeProto
	gy []string // gradient of each output, "" where none flows
}

// x returns the name of input i, "" when absent.
func (n *node) x(i int) string {
	if i < len(n.Input) {
		return n.Input[i]
	}
	return ""
}

// y returns the name of output i, "" when absent.
func (n *node) y(i int) string {
	if i < len(n.Output) {
		return n.Output[i]
	}
	return ""
}

// g returns the gradient of the first output.
func (n *node) g() string { return n.gy[0] }

func (n *node) attrInt(name string, def int64) int64 {
	if a := onnx.FindAttr(n.NodeProto, name); a != nil {
		return a.GetI()
	}
	return def
}

func (n *node) attrFloat(name string, def float64) float64 {
	if a := onnx.FindAttr(n.NodeProto, name); a != nil {
		return float64(a.GetF())
	}
	return def
}

func (n *node) attrInts(name string) ([]int64, bool) {
	if a := onnx.FindAttr(n.NodeProto, name); a != nil {
		return a.GetInts(), true
	}
	return nil, false
}

// backward emits the gradient of every active node in reverse order and
// returns, for each trainable parameter, the value holding its gradient.
// A parameter with no path to the loss (or only paths through operators
// without a gradient, such as Shape) gets a zero gradient. A failure of a
// rule or of the emitter's helpers is returned as an error naming the node.
//
// With checkpoints (ck not nil), the rules of the nodes of each segment read
// the segment's forward recomputed right before its backward (checkpoint.go).
func (e *emitter) backward(p plan, cfg Config, ck *checkpoints) (grads map[string]string, err error) {
	at := fmt.Sprintf("the loss %q", cfg.Loss)
	defer func() {
		if r := recover(); r != nil {
			err = panicError(r, at)
		}
	}()
	e.static = map[string]bool{}
	for _, t := range e.m.Graph().GetInitializer() {
		e.static[t.GetName()] = true
	}
	for name := range e.consts {
		e.static[name] = true
	}
	for _, name := range cfg.Trainable {
		e.static[name] = true
	}
	producers := map[string]*onnxpb.NodeProto{}
	uses := map[string]int{}
	for _, n := range p.active {
		for _, o := range n.GetOutput() {
			producers[o] = n
		}
		for _, in := range n.GetInput() {
			uses[in]++
		}
	}
	for _, o := range e.m.Graph().GetOutput() {
		uses[o.GetName()]++
	}
	contrib := map[string][]string{}
	lossShape := e.shapes[cfg.Loss]
	contrib[cfg.Loss] = []string{e.b.Const(e.tensor(e.types[cfg.Loss], lossShape, 1))}
	for i := len(p.active) - 1; i >= 0; i-- {
		n := &node{NodeProto: p.active[i], gy: make([]string, len(p.active[i].Output))}
		at = e.label(n.NodeProto)
		flows := false
		for j, o := range n.Output {
			if cs := contrib[o]; len(cs) > 0 {
				n.gy[j] = e.sum(cs)
				flows = true
			}
		}
		if !flows {
			// Every gradient reaching this node is zero, or it reaches the
			// loss only through operators without a gradient (Shape, ...).
			continue
		}
		rn := n
		if ck != nil && ck.of[n.NodeProto] != nil {
			rn = e.recomputed(ck, n)
		} else if src, dx, ok := e.fusedLogSoftmaxGather(n, producers, uses); ok {
			contrib[src] = append(contrib[src], dx)
			continue
		}
		gx, err := e.apply(rn)
		if err != nil {
			return nil, err
		}
		if rn != n {
			ck.applied(n.NodeProto)
		}
		if err := e.checkGrads(n, gx, p); err != nil {
			return nil, err
		}
		for j, in := range n.Input {
			if in != "" && p.requires[in] && gx[j] != zeroGrad {
				contrib[in] = append(contrib[in], gx[j])
			}
		}
	}
	grads = map[string]string{}
	for _, t := range cfg.Trainable {
		at = fmt.Sprintf("trainable parameter %q", t)
		if cs := contrib[t]; len(cs) > 0 {
			grads[t] = e.sum(cs)
			continue
		}
		// No gradient reaches t: it is zero. ConstantOfShape keeps the
		// model small whatever t's size.
		grads[t] = e.zeros(e.b.ConstInt64s(e.shapes[t]), e.types[t])
	}
	return grads, nil
}

// zeroGrad is what a rule returns for a differentiable input whose
// gradient through the node is zero (LayerNormalization's scale when only
// its Mean output is used): the walk adds nothing for it. "" instead says
// the input needs no gradient (shapes, indices, axes); for an input that
// does need one, "" is an error.
const zeroGrad = "\x00zero"

// checkGrads checks the gradients gx a rule returned for n: one per input
// (as tinygrad asserts len(grads) == len(src)), and one that is not "" for
// each input that depends on a trainable parameter, since gradient flows
// through n to the loss.
func (e *emitter) checkGrads(n *node, gx []string, p plan) error {
	if len(gx) != len(n.Input) {
		return fmt.Errorf("gradient of %s: the rule returned %d gradients for %d inputs", e.label(n.NodeProto), len(gx), len(n.Input))
	}
	for j, in := range n.Input {
		if in == "" || !p.requires[in] || gx[j] != "" {
			continue
		}
		what := fmt.Sprintf("value %q, which depends on trainable parameter %q and", in, p.from[in])
		if p.from[in] == in {
			what = fmt.Sprintf("trainable parameter %q, which", in)
		}
		return fmt.Errorf("gradient of %s: the rule dropped the gradient of input %d, %s lies on the path to the loss (the parameter's gradient would silently miss it)",
			e.label(n.NodeProto), j, what)
	}
	return nil
}

// label names a forward node in errors: its reference, and its position in
// the forward graph when it has no name.
func (e *emitter) label(n *onnxpb.NodeProto) string { return nodeLabel(n, e.index) }

// apply runs the rule of n, turning a rule failure (or any other panic of
// the emitter's helpers) into an error that names the node.
func (e *emitter) apply(n *node) (gx []string, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = panicError(r, e.label(n.NodeProto))
		}
	}()
	r, ok := gradRule(n.NodeProto)
	if !ok { // Build checks every active node first
		return nil, fmt.Errorf("gradient of %s: no gradient rule", e.label(n.NodeProto))
	}
	return r(e, n), nil
}

// panicError turns a value recovered at some point of the emitter into an
// error: a rule failure (see fail) names what was being differentiated;
// anything else is an internal error.
func panicError(r any, at string) error {
	if re, ok := r.(ruleError); ok {
		return fmt.Errorf("gradient of %s: %s", at, re.msg)
	}
	return fmt.Errorf("internal error in autodiff at %s: %v", at, r)
}

// sum adds gradient contributions.
func (e *emitter) sum(xs []string) string {
	switch len(xs) {
	case 1:
		return xs[0]
	case 2:
		return e.b.Add(xs[0], xs[1])
	}
	return e.b.Sum(xs...)
}

// shape returns the sample shape of a forward value.
func (e *emitter) shape(v string) []int64 {
	s, ok := e.shapes[v]
	if !ok {
		fail("no sample shape for value %q", v)
	}
	return s
}

func (e *emitter) rank(v string) int { return len(e.shape(v)) }

func (e *emitter) dtype(v string) onnx.DataType { return e.types[v] }

// tensor returns a constant tensor of element type dt and the given dims
// filled with v.
func (e *emitter) tensor(dt onnx.DataType, dims []int64, v float64) *onnxpb.TensorProto {
	n := numel(dims)
	switch dt {
	case onnx.Float:
		d := make([]float32, n)
		for i := range d {
			d[i] = float32(v)
		}
		return onnx.FloatTensor("", dims, d)
	case onnx.Double:
		d := make([]float64, n)
		for i := range d {
			d[i] = v
		}
		return onnx.DoubleTensor("", dims, d)
	case onnx.Int64:
		d := make([]int64, n)
		for i := range d {
			d[i] = int64(v)
		}
		return onnx.Int64Tensor("", dims, d)
	case onnx.Float16, onnx.BFloat16:
		d := make([]float32, n)
		for i := range d {
			d[i] = float32(v)
		}
		t := &onnxpb.TensorProto{DataType: ptr(int32(dt)), Dims: append([]int64{}, dims...)}
		if err := onnx.SetTensorFloats(t, d); err != nil {
			fail("constant of type %s: %v", dt, err)
		}
		return t
	}
	fail("element type %s is not supported (float16, bfloat16, float32, float64 and int64 are)", dt)
	return nil
}

// scalar returns a rank-0 constant v of like's element type.
func (e *emitter) scalar(v float64, like string) string {
	return e.b.Const(e.tensor(e.dtype(like), nil, v))
}

// ints returns the contents of a constant int64 (or int32) value.
func (e *emitter) ints(v string) []int64 {
	t, ok := e.consts[v]
	if !ok {
		fail("value %q must be a constant", v)
	}
	var out []int64
	var err error
	if onnx.DataType(t.GetDataType()) == onnx.Int32 {
		var i32 []int64
		i32, err = int32s(t)
		out = i32
	} else {
		out, err = onnx.TensorInt64s(t)
	}
	if err != nil {
		fail("reading constant %q: %v", v, err)
	}
	return out
}

// floatConst returns the value of a constant scalar float, if v is one.
func (e *emitter) floatConst(v string) (float64, bool) {
	t, ok := e.consts[v]
	if !ok || numel(t.GetDims()) != 1 {
		return 0, false
	}
	switch onnx.DataType(t.GetDataType()) {
	case onnx.Float:
		f, err := onnx.TensorFloats(t)
		return float64(f[0]), err == nil
	case onnx.Double:
		f, err := onnx.TensorDoubles(t)
		return f[0], err == nil
	case onnx.Int64, onnx.Int32:
		f := e.ints(v)
		return float64(f[0]), true
	}
	return 0, false
}

// int64Value returns v as int64, casting int32 values.
func (e *emitter) int64Value(v string) string {
	if e.dtype(v) == onnx.Int32 {
		return e.b.Cast(v, onnx.Int64)
	}
	return v
}

// shapeOf returns a value holding x's runtime shape: a constant when x's
// shape is fixed.
func (e *emitter) shapeOf(x string) string {
	if e.static[x] {
		return e.b.ConstInt64s(e.shape(x))
	}
	return e.b.Shape(x)
}

// zerosLike returns zeros of x's shape and element type.
func (e *emitter) zerosLike(x string) string {
	return e.zeros(e.shapeOf(x), e.dtype(x))
}

// zeros returns zeros of the given runtime shape.
func (e *emitter) zeros(shape string, dt onnx.DataType) string {
	return e.b.Op("ConstantOfShape", []string{shape}, onnx.AttrTensor("value", e.tensor(dt, []int64{1}, 0)))
}

// like reshapes g to x's shape (gradients of shape-only operators).
func (e *emitter) like(g, x string) string { return e.b.Reshape(g, e.shapeOf(x)) }

// dims is the shape of a value on the two samples; b is nil when sample b
// is unavailable.
type dims struct{ a, b []int64 }

// dims returns the sample shapes of a forward value.
func (e *emitter) dims(v string) dims {
	d := dims{a: e.shape(v)}
	if b, ok := e.other[v]; ok && len(b) == len(d.a) {
		d.b = b
	}
	return d
}

// mapDims applies f to both samples of the given shapes; the result has no
// b when one of them has none.
func mapDims(f func(s ...[]int64) []int64, ds ...dims) dims {
	as, bs := make([][]int64, len(ds)), make([][]int64, len(ds))
	out := dims{}
	for i, d := range ds {
		as[i], bs[i] = d.a, d.b
	}
	out.a = f(as...)
	if !slices.ContainsFunc(bs, func(b []int64) bool { return b == nil }) {
		out.b = f(bs...)
	}
	return out
}

// sumTo reduces g, a gradient (with sample shapes gs) of a value x was
// broadcast to, to x's shape: it sums over the leading axes x lacks and
// the axes where x has size 1 and g not. On each axis where x has size 1
// the samples decide: g larger than 1 on a sample means broadcast (x's 1
// being fixed); x and g both 1 on sample a but g larger on sample b too;
// both 1 on both samples means a dim fixed at 1, not reduced. Axes the
// samples cannot settle are reduced over axes computed at run time.
func (e *emitter) sumTo(g string, gs dims, x string) string {
	xs := e.dims(x)
	lead := len(gs.a) - len(xs.a)
	if lead < 0 {
		fail("gradient of shape %v cannot be reduced to %q of shape %v", gs.a, x, xs.a)
	}
	var axes []int64
	for i := range lead {
		axes = append(axes, int64(i))
	}
	ambiguous := false
	for i, d := range xs.a {
		j := lead + i
		gd := gs.a[j]
		switch {
		case d != 1 && d == gd:
		case d != 1:
			fail("gradient of shape %v cannot be reduced to %q of shape %v", gs.a, x, xs.a)
		case xs.b == nil || gs.b == nil:
			if gd != 1 {
				axes = append(axes, int64(j))
			} else {
				ambiguous = true
			}
		case xs.b[i] != 1: // x's dim is dynamic and was 1 on sample a
			ambiguous = ambiguous || gd != 1
		case gd != 1 || gs.b[j] != 1:
			axes = append(axes, int64(j))
		}
	}
	switch {
	case ambiguous:
		return e.sumToDynamic(g, len(gs.a), x)
	case len(axes) == 0:
		return g
	case len(axes) == lead:
		return e.b.ReduceSum(g, axes, false)
	case lead == 0:
		return e.b.ReduceSum(g, axes, true)
	}
	return e.like(e.b.ReduceSum(g, axes, true), x)
}

// count returns the number of elements of x over the given axes, as a
// scalar of x's type: a constant when those dims are the same on both
// samples, else computed from Size(x) / Size(reduced), where reduced is x
// reduced over the axes.
func (e *emitter) count(x string, axes []int64, reduced string) string {
	xs := e.dims(x)
	if xs.b != nil && !slices.ContainsFunc(axes, func(a int64) bool { return xs.a[a] != xs.b[a] }) {
		n := 1.0
		for _, a := range axes {
			n *= float64(xs.a[a])
		}
		return e.scalar(n, x)
	}
	dt := e.dtype(x)
	size := func(v string) string { return e.b.Cast(e.b.Op("Size", []string{v}), dt) }
	return e.b.Div(size(x), size(reduced))
}

// sumToDynamic reduces g (of rank rg) over the axes where x, right-aligned
// and padded with ones, has size 1 at run time.
func (e *emitter) sumToDynamic(g string, rg int, x string) string {
	b := e.b
	sx := e.shapeOf(x)
	if lead := rg - e.rank(x); lead > 0 {
		sx = b.Concat(0, b.ConstInt64s(slices.Repeat([]int64{1}, lead)), sx)
	}
	isOne := b.Equal(sx, b.ConstInt64s([]int64{1}))
	axes := b.Op("Compress", []string{b.ConstInt64s(arange(rg)), isOne}, onnx.AttrInt("axis", 0))
	r := b.Op("ReduceSum", []string{g, axes}, onnx.AttrInt("keepdims", 1), onnx.AttrInt("noop_with_empty_axes", 1))
	return e.like(r, x)
}

// mm returns op(x) @ op(y) where op transposes the last two axes when tx
// (ty) is set. Float32 uses com.microsoft FusedMatMul, which transposes
// for free. Other types transpose with a unary Einsum: ONNX Runtime's
// optimizer would fuse a Transpose node into a FusedMatMul, which has only
// a float32 kernel.
func (e *emitter) mm(x string, tx bool, y string, ty bool, dt onnx.DataType) string {
	if dt == onnx.Float && (tx || ty) {
		if e.m.Opset("com.microsoft") == 0 {
			e.m.SetOpset("com.microsoft", 1)
		}
		return e.b.OpDomain("com.microsoft", "FusedMatMul", []string{x, y}, 1,
			onnx.AttrInt("transA", boolInt(tx)), onnx.AttrInt("transB", boolInt(ty)))[0]
	}
	t := func(v string) string {
		return e.b.Op("Einsum", []string{v}, onnx.AttrString("equation", "...ij->...ji"))
	}
	if tx {
		x = t(x)
	}
	if ty {
		y = t(y)
	}
	return e.b.MatMul(x, y)
}

// axis normalises a possibly negative axis for a value of rank r.
func axis(a int64, r int) int64 {
	if a < 0 {
		a += int64(r)
	}
	if a < 0 || a >= int64(max(r, 1)) {
		fail("axis %d out of range for rank %d", a, r)
	}
	return a
}

func arange(n int) []int64 {
	out := make([]int64, n)
	for i := range out {
		out[i] = int64(i)
	}
	return out
}

func inversePerm(p []int64) []int64 {
	inv := make([]int64, len(p))
	for i, v := range p {
		inv[v] = int64(i)
	}
	return inv
}

func boolInt(v bool) int64 {
	if v {
		return 1
	}
	return 0
}

func int32s(t *onnxpb.TensorProto) ([]int64, error) {
	if t.RawData != nil {
		if len(t.RawData)%4 != 0 {
			return nil, fmt.Errorf("int32 raw data of %d bytes", len(t.RawData))
		}
		out := make([]int64, len(t.RawData)/4)
		for i := range out {
			b := t.RawData[4*i:]
			out[i] = int64(int32(uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24))
		}
		return out, nil
	}
	out := make([]int64, len(t.Int32Data))
	for i, v := range t.Int32Data {
		out[i] = int64(v)
	}
	return out, nil
}

// fusedLogSoftmaxGather handles GatherElements(LogSoftmax(x), idx) along the softmax
// axis — the pattern of every log-prob head — when nothing else reads the LogSoftmax
// output. The gradient reaching LogSoftmax is sparse (g scattered at idx), so
//
//	dx = scatter_add(−softmax(x) · Σ_axis g, idx, g)
//
// is emitted straight into x, skipping the dense zeros-plus-scatter, the reduction over
// the vocabulary and the subtraction that the two separate rules would write. It returns
// x, dx and true when it applies.
func (e *emitter) fusedLogSoftmaxGather(n *node, producers map[string]*onnxpb.NodeProto, uses map[string]int) (string, string, bool) {
	if opKey(n.NodeProto) != "GatherElements" || n.g() == "" {
		return "", "", false
	}
	lp := n.x(0)
	sm := producers[lp]
	if sm == nil || opKey(sm) != "LogSoftmax" || uses[lp] != 1 {
		return "", "", false
	}
	r := e.rank(lp)
	smAxis := int64(-1)
	if a := onnx.FindAttr(sm, "axis"); a != nil {
		smAxis = a.GetI()
	}
	gatherAxis := axis(n.attrInt("axis", 0), r)
	if axis(smAxis, r) != gatherAxis {
		return "", "", false
	}
	b := e.b
	total := b.ReduceSum(n.g(), []int64{gatherAxis}, true)
	dense := b.Mul(b.Exp(lp), b.Neg(total))
	dx := b.Op("ScatterElements", []string{dense, e.int64Value(n.x(1)), n.g()},
		onnx.AttrInt("axis", gatherAxis), onnx.AttrString("reduction", "add"))
	return sm.GetInput()[0], dx, true
}
