package autodiff

import (
	"math"
	"slices"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
)

// opDef is everything autodiff knows about one ONNX operator type: how to
// differentiate it, whether it can be, and the element types of its
// outputs. The registry ops holds one per operator type, so a new operator
// is one entry (tinygrad's gradient table, ONNX Runtime's gradient builder
// registry with its SHOULD_NOT_DO_GRADIENT list).
type opDef struct {
	// grad emits the gradients of the node's inputs (see rule). nil: the
	// operator has no gradient rule, and a node of it on the path from a
	// trainable parameter to the loss is an UnsupportedError.
	grad rule
	// noGrad marks an operator whose outputs never carry a gradient, even
	// when computed from a trainable value: shape and index logic,
	// comparisons, rounding, random numbers. The walk passes it by; it has
	// no grad.
	noGrad bool
	// types returns the element types of the node's outputs, one per
	// output or a single one for all (nil: every output has the type of the
	// first input, as most operators). in gives the type of input i,
	// onnx.Undefined when absent or unknown.
	types typeRule
	// random marks an operator whose recomputation would not give the same
	// values: gradient checkpointing keeps the layers that hold one.
	random bool
	// opset is the least default-domain opset that the gradient's operators
	// need (0: any that autodiff accepts); Build raises a model below it.
	opset int64
}

// typeRule gives the element types of a node's outputs (opDef.types).
type typeRule func(n *onnxpb.NodeProto, in func(i int) onnx.DataType) []onnx.DataType

// rule emits the gradients of a node's inputs, given those of its outputs
// (n.gy), and returns them by input position: exactly one entry per input
// of the node (a different count is an error). An entry is "" for an input
// without a gradient (shapes, indices, axes, absent optional inputs) and
// zeroGrad for a differentiable input whose gradient through the node is
// zero; "" for an input that depends on a trainable parameter is an error,
// as it would silently zero that parameter's gradient. Rules may return
// gradients for inputs that need none: the walk ignores them and the final
// pruning removes their nodes.
type rule func(e *emitter, n *node) []string

// only returns the gradients gx of n's first inputs, padded with "" to one
// entry per input: the rest of the inputs have no gradient.
func only(n *node, gx ...string) []string {
	out := make([]string, max(len(n.Input), len(gx)))
	copy(out, gx)
	return out
}

// opOf returns the registry entry of n, keyed by opKey (a node of another
// domain is not the default-domain operator of the same name); the zero
// opDef when there is none: no gradient rule, outputs of the first input's
// type.
func opOf(n *onnxpb.NodeProto) opDef { return ops[opKey(n)] }

// gradRule returns n's gradient rule, false when its operator has none.
func gradRule(n *onnxpb.NodeProto) (rule, bool) {
	r := opOf(n).grad
	return r, r != nil
}

// Rules returns the operator types that have a gradient rule, sorted.
func Rules() []string {
	var out []string
	for k, d := range ops {
		if d.grad != nil {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// ops is the registry: one entry per ONNX operator type (default domain)
// that autodiff knows. In the comments, g is the gradient of output 0, y
// output 0, and sumTo reduces a broadcast gradient to an input's shape.
var ops = map[string]opDef{
	// Elementwise arithmetic (broadcasting).
	"Add": {grad: func(e *emitter, n *node) []string { // da = g, db = g
		return []string{e.unb(n, n.g(), 0), e.unb(n, n.g(), 1)}
	}},
	"Sub": {grad: func(e *emitter, n *node) []string { // da = g, db = -g
		return []string{e.unb(n, n.g(), 0), e.unb(n, e.b.Neg(n.g()), 1)}
	}},
	"Mul": {grad: func(e *emitter, n *node) []string { // da = g·b, db = g·a
		return []string{e.unb(n, e.b.Mul(n.g(), n.x(1)), 0), e.unb(n, e.b.Mul(n.g(), n.x(0)), 1)}
	}},
	"Div": {grad: func(e *emitter, n *node) []string { // da = g/b, db = -(g/b)·y
		t := e.b.Div(n.g(), n.x(1))
		return []string{e.unb(n, t, 0), e.unb(n, e.b.Neg(e.b.Mul(t, n.y(0))), 1)}
	}},
	"Sum": {grad: func(e *emitter, n *node) []string { // dx_i = g
		out := make([]string, len(n.Input))
		for i := range out {
			out[i] = e.unb(n, n.g(), i)
		}
		return out
	}},
	"Pow": {grad: powGrad},
	"Max": {grad: minMaxGrad},
	"Min": {grad: minMaxGrad},

	// Elementwise unary.
	"Neg":      {grad: func(e *emitter, n *node) []string { return []string{e.b.Neg(n.g())} }},
	"Identity": {grad: func(e *emitter, n *node) []string { return []string{n.g()} }},
	"Dropout":  {grad: dropoutGrad, types: firstAnd(onnx.Bool)}, // output, mask
	"Exp":      {grad: func(e *emitter, n *node) []string { return []string{e.b.Mul(n.g(), n.y(0))} }},
	"Log":      {grad: func(e *emitter, n *node) []string { return []string{e.b.Div(n.g(), n.x(0))} }},
	"Sqrt": {grad: func(e *emitter, n *node) []string {
		return []string{e.b.Div(e.b.Mul(n.g(), e.scalar(0.5, n.y(0))), n.y(0))}
	}},
	"Reciprocal": {grad: func(e *emitter, n *node) []string {
		return []string{e.b.Neg(e.b.Mul(n.g(), e.b.Mul(n.y(0), n.y(0))))}
	}},
	"Sin": {grad: func(e *emitter, n *node) []string { return []string{e.b.Mul(n.g(), e.b.Op("Cos", []string{n.x(0)}))} }},
	"Cos": {grad: func(e *emitter, n *node) []string {
		return []string{e.b.Neg(e.b.Mul(n.g(), e.b.Op("Sin", []string{n.x(0)})))}
	}},
	"Abs": {grad: func(e *emitter, n *node) []string { return []string{e.b.Mul(n.g(), e.b.Op("Sign", []string{n.x(0)}))} }},
	"Tanh": {grad: func(e *emitter, n *node) []string { // g * (1 - y²)
		y := n.y(0)
		return []string{e.b.Mul(n.g(), e.b.Sub(e.scalar(1, y), e.b.Mul(y, y)))}
	}},
	"Sigmoid": {grad: func(e *emitter, n *node) []string { // g * y * (1 - y)
		y := n.y(0)
		return []string{e.b.Mul(n.g(), e.b.Mul(y, e.b.Sub(e.scalar(1, y), y)))}
	}},
	"Softplus": {grad: func(e *emitter, n *node) []string { // g * σ(x)
		return []string{e.b.Mul(n.g(), e.b.Sigmoid(n.x(0)))}
	}},
	"Erf": {grad: func(e *emitter, n *node) []string { // g * 2/√π * exp(-x²)
		x := n.x(0)
		return []string{e.b.Mul(n.g(), e.b.Mul(e.scalar(2/math.Sqrt(math.Pi), x), e.b.Exp(e.b.Neg(e.b.Mul(x, x)))))}
	}},
	"Relu": {grad: func(e *emitter, n *node) []string { // g where y > 0
		y := n.y(0)
		return []string{e.b.Where(e.b.Greater(y, e.scalar(0, y)), n.g(), e.scalar(0, y))}
	}},
	"Cast": {grad: func(e *emitter, n *node) []string { // back to the input's type
		if !e.dtype(n.x(0)).IsFloat() {
			return only(n)
		}
		return []string{e.b.Cast(n.g(), e.dtype(n.x(0)))}
	}, types: attrType("to", nil)},
	"CastLike": {types: input(1)},
	"Clip":     {grad: clipGrad},
	"Where":    {grad: whereGrad, types: input(1)},

	// Normalisation and activations over an axis.
	"Softmax": {grad: func(e *emitter, n *node) []string { // y*g - y*sum(y*g)
		y, t := n.y(0), e.b.Mul(n.g(), n.y(0))
		return []string{e.b.Sub(t, e.b.Mul(y, e.b.ReduceSum(t, []int64{n.attrInt("axis", -1)}, true)))}
	}},
	"LogSoftmax": {grad: func(e *emitter, n *node) []string { // g - exp(y)*sum(g)
		s := e.b.ReduceSum(n.g(), []int64{n.attrInt("axis", -1)}, true)
		return []string{e.b.Sub(n.g(), e.b.Mul(e.b.Exp(n.y(0)), s))}
	}},
	"LayerNormalization": {grad: layerNormGrad, types: layerNormTypes},
	"CumSum": {grad: func(e *emitter, n *node) []string { // cumsum of g the other way
		return only(n, e.b.Op("CumSum", []string{n.g(), n.x(1)},
			onnx.AttrInt("exclusive", n.attrInt("exclusive", 0)), onnx.AttrInt("reverse", 1-n.attrInt("reverse", 0))))
	}},
	"Trilu": {grad: func(e *emitter, n *node) []string { // the same triangle of g
		in := []string{n.g()}
		if k := n.x(1); k != "" {
			in = append(in, k)
		}
		return only(n, e.b.Op("Trilu", in, onnx.AttrInt("upper", n.attrInt("upper", 1))))
	}},

	// Linear algebra.
	"MatMul": {grad: matMulGrad},
	"Gemm":   {grad: gemmGrad},

	// Reductions.
	"ReduceSum":  {grad: reduceGrad},
	"ReduceMean": {grad: reduceGrad},
	"ReduceMax":  {grad: reduceGrad},
	"ReduceMin":  {grad: reduceGrad},
	"TopK":       {types: firstAnd(onnx.Int64)}, // values, indices

	// Shape and layout: the gradient is g moved back.
	"Reshape":   {grad: func(e *emitter, n *node) []string { return only(n, e.like(n.g(), n.x(0))) }},
	"Flatten":   {grad: func(e *emitter, n *node) []string { return only(n, e.like(n.g(), n.x(0))) }},
	"Squeeze":   {grad: func(e *emitter, n *node) []string { return only(n, e.like(n.g(), n.x(0))) }},
	"Unsqueeze": {grad: func(e *emitter, n *node) []string { return only(n, e.like(n.g(), n.x(0))) }},
	"Transpose": {grad: func(e *emitter, n *node) []string {
		perm, ok := n.attrInts("perm")
		if !ok {
			perm = arange(e.rank(n.x(0)))
			slices.Reverse(perm)
		}
		return []string{e.b.Transpose(n.g(), inversePerm(perm))}
	}},
	"Expand": {grad: func(e *emitter, n *node) []string { return only(n, e.unb(n, n.g(), 0)) }},
	"Tile":   {grad: tileGrad},
	"Concat": {grad: concatGrad},
	"Split":  {grad: splitGrad},
	"Slice":  {grad: sliceGrad},

	// Indexing: scatter-add g back (ScatterND's and ScatterElements'
	// reduction needs opset 16).
	"Gather":          {grad: gatherGrad, opset: 16},
	"GatherElements":  {grad: gatherElementsGrad, opset: 16},
	"ScatterElements": {grad: scatterElementsGrad},

	// No gradient: shape and index logic.
	"Shape":           {noGrad: true, types: fixed(onnx.Int64)},
	"Size":            {noGrad: true, types: fixed(onnx.Int64)},
	"NonZero":         {noGrad: true, types: fixed(onnx.Int64)},
	"ArgMax":          {noGrad: true, types: fixed(onnx.Int64)},
	"ArgMin":          {noGrad: true, types: fixed(onnx.Int64)},
	"Range":           {noGrad: true},
	"Constant":        {noGrad: true, types: constantTypes},
	"ConstantOfShape": {noGrad: true, types: constantOfShapeTypes},
	"EyeLike":         {noGrad: true, types: attrType("dtype", input(0))},
	"OneHot":          {noGrad: true, types: input(2)},
	// Comparisons and logic.
	"Equal":          {noGrad: true, types: fixed(onnx.Bool)},
	"Less":           {noGrad: true, types: fixed(onnx.Bool)},
	"LessOrEqual":    {noGrad: true, types: fixed(onnx.Bool)},
	"Greater":        {noGrad: true, types: fixed(onnx.Bool)},
	"GreaterOrEqual": {noGrad: true, types: fixed(onnx.Bool)},
	"And":            {noGrad: true, types: fixed(onnx.Bool)},
	"Or":             {noGrad: true, types: fixed(onnx.Bool)},
	"Xor":            {noGrad: true, types: fixed(onnx.Bool)},
	"Not":            {noGrad: true, types: fixed(onnx.Bool)},
	"IsNaN":          {noGrad: true, types: fixed(onnx.Bool)},
	"IsInf":          {noGrad: true, types: fixed(onnx.Bool)},
	// Rounding.
	"Floor": {noGrad: true},
	"Ceil":  {noGrad: true},
	"Round": {noGrad: true},
	"Sign":  {noGrad: true},
	// Random numbers.
	"RandomNormal":      {noGrad: true, random: true, types: attrType("dtype", fixed(onnx.Float))},
	"RandomUniform":     {noGrad: true, random: true, types: attrType("dtype", fixed(onnx.Float))},
	"RandomNormalLike":  {noGrad: true, random: true, types: attrType("dtype", input(0))},
	"RandomUniformLike": {noGrad: true, random: true, types: attrType("dtype", input(0))},
	"Bernoulli":         {noGrad: true, random: true, types: attrType("dtype", fixed(onnx.Float))},
	"Multinomial":       {noGrad: true, random: true, types: attrType("dtype", fixed(onnx.Int32))},
}

// unb reduces g, of the shape of n's first output, to the shape of input i.
func (e *emitter) unb(n *node, g string, i int) string {
	if n.x(i) == "" {
		return ""
	}
	return e.sumTo(g, e.dims(n.y(0)), n.x(i))
}

// powGrad: y = x^p. dx = g * p * x^(p-1); dp = g * y * log(x).
func powGrad(e *emitter, n *node) []string {
	x, p, g := n.x(0), n.x(1), n.g()
	var dx string
	if c, ok := e.floatConst(p); ok {
		switch c {
		case 1:
			dx = g
		case 2:
			dx = e.b.Mul(g, e.b.Mul(x, e.scalar(2, x)))
		default:
			dx = e.b.Mul(g, e.b.Mul(e.b.Pow(x, e.scalar(c-1, x)), e.scalar(c, x)))
		}
	} else {
		pc := p
		if e.dtype(p) != e.dtype(x) {
			pc = e.b.Cast(p, e.dtype(x))
		}
		dx = e.b.Mul(g, e.b.Mul(pc, e.b.Pow(x, e.b.Sub(pc, e.scalar(1, x)))))
	}
	out := []string{e.unb(n, dx, 0), ""}
	if e.dtype(p).IsFloat() {
		if _, isConst := e.consts[p]; !isConst {
			out[1] = e.unb(n, e.b.Mul(g, e.b.Mul(n.y(0), e.b.Log(x))), 1)
		}
	}
	return out
}

// minMaxGrad: y = max(x_0, ...) (or min). Each x_i equal to y gets g, split
// evenly between ties as PyTorch does.
func minMaxGrad(e *emitter, n *node) []string {
	if len(n.Input) == 1 {
		return only(n, n.g())
	}
	y := n.y(0)
	masks := make([]string, len(n.Input))
	for i, x := range n.Input {
		masks[i] = e.b.Cast(e.b.Equal(x, y), e.dtype(y))
	}
	share := e.b.Div(n.g(), e.b.Sum(masks...))
	out := make([]string, len(n.Input))
	for i := range n.Input {
		out[i] = e.unb(n, e.b.Mul(share, masks[i]), i)
	}
	return out
}

// clipGrad: y = min(max(x, lo), hi). dx = g where lo <= x <= hi; the bounds
// get g where they bind.
func clipGrad(e *emitter, n *node) []string {
	x, lo, hi, g := n.x(0), n.x(1), n.x(2), n.g()
	zero := e.scalar(0, x)
	var in string
	if lo != "" {
		in = e.b.Op("GreaterOrEqual", []string{x, lo})
	}
	if hi != "" {
		le := e.b.Op("LessOrEqual", []string{x, hi})
		if in == "" {
			in = le
		} else {
			in = e.b.Op("And", []string{in, le})
		}
	}
	if in == "" {
		return only(n, g)
	}
	out := only(n, e.b.Where(in, g, zero))
	if lo != "" {
		out[1] = e.unb(n, e.b.Where(e.b.Less(x, lo), g, zero), 1)
	}
	if hi != "" {
		out[2] = e.unb(n, e.b.Where(e.b.Greater(x, hi), g, zero), 2)
	}
	return out
}

// whereGrad: y = c ? a : b. da = g where c, db = g where not c.
func whereGrad(e *emitter, n *node) []string {
	c, g := n.x(0), n.g()
	zero := e.scalar(0, n.y(0))
	return []string{"", e.unb(n, e.b.Where(c, g, zero), 1), e.unb(n, e.b.Where(c, zero, g), 2)}
}

// matMulGrad: Y = A @ B (numpy semantics). dA = G @ Bᵀ, dB = Aᵀ @ G, each
// summed over the batch axes its operand was broadcast along. A 2-D weight
// under a batched A gets one GEMM over the flattened batch: dB = Aᵀ @ G with
// A as [batch·M, K] and G as [batch·M, N].
func matMulGrad(e *emitter, n *node) []string {
	a, b, g := n.x(0), n.x(1), n.g()
	ra, rb := e.rank(a), e.rank(b)
	dt := e.dtype(n.y(0))
	if ra == 1 && rb == 1 { // dot product: g is a scalar
		return []string{e.b.Mul(g, b), e.b.Mul(g, a)}
	}
	ys, as, bs := e.dims(n.y(0)), e.dims(a), e.dims(b)
	// View 1-D operands as matrices, [K] as [1, K] for A and [K, 1] for B,
	// and g accordingly.
	a2, b2, g2 := a, b, g
	if ra == 1 {
		a2, g2 = e.b.Unsqueeze(a, []int64{0}), e.b.Unsqueeze(g, []int64{int64(len(ys.a) - 1)})
		ys = mapDims(func(s ...[]int64) []int64 { return slices.Insert(slices.Clone(s[0]), len(s[0])-1, 1) }, ys)
		as = mapDims(func(s ...[]int64) []int64 { return []int64{1, s[0][0]} }, as)
	}
	if rb == 1 {
		b2, g2 = e.b.Unsqueeze(b, []int64{1}), e.b.Unsqueeze(g2, []int64{int64(len(ys.a))})
		ys = mapDims(func(s ...[]int64) []int64 { return append(slices.Clone(s[0]), 1) }, ys)
		bs = mapDims(func(s ...[]int64) []int64 { return []int64{s[0][0], 1} }, bs)
	}
	rg := len(ys.a)
	// batch + the last two dims of the operand.
	withBatch := func(s ...[]int64) []int64 {
		return append(slices.Clone(s[0][:len(s[0])-2]), s[1][len(s[1])-2:]...)
	}
	dA := e.mm(g2, false, b2, true, dt)
	dAShape := mapDims(withBatch, ys, as)
	var dB string
	dBShape := mapDims(withBatch, ys, bs)
	if len(bs.a) == 2 && len(as.a) > 2 { // one GEMM over the flattened batch
		af := e.b.Op("Flatten", []string{a2}, onnx.AttrInt("axis", int64(len(as.a)-1)))
		gf := e.b.Op("Flatten", []string{g2}, onnx.AttrInt("axis", int64(rg-1)))
		dB, dBShape = e.mm(af, true, gf, false, dt), bs
	} else {
		dB = e.mm(a2, true, g2, false, dt)
	}
	// A 1-D operand's matrix view sums over all batch axes.
	if ra == 1 {
		if rg > 2 {
			dA = e.b.ReduceSum(dA, arange(rg-2), false)
		}
		return []string{e.like(dA, a), e.sumTo(dB, dBShape, b)}
	}
	if rb == 1 {
		if len(dBShape.a) > 2 {
			dB = e.b.ReduceSum(dB, arange(len(dBShape.a)-2), false)
		}
		return []string{e.sumTo(dA, dAShape, a), e.like(dB, b)}
	}
	return []string{e.sumTo(dA, dAShape, a), e.sumTo(dB, dBShape, b)}
}

// gemmGrad: Y = α·op(A)·op(B) + β·C. With tA, tB the transposition flags:
// dA = α·(tA ? op(B)·Gᵀ : G·op(B)ᵀ), dB = α·(tB ? Gᵀ·op(A) : op(A)ᵀ·G),
// dC = β·sumTo(G); each product is one Gemm with the right flags.
func gemmGrad(e *emitter, n *node) []string {
	a, b, c, g := n.x(0), n.x(1), n.x(2), n.g()
	alpha, beta := n.attrFloat("alpha", 1), n.attrFloat("beta", 1)
	tA, tB := n.attrInt("transA", 0), n.attrInt("transB", 0)
	gemm := func(x, y string, tx, ty int64) string {
		return e.b.Op("Gemm", []string{x, y}, onnx.AttrFloat("alpha", float32(alpha)),
			onnx.AttrInt("transA", tx), onnx.AttrInt("transB", ty))
	}
	var dA, dB string
	if tA == 0 {
		dA = gemm(g, b, 0, 1-tB)
	} else {
		dA = gemm(b, g, tB, 1)
	}
	if tB == 0 {
		dB = gemm(a, g, 1-tA, 0)
	} else {
		dB = gemm(g, a, 1, tA)
	}
	out := only(n, dA, dB)
	if c != "" {
		gc := g
		if beta != 1 {
			gc = e.b.Mul(g, e.scalar(beta, n.y(0)))
		}
		out[2] = e.unb(n, gc, 2)
	}
	return out
}

// reduceAxes returns the reduced axes of a Reduce* node (normalised,
// sorted), whether it keeps them, and false when the node reduces nothing
// (empty axes with noop_with_empty_axes).
func reduceAxes(e *emitter, n *node) (axes []int64, keep bool, reduces bool) {
	r := e.rank(n.x(0))
	if a, ok := n.attrInts("axes"); ok {
		axes = slices.Clone(a)
	} else if n.x(1) != "" {
		axes = e.ints(n.x(1))
	}
	if len(axes) == 0 {
		if n.attrInt("noop_with_empty_axes", 0) != 0 {
			return nil, true, false
		}
		axes = arange(r)
	}
	for i := range axes {
		axes[i] = axis(axes[i], r)
	}
	slices.Sort(axes)
	return axes, n.attrInt("keepdims", 1) != 0, true
}

// reduceGrad: ReduceSum spreads g over the reduced axes; ReduceMean also
// divides by their size; ReduceMax/Min give g to the extreme entries, split
// evenly between ties (as PyTorch's amax/amin).
func reduceGrad(e *emitter, n *node) []string {
	x, y, g := n.x(0), n.y(0), n.g()
	axes, keep, reduces := reduceAxes(e, n)
	if !reduces {
		return only(n, g)
	}
	if !keep {
		g = e.b.Unsqueeze(g, axes)
		y = e.b.Unsqueeze(y, axes)
	}
	switch n.GetOpType() {
	case "ReduceSum":
		return only(n, e.b.Expand(g, e.shapeOf(x)))
	case "ReduceMean":
		return only(n, e.b.Expand(e.b.Div(g, e.count(x, axes, y)), e.shapeOf(x)))
	}
	mask := e.b.Cast(e.b.Equal(x, y), e.dtype(x))
	return only(n, e.b.Mul(mask, e.b.Div(g, e.b.ReduceSum(mask, axes, true))))
}

// layerNormGrad: Y = (X - μ)·σ⁻¹·scale + bias over the axes from `axis` on,
// with optional outputs Mean = μ and InvStdDev = σ⁻¹. With x̂ = (X - μ)σ⁻¹ and
// gs = gY·scale: dX = σ⁻¹·(gs - mean(gs) - x̂·mean(gs·x̂)) + gMean/N
// - gInv·σ⁻³·(X - μ)/N; dScale = sumTo(gY·x̂); dBias = sumTo(gY).
// In float32 the forward node is made to output μ and σ⁻¹ for reuse.
func layerNormGrad(e *emitter, n *node) []string {
	b := e.b
	x, scale := n.x(0), n.x(1)
	r := e.rank(x)
	ax := axis(n.attrInt("axis", -1), r)
	axes := arange(r)[ax:]
	mean := func(v string) string { return b.ReduceMean(v, axes, true) }
	var mu, inv string
	if e.dtype(x) == onnx.Float && n.attrInt("stash_type", 1) == 1 {
		mu, inv = e.forwardOutput(n, 1, "mean"), e.forwardOutput(n, 2, "inv_std_dev")
	} else {
		mu = mean(x)
		eps := e.scalar(n.attrFloat("epsilon", 1e-5), x)
		inv = b.Op("Reciprocal", []string{b.Sqrt(b.Add(mean(b.Mul(b.Sub(x, mu), b.Sub(x, mu))), eps))})
	}
	xc := b.Sub(x, mu)
	xhat := b.Mul(xc, inv)
	// Without a gradient of Y, those of scale and bias are zero.
	out := only(n)
	for i := 1; i < len(out); i++ {
		out[i] = zeroGrad
	}
	var dx []string
	if gy := n.gy[0]; gy != "" {
		ys := e.dims(n.y(0))
		gs := b.Mul(gy, scale)
		dx = append(dx, b.Mul(inv, b.Sub(b.Sub(gs, mean(gs)), b.Mul(xhat, mean(b.Mul(gs, xhat))))))
		out[1] = e.sumTo(b.Mul(gy, xhat), ys, scale)
		if bias := n.x(2); bias != "" {
			out[2] = e.sumTo(gy, ys, bias)
		}
	}
	gm, gi := "", ""
	if len(n.gy) > 1 {
		gm = n.gy[1]
	}
	if len(n.gy) > 2 {
		gi = n.gy[2]
	}
	if gm != "" || gi != "" {
		dt := e.dtype(x)
		count := e.count(x, axes, mu)
		if gm != "" {
			dx = append(dx, b.Expand(b.Div(b.Cast(gm, dt), count), e.shapeOf(x)))
		}
		if gi != "" {
			inv3 := b.Mul(inv, b.Mul(inv, inv))
			dx = append(dx, b.Neg(b.Div(b.Mul(b.Mul(b.Cast(gi, dt), inv3), xc), count)))
		}
	}
	if len(dx) > 0 {
		out[0] = e.sum(dx)
	}
	return out
}

// forwardOutput returns the name of output i of the forward node n,
// giving the node that output (named after base) if it has none yet.
func (e *emitter) forwardOutput(n *node, i int, base string) string {
	for len(n.Output) <= i {
		n.Output = append(n.Output, "")
	}
	if n.Output[i] == "" {
		n.Output[i] = e.b.Name(base)
	}
	return n.Output[i]
}

// tileGrad: Y = tile(X, repeats). View g as [r0, d0, r1, d1, ...] and sum
// over the repeat axes.
func tileGrad(e *emitter, n *node) []string {
	b := e.b
	x, reps := n.x(0), n.x(1)
	r := e.rank(x)
	pairs := b.Concat(1, b.Unsqueeze(reps, []int64{1}), b.Unsqueeze(e.shapeOf(x), []int64{1}))
	view := b.Reshape(n.g(), b.Reshape(pairs, b.ConstInt64s([]int64{-1})))
	even := make([]int64, r)
	for i := range even {
		even[i] = int64(2 * i)
	}
	return only(n, b.ReduceSum(view, even, false))
}

// concatGrad: split g back into the inputs' sizes along the axis.
func concatGrad(e *emitter, n *node) []string {
	b := e.b
	a := axis(n.attrInt("axis", 0), e.rank(n.x(0)))
	sizes := make([]string, len(n.Input))
	for i, x := range n.Input {
		sizes[i] = b.Slice(e.shapeOf(x), []int64{a}, []int64{a + 1}, nil, nil)
	}
	return b.OpN("Split", []string{n.g(), b.Concat(0, sizes...)}, len(n.Input), onnx.AttrInt("axis", a))
}

// splitGrad: concatenate the outputs' gradients, zeros for those without.
func splitGrad(e *emitter, n *node) []string {
	a := axis(n.attrInt("axis", 0), e.rank(n.x(0)))
	parts := make([]string, len(n.Output))
	for i, y := range n.Output {
		parts[i] = n.gy[i]
		if parts[i] == "" {
			parts[i] = e.zeros(e.b.Shape(y), e.dtype(y))
		}
	}
	return only(n, e.b.Concat(a, parts...))
}

// sliceGrad: put g back where the slice took it from, zeros elsewhere.
// With unit steps that is one Pad whose pads come from the clamped starts;
// other steps scatter g along each sliced axis in turn.
func sliceGrad(e *emitter, n *node) []string {
	b := e.b
	x, starts, ends, g := n.x(0), e.int64Value(n.x(1)), e.int64Value(n.x(2)), n.g()
	r := e.rank(x)
	var axes []int64
	if n.x(3) != "" {
		axes = e.ints(n.x(3))
	} else {
		axes = arange(int(e.shape(n.x(1))[0]))
	}
	for i := range axes {
		axes[i] = axis(axes[i], r)
	}
	unit := n.x(4) == ""
	if !unit {
		if _, isConst := e.consts[n.x(4)]; isConst {
			unit = !slices.ContainsFunc(e.ints(n.x(4)), func(s int64) bool { return s != 1 })
		}
	}
	if unit {
		ax := b.ConstInt64s(axes)
		dims := b.Gather(e.shapeOf(x), ax, 0)
		zero := b.ConstInt64s([]int64{0})
		s := b.Where(b.Less(starts, zero), b.Add(starts, dims), starts)
		s = b.Min(b.Max(s, zero), dims)
		after := b.Sub(b.Sub(dims, s), b.Gather(b.Shape(g), ax, 0))
		at := slices.Clone(axes)
		for _, a := range axes {
			at = append(at, a+int64(r))
		}
		pads := b.Op("ScatterElements", []string{b.ConstInt64s(make([]int64, 2*r)), b.ConstInt64s(at), b.Concat(0, s, after)}, onnx.AttrInt("axis", 0))
		return only(n, b.Op("Pad", []string{g, pads, e.scalar(0, x)}))
	}
	steps := e.int64Value(n.x(4))
	cur := g
	for k := len(axes) - 1; k >= 0; k-- {
		a := axes[k]
		one := func(v string) string { return b.Slice(v, []int64{int64(k)}, []int64{int64(k + 1)}, nil, nil) }
		dim := b.Slice(e.shapeOf(x), []int64{a}, []int64{a + 1}, nil, nil)
		positions := b.Op("Range", []string{b.ConstScalarInt64(0), b.Squeeze(dim, []int64{0}), b.ConstScalarInt64(1)})
		idx := b.Op("Slice", []string{positions, one(starts), one(ends), b.ConstInt64s([]int64{0}), one(steps)})
		cur = e.scatterAxis(cur, r, a, idx, dim, e.dtype(x), "")
	}
	return only(n, cur)
}

// scatterAxis writes the slices of cur (rank r) along axis a into zeros
// whose axis a has size dim (a [1] value), at positions idx (1-D), with
// ScatterND's reduction ("" for none, or "add").
func (e *emitter) scatterAxis(cur string, r int, a int64, idx, dim string, dt onnx.DataType, reduction string) string {
	b := e.b
	perm := append([]int64{a}, slices.Delete(arange(r), int(a), int(a)+1)...)
	if a != 0 {
		cur = b.Transpose(cur, perm)
	}
	shape := b.Concat(0, dim, b.Slice(b.Shape(cur), []int64{1}, []int64{math.MaxInt64}, nil, nil))
	z := e.zeros(shape, dt)
	var attrs []*onnxpb.AttributeProto
	if reduction != "" {
		attrs = append(attrs, onnx.AttrString("reduction", reduction))
	}
	out := b.Op("ScatterND", []string{z, b.Unsqueeze(idx, []int64{1}), cur}, attrs...)
	if a != 0 {
		out = b.Transpose(out, inversePerm(perm))
	}
	return out
}

// gatherGrad: Y = gather(X, idx, axis). Scatter-add g into zeros of X's
// shape at the gathered rows (ScatterND, reduction add, so repeated indices
// sum), with the gathered axis moved to the front when it is not axis 0.
func gatherGrad(e *emitter, n *node) []string {
	b := e.b
	x, g := n.x(0), n.g()
	r, q := e.rank(x), e.rank(n.x(1))
	a := axis(n.attrInt("axis", 0), r)
	idx := e.int64Value(n.x(1))
	dim := b.Gather(e.shapeOf(x), b.ConstScalarInt64(a), 0)
	idx = b.Where(b.Less(idx, b.ConstScalarInt64(0)), b.Add(idx, dim), idx)
	ind := b.Unsqueeze(idx, []int64{int64(q)})
	add := onnx.AttrString("reduction", "add")
	if a == 0 {
		return []string{b.Op("ScatterND", []string{e.zerosLike(x), ind, g}, add), ""}
	}
	rg := r - 1 + q
	permG := slices.Concat(arange(rg)[a:a+int64(q)], arange(int(a)), arange(rg)[a+int64(q):])
	gt := b.Transpose(g, permG)
	permX := slices.Concat([]int64{a}, arange(int(a)), arange(r)[a+1:])
	zt := e.zeros(b.Gather(e.shapeOf(x), b.ConstInt64s(permX), 0), e.dtype(x))
	st := b.Op("ScatterND", []string{zt, ind, gt}, add)
	return []string{b.Transpose(st, inversePerm(permX)), ""}
}

// gatherElementsGrad: scatter-add g into zeros of X's shape at idx
// (ScatterElements, reduction add).
func gatherElementsGrad(e *emitter, n *node) []string {
	x := n.x(0)
	a := axis(n.attrInt("axis", 0), e.rank(x))
	return []string{e.b.Op("ScatterElements", []string{e.zerosLike(x), e.int64Value(n.x(1)), n.g()},
		onnx.AttrInt("axis", a), onnx.AttrString("reduction", "add")), ""}
}

// scatterElementsGrad: y = scatter_add(data, idx, updates) along axis. Each element of
// data reaches y unchanged (ddata = g) and each update is added at its index
// (dupdates = gather(g, idx)). Only reduction "add" is differentiable this simply; the
// replacing scatter ("none") would need a mask for overwritten data.
func scatterElementsGrad(e *emitter, n *node) []string {
	if red := onnx.FindAttr(n.NodeProto, "reduction"); red == nil || string(red.GetS()) != "add" {
		fail("ScatterElements has a gradient rule only with reduction=\"add\"")
	}
	a := axis(n.attrInt("axis", 0), e.rank(n.x(0)))
	return []string{n.g(), "", e.b.GatherElements(n.g(), e.int64Value(n.x(1)), a)}
}

// dropoutGrad: in inference mode (no training_mode input, or a constant
// false one) Dropout is the identity.
func dropoutGrad(e *emitter, n *node) []string {
	if mode := n.x(2); mode != "" {
		t, ok := e.consts[mode]
		if !ok {
			fail("Dropout's training_mode must be a constant false")
		}
		if slices.Contains(t.GetRawData(), 1) || slices.Contains(t.GetInt32Data(), 1) {
			fail("Dropout in training mode has no gradient rule; export the model in eval mode")
		}
	}
	out := only(n, n.g())
	if n.x(1) != "" { // the ratio does not act in inference mode
		out[1] = zeroGrad
	}
	return out
}
