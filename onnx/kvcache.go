package onnx

import (
	"fmt"
	"math"
	"slices"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx/onnxpb"
)

// KV-cache surgery: derive, from a causal LM exported without a cache, a graph that takes
// past keys/values as inputs and returns them with the new tokens' keys/values appended,
// so that generation can run one token at a time. The recognised pattern is the one
// torch.onnx.export writes for eager attention (GPT-2, Llama and the other HF decoders):
//
//	scores  = MatMul(Q, Kᵀ)          (then Div/Mul/Add/Where/Cast)
//	probs   = Softmax(scores)          (then Cast/Dropout/Identity)
//	context = MatMul(probs, V)
//
// where Kᵀ and V reach their MatMul from the projections through layout ops only
// (Transpose, Reshape, Expand, Unsqueeze, Squeeze: the head split, rotary output, GQA's
// repeat_kv). The past is concatenated at the highest tensor of that chain from which the
// layout ops still work on a longer sequence: every Reshape/Expand shape below it must be
// computed from constants and the shapes of the chain's own tensors. Which axis of that
// tensor is the sequence (and which the batch) is not known statically; callers find it by
// running the graph (see KVChain.Points and the pipeline's probe).

// layoutOps move data without computing on it; a past can be concatenated above them.
var layoutOps = map[string]bool{"Transpose": true, "Reshape": true, "Expand": true, "Unsqueeze": true, "Squeeze": true}

// AttentionLayer is one recognised attention: the MatMul computing Q·Kᵀ and the one
// computing probs·V, with the candidate concatenation points of K and V.
type AttentionLayer struct {
	Scores, Context *onnxpb.NodeProto
	Key, Value      KVChain
}

// KVChain lists the tensors on the path from a K or V producer down to its attention
// MatMul where a past could be concatenated, nearest the MatMul first; the last one is the
// highest (preferred: before GQA's head repetition, the smallest cache).
type KVChain struct {
	Points []KVPoint
}

// KVPoint is a tensor where a past can be concatenated. Reader is the node on the path
// that reads Tensor (its edge is rewired to the concatenation); ShapeReaders are the Shape
// nodes reading Tensor whose values size the layout ops below it (rewired too, so that they
// see the longer sequence).
type KVPoint struct {
	Tensor       string
	Reader       *onnxpb.NodeProto
	ShapeReaders []*onnxpb.NodeProto
	// Between are the layout nodes from Tensor down to the attention MatMul.
	Between []*onnxpb.NodeProto
	// Extend says that some of their shape operands are computed from the shapes of other
	// activations (the new tokens' count, as in a head repeat reshaped to (batch, heads,
	// q_len, head_dim)): valid once those are extended to the past (ShapeUses).
	Extend bool
}

// FindAttention returns g's attention layers in graph order. It finds nothing in a graph
// whose attention is fused (com.microsoft.Attention, ScaledDotProductAttention, ...).
func FindAttention(g *onnxpb.GraphProto) []AttentionLayer {
	producers := Producers(g)
	consumers := Consumers(g)
	isConst := func(name string) bool {
		if Initializer(g, name) != nil {
			return true
		}
		p := producers[name]
		return p != nil && p.GetOpType() == "Constant"
	}
	var layers []AttentionLayer
	seen := map[*onnxpb.NodeProto]bool{}
	for _, sm := range g.GetNode() {
		if sm.GetOpType() != "Softmax" || len(sm.GetInput()) != 1 {
			continue
		}
		scores := findScoresMatMul(sm.GetInput()[0], producers, isConst, 8)
		ctx := findContextMatMul(sm.GetOutput()[0], consumers, 4)
		if scores == nil || ctx == nil || seen[scores] || seen[ctx] {
			continue
		}
		k := kvChain(g, scores, 1, producers)
		v := kvChain(g, ctx, 1, producers)
		if len(k.Points) == 0 || len(v.Points) == 0 {
			continue
		}
		seen[scores], seen[ctx] = true, true
		layers = append(layers, AttentionLayer{Scores: scores, Context: ctx, Key: k, Value: v})
	}
	return layers
}

// findScoresMatMul walks up from a softmax input through the element-wise ops that scale
// and mask attention scores to the MatMul that computed them.
func findScoresMatMul(name string, producers map[string]*onnxpb.NodeProto, isConst func(string) bool, depth int) *onnxpb.NodeProto {
	if depth == 0 {
		return nil
	}
	n := producers[name]
	if n == nil {
		return nil
	}
	switch n.GetOpType() {
	case "MatMul":
		return n
	case "Div", "Mul", "Add", "Sub", "Cast", "Identity":
		for _, in := range n.GetInput() {
			if in == "" || isConst(in) {
				continue
			}
			if m := findScoresMatMul(in, producers, isConst, depth-1); m != nil {
				return m
			}
		}
	case "Where":
		if len(n.GetInput()) == 3 {
			for _, in := range n.GetInput()[1:] {
				if isConst(in) {
					continue
				}
				if m := findScoresMatMul(in, producers, isConst, depth-1); m != nil {
					return m
				}
			}
		}
	}
	return nil
}

// findContextMatMul walks down from a softmax output to the MatMul that reads the
// probabilities as its first input.
func findContextMatMul(name string, consumers map[string][]*onnxpb.NodeProto, depth int) *onnxpb.NodeProto {
	if depth == 0 {
		return nil
	}
	for _, c := range consumers[name] {
		switch c.GetOpType() {
		case "MatMul":
			if len(c.GetInput()) == 2 && c.GetInput()[0] == name {
				return c
			}
		case "Cast", "Identity", "Dropout":
			if m := findContextMatMul(c.GetOutput()[0], consumers, depth-1); m != nil {
				return m
			}
		}
	}
	return nil
}

// kvChain collects the concatenation points above input idx of the attention MatMul mm.
func kvChain(g *onnxpb.GraphProto, mm *onnxpb.NodeProto, idx int, producers map[string]*onnxpb.NodeProto) KVChain {
	var chain KVChain
	tensor, reader := mm.GetInput()[idx], mm
	var below []string              // chain tensors at or below the current point
	var between []*onnxpb.NodeProto // layout nodes between the current point and mm
	for step := 0; step < 16; step++ {
		if tensor == "" || producers[tensor] == nil {
			break // an initializer or a graph input: no projection above
		}
		below = append(below, tensor)
		// A point can be invalid while a higher one is valid again: GQA's repeat_kv sizes
		// its Expand and Reshape from the shape of the rotated keys above them.
		if shapeReaders, extend, ok := shapeSources(g, between, below, producers, tensor); ok {
			chain.Points = append(chain.Points, KVPoint{Tensor: tensor, Reader: reader, ShapeReaders: shapeReaders,
				Between: slices.Clone(between), Extend: extend})
		}
		p := producers[tensor]
		if p == nil || !layoutOps[p.GetOpType()] || len(p.GetInput()) == 0 {
			break
		}
		between = append(between, p)
		tensor, reader = p.GetInput()[0], p
	}
	return chain
}

// Kinds of a layout node's shape operand, for shapeSources.
const (
	operandPure   = iota // constants and shapes of the chain's own tensors at or below the point
	operandExtend        // also shapes of other activations: right once extended to the past
	operandValues        // computed from the values of graph inputs: no past can go above it
)

// shapeSources classifies the non-data inputs of the layout nodes in between: computed
// from constants and from Shape nodes reading tensors in allowed only (the Shape nodes
// that read point itself are returned; they are rewired to see the longer sequence), or
// also from the shapes of other activations (extend: the operands must be computed for
// the whole sequence, see KVPoint.ShapeUses). ok is false when an operand depends on the
// values of a graph input.
func shapeSources(g *onnxpb.GraphProto, between []*onnxpb.NodeProto, allowed []string, producers map[string]*onnxpb.NodeProto, point string) (readers []*onnxpb.NodeProto, extend, ok bool) {
	memo := map[string]int{}
	var kind func(name string) int
	kind = func(name string) int {
		if name == "" {
			return operandPure
		}
		if k, ok := memo[name]; ok {
			return k
		}
		k := operandPure
		switch p := producers[name]; {
		case p == nil:
			// A graph input would tie the shape to the fed tensors; an initializer is fine.
			if Initializer(g, name) == nil {
				k = operandValues
			}
		case p.GetOpType() == "Constant":
		case p.GetOpType() == "Shape":
			src := p.GetInput()[0]
			switch {
			case slices.Contains(allowed, src):
				if src == point && !slices.Contains(readers, p) {
					readers = append(readers, p)
				}
			case kind(src) != operandPure:
				// The shape of a value computed from allowed sources (a shape tensor
				// itself) is pure; any other shape is known once extended to the past.
				k = operandExtend
			}
		default:
			for _, in := range p.GetInput() {
				k = max(k, kind(in))
			}
		}
		memo[name] = k
		return k
	}
	worst := operandPure
	for _, n := range between {
		for _, in := range n.GetInput()[1:] {
			worst = max(worst, kind(in))
		}
	}
	if worst == operandValues {
		return nil, false, false
	}
	return readers, worst == operandExtend, true
}

// ShapeUses returns the shape operands of the layout nodes between p and its attention
// MatMul that depend on the shapes of activations other than the chain's (Extend): with
// a past, the tensors there hold the whole sequence, so these operands must be computed
// for it (ExtendMasksToPast extends them, keeping them whole).
func (p KVPoint) ShapeUses(g *onnxpb.GraphProto) []KVMaskUse {
	if !p.Extend {
		return nil
	}
	producers := Producers(g)
	var uses []KVMaskUse
	for _, n := range p.Between {
		for i, in := range n.GetInput() {
			if i == 0 || in == "" || Initializer(g, in) != nil {
				continue
			}
			if c := producers[in]; c != nil && c.GetOpType() == "Constant" {
				continue
			}
			uses = append(uses, KVMaskUse{Node: n, Input: i, Tensor: in, Layout: true, Axis: -1})
		}
	}
	return uses
}

// KVCacheSpec asks AddKVCache to concatenate a past at one point.
type KVCacheSpec struct {
	Point KVPoint
	// Axis is the sequence axis of Point.Tensor (non-negative).
	Axis int64
	// Past and Present name the new graph input and output.
	Past, Present string
	// ElemType and Rank type them; their dimensions are left symbolic.
	ElemType DataType
	Rank     int
}

// AddKVCache makes g take a past for every spec: input Past is concatenated with the
// spec's tensor along Axis, the result replaces the tensor on the attention path (and in
// the Shape nodes that size it), and is exposed as output Present. With an empty past
// (a zero-length sequence axis) the graph computes what it did before.
func AddKVCache(g *onnxpb.GraphProto, opset int64, specs []KVCacheSpec) error {
	b := NewBuilder(g, opset, "ortalign_kv")
	for _, s := range specs {
		dims := make([]Dim, s.Rank)
		for i := range dims {
			dims[i] = DimParam(fmt.Sprintf("%s_dim%d", s.Past, i))
		}
		if err := AddInput(g, s.Past, s.ElemType, dims); err != nil {
			return err
		}
		cat := b.Concat(s.Axis, s.Past, s.Point.Tensor)
		rewire(s.Point.Reader, s.Point.Tensor, cat)
		for _, r := range s.Point.ShapeReaders {
			rewire(r, s.Point.Tensor, cat)
		}
		g.Node = append(g.Node, &onnxpb.NodeProto{
			Name: proto.String(s.Present + "_identity"), OpType: proto.String("Identity"),
			Input: []string{cat}, Output: []string{s.Present},
		})
		if err := AddOutput(g, s.Present, s.ElemType, dims); err != nil {
			return err
		}
	}
	return TopologicalSort(g)
}

func rewire(n *onnxpb.NodeProto, from, to string) {
	for i, in := range n.Input {
		if in == from {
			n.Input[i] = to
		}
	}
}

// AddPositionIDs gives a graph that computes its positions as Range(0, sequence) an int64
// [batch, sequence] input name fed in their place, so that positions can differ by row
// (left padding) and start after a past. It recognises two forms and reports whether it
// found one:
//
//   - GPT-2 exported without position_ids: Gather(wpe, Range(...)) then Unsqueeze(axes 0)
//     to broadcast over the batch; the Gather reads the input instead;
//   - transformers' position_ids = arange(...).unsqueeze(0), where the [1, sequence]
//     positions reach only position embeddings (the indices of a Gather on a table) or
//     rotary embeddings (Cos, Sin), not a comparison that builds a mask; the input
//     replaces the Unsqueeze's output.
func AddPositionIDs(g *onnxpb.GraphProto, name string) (bool, error) {
	producers := Producers(g)
	consumers := Consumers(g)
	type site struct{ gather, unsq *onnxpb.NodeProto }
	var sites []site
	var unsqs []*onnxpb.NodeProto
	for _, r := range g.GetNode() {
		if r.GetOpType() != "Range" || !isConstValue(g, producers, r.GetInput()[0], 0) || !isConstValue(g, producers, r.GetInput()[2], 1) {
			continue
		}
		for _, c := range consumers[r.GetOutput()[0]] {
			if c.GetOpType() == "Unsqueeze" && c.GetInput()[0] == r.GetOutput()[0] {
				if axes, ok := unsqueezeAxes(g, producers, c); ok && slices.Equal(axes, []int64{0}) && positionsOnly(g, consumers, c.GetOutput()[0]) {
					unsqs = append(unsqs, c)
				}
				continue
			}
			if c.GetOpType() != "Gather" || len(c.GetInput()) != 2 || c.GetInput()[1] != r.GetOutput()[0] {
				continue
			}
			if a := FindAttr(c, "axis"); a != nil && a.GetI() != 0 {
				continue
			}
			w := Initializer(g, c.GetInput()[0])
			if w == nil || len(w.GetDims()) != 2 {
				continue
			}
			users := consumers[c.GetOutput()[0]]
			if len(users) != 1 || users[0].GetOpType() != "Unsqueeze" {
				continue
			}
			if axes, ok := unsqueezeAxes(g, producers, users[0]); !ok || !slices.Equal(axes, []int64{0}) {
				continue
			}
			sites = append(sites, site{c, users[0]})
		}
	}
	if len(sites) == 0 && len(unsqs) == 0 {
		return false, nil
	}
	if err := AddInput(g, name, Int64, []Dim{DimParam("batch"), DimParam("sequence")}); err != nil {
		return false, err
	}
	for _, s := range sites {
		s.gather.Input[1] = name
		// [batch, seq, width] already broadcasts like the [1, seq, width] it replaces.
		s.unsq.OpType = proto.String("Identity")
		s.unsq.Input = s.unsq.Input[:1]
		s.unsq.Attribute = nil
	}
	for _, u := range unsqs {
		// [batch, seq] broadcasts like the [1, seq] it replaces.
		u.OpType = proto.String("Identity")
		u.Input = []string{name}
		u.Attribute = nil
	}
	return true, nil
}

// positionsOnly says whether the values computed from v reach a position-embedding Gather
// (as its indices, on an initializer table) or a Cos/Sin, and no comparison before them.
func positionsOnly(g *onnxpb.GraphProto, consumers map[string][]*onnxpb.NodeProto, v string) bool {
	found := false
	seen := map[string]bool{v: true}
	queue := []string{v}
	for steps := 0; len(queue) > 0 && steps < 64; steps++ {
		x := queue[0]
		queue = queue[1:]
		for _, c := range consumers[x] {
			switch op := c.GetOpType(); {
			case op == "Less" || op == "LessOrEqual" || op == "Greater" || op == "GreaterOrEqual" || op == "Equal":
				return false
			case op == "Cos" || op == "Sin":
				found = true
				continue
			case op == "Gather" && len(c.GetInput()) == 2 && c.GetInput()[1] == x && Initializer(g, c.GetInput()[0]) != nil:
				found = true
				continue
			case op == "Shape" || op == "Size":
				continue // the shape carries no positions
			}
			for _, o := range c.GetOutput() {
				if o != "" && !seen[o] {
					seen[o] = true
					queue = append(queue, o)
				}
			}
		}
	}
	return found && len(queue) == 0
}

func unsqueezeAxes(g *onnxpb.GraphProto, producers map[string]*onnxpb.NodeProto, n *onnxpb.NodeProto) ([]int64, bool) {
	if a := FindAttr(n, "axes"); a != nil {
		return a.GetInts(), true
	}
	if len(n.GetInput()) < 2 {
		return nil, false
	}
	return constInt64s(g, producers, n.GetInput()[1])
}

func constInt64s(g *onnxpb.GraphProto, producers map[string]*onnxpb.NodeProto, name string) ([]int64, bool) {
	var t *onnxpb.TensorProto
	if t = Initializer(g, name); t == nil {
		p := producers[name]
		if p == nil || p.GetOpType() != "Constant" {
			return nil, false
		}
		a := FindAttr(p, "value")
		if a == nil {
			return nil, false
		}
		t = a.GetT()
	}
	v, err := TensorInt64s(t)
	return v, err == nil
}

func isConstValue(g *onnxpb.GraphProto, producers map[string]*onnxpb.NodeProto, name string, want int64) bool {
	v, ok := constInt64s(g, producers, name)
	if ok && len(v) == 1 && v[0] == want {
		return true
	}
	// Float or int32 constants: compare as floats.
	var t *onnxpb.TensorProto
	if t = Initializer(g, name); t == nil {
		if p := producers[name]; p != nil && p.GetOpType() == "Constant" {
			if a := FindAttr(p, "value"); a != nil {
				t = a.GetT()
			}
		}
	}
	if t == nil {
		return false
	}
	if f, err := TensorFloats(t); err == nil && len(f) == 1 {
		return f[0] == float32(want)
	}
	return false
}

// Masks and positions with a past.
//
// Without a past, an export computes its masks and positions from the sequence length of
// the new tokens (the Shape of input_ids or of a hidden state) and from attention_mask:
// causal masks of [q, q], GPT-2's bias sliced [k-q:k, :k], rotary tables sliced to the key
// length, cache_position = arange(q), ... With a past of length P the decoding step needs
// them for q queries at positions P..P+q-1 over P+q keys. Rather than recognising each way
// of writing a mask, the surgery below recomputes every such value as if the whole
// sequence (past and new tokens, the length of attention_mask) were fed — the "full"
// computation, a copy of the nodes between the sequence lengths and the place where the
// value meets the activations — and keeps its last q entries along the query axis there.
// What the whole sequence's run computes for its last q queries is, by causality, what
// the step needs. The values involved:
//
//   - activations: values computed from the token ids (or a past): embeddings, hidden
//     states, keys, scores. Their shapes may feed the masks (Shape nodes: "shape reads").
//   - sequence-dependent values: not activations, computed from attention_mask or from a
//     shape read. Where one enters an activation node as data (not as a shape, axes or
//     bounds operand) is a "mask use": the value is replaced there by its full copy,
//     sliced to the last q queries.
//   - position_ids (when fed) hold the new tokens' positions; a full copy that needs them
//     gets the whole sequence's (cumsum(attention_mask) - 1, 1 at padding, for the past,
//     then the fed ones).

// KVMaskUse is a place where a sequence-dependent value enters an activation node as data.
type KVMaskUse struct {
	Node *onnxpb.NodeProto
	// Input is the index of Tensor among Node's inputs.
	Input  int
	Tensor string
	// Scores says that Node computes on attention scores or probabilities, whose last two
	// axes are the queries and the keys.
	Scores bool
	// Layout says that Tensor is a shape operand of a layout node on a key or value chain
	// below the past (KVPoint.ShapeUses): it is extended and kept whole.
	Layout bool
	// Axis is Tensor's query axis, whose last q entries the decoding step keeps; -1 keeps
	// the whole tensor. Callers set it from a probe (MaskUseAxis).
	Axis int
}

// String names the use for notices: the node, its op and the value.
func (u KVMaskUse) String() string {
	kind := "activations"
	switch {
	case u.Scores:
		kind = "attention scores"
	case u.Layout:
		kind = "the shape of keys or values with the past"
	}
	return fmt.Sprintf("%s node %q input %d (%s, on %s)", u.Node.GetOpType(), u.Node.GetName(), u.Input, u.Tensor, kind)
}

// KVMasks is what ExtendMasksToPast rewrites: the mask uses, and the shape reads their
// values are computed from.
type KVMasks struct {
	Uses []KVMaskUse
	// ShapeReads are the outputs of Shape nodes reading activations that the uses' values
	// depend on.
	ShapeReads []string
	// SeqEntries marks, for each shape read, the entries that are sequence lengths (set by
	// the caller from a probe, SeqEntries).
	SeqEntries map[string][]bool
}

// shapeOperand says which inputs of an op are shapes, axes or bounds rather than data: a
// sequence-dependent value there sizes the activations it applies to and stays as it is.
func shapeOperand(op string, i int) bool {
	switch op {
	case "Reshape", "Expand", "Tile", "Unsqueeze", "Squeeze", "Split", "TopK", "OneHot", "CumSum", "Trilu",
		"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
		"ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare":
		return i == 1
	case "Slice", "Resize":
		return i >= 1
	case "Pad":
		return i == 1 || i == 3
	case "ConstantOfShape", "Range":
		return true
	}
	return false
}

// seqDeps classifies g's values for the mask surgery.
type seqDeps struct {
	producers map[string]*onnxpb.NodeProto
	act       map[string]bool // computed from the token ids or a past
	seq       map[string]bool // not act; computed from the attention mask or a shape read
	pos       map[string]bool // not act; computed from the fed positions
}

// analyseSeq walks g in order (nodes must be sorted). Every graph input other than mask
// and positions (and initializers listed as inputs) is an activation.
func analyseSeq(g *onnxpb.GraphProto, mask, positions string) seqDeps {
	d := seqDeps{producers: Producers(g), act: map[string]bool{}, seq: map[string]bool{}, pos: map[string]bool{}}
	for _, in := range g.GetInput() {
		name := in.GetName()
		switch {
		case name == mask:
			d.seq[name] = true
		case name == positions && positions != "":
			d.pos[name] = true
		case Initializer(g, name) == nil:
			d.act[name] = true
		}
	}
	for _, n := range g.GetNode() {
		ins := NodeInputs(n)
		isShape := n.GetOpType() == "Shape" || n.GetOpType() == "Size"
		act, seq, pos := false, false, false
		for _, in := range ins {
			act = act || d.act[in]
			seq = seq || d.seq[in]
			pos = pos || d.pos[in]
		}
		if isShape {
			seq, act = seq || act, false
		}
		for _, o := range n.GetOutput() {
			switch {
			case act:
				d.act[o] = true
			default:
				d.seq[o], d.pos[o] = seq, pos
			}
		}
	}
	return d
}

// FindMaskUses finds where sequence-dependent values enter g's activations, given its
// attention layers, its attention-mask input and its position input ("" if none). It
// fails, naming the node, on a dependence the surgery cannot extend: a Size of an
// activation, or a subgraph between a length and a mask.
func FindMaskUses(g *onnxpb.GraphProto, layers []AttentionLayer, mask, positions string) (KVMasks, error) {
	d := analyseSeq(g, mask, positions)
	// Values on the way from a scores MatMul to its context MatMul.
	scores := map[string]bool{}
	context := map[*onnxpb.NodeProto]bool{}
	for _, l := range layers {
		scores[l.Scores.GetOutput()[0]] = true
		context[l.Context] = true
	}
	var masks KVMasks
	for _, n := range g.GetNode() {
		if context[n] || n.GetOpType() == "Shape" || n.GetOpType() == "Size" {
			continue
		}
		onScores := false
		for _, in := range n.GetInput() {
			onScores = onScores || scores[in]
		}
		if onScores {
			for _, o := range n.GetOutput() {
				scores[o] = true
			}
		}
		if len(n.GetOutput()) == 0 || !d.act[n.GetOutput()[0]] {
			continue
		}
		for i, in := range n.GetInput() {
			if in == "" || d.act[in] || !d.seq[in] || shapeOperand(n.GetOpType(), i) {
				continue
			}
			masks.Uses = append(masks.Uses, KVMaskUse{Node: n, Input: i, Tensor: in, Scores: onScores, Axis: -1})
		}
	}
	if err := masks.addShapeReads(d, masks.Uses); err != nil {
		return KVMasks{}, err
	}
	return masks, nil
}

// AddShapeReads adds to m.ShapeReads those the values of uses depend on (the uses of
// KVPoint.ShapeUses, say), for g with the given attention-mask and position inputs.
func (m *KVMasks) AddShapeReads(g *onnxpb.GraphProto, uses []KVMaskUse, mask, positions string) error {
	return m.addShapeReads(analyseSeq(g, mask, positions), uses)
}

func (m *KVMasks) addShapeReads(d seqDeps, uses []KVMaskUse) error {
	seen := map[string]bool{}
	for _, r := range m.ShapeReads {
		seen[r] = true
	}
	var walk func(name string) error
	walk = func(name string) error {
		if seen[name] || !d.seq[name] {
			return nil
		}
		seen[name] = true
		p := d.producers[name]
		if p == nil {
			return nil
		}
		switch op := p.GetOpType(); {
		case (op == "Shape" || op == "Size") && d.act[p.GetInput()[0]]:
			if op == "Size" {
				return fmt.Errorf("Size node %q reads activation %q: a mask built from an element count cannot be extended to a past", p.GetName(), p.GetInput()[0])
			}
			m.ShapeReads = append(m.ShapeReads, name)
			return nil
		case hasSubgraph(p):
			return fmt.Errorf("%s node %q computes %q inside a subgraph: masks built there cannot be extended to a past", op, p.GetName(), name)
		}
		for _, in := range p.GetInput() {
			if err := walk(in); err != nil {
				return err
			}
		}
		return nil
	}
	for _, u := range uses {
		if err := walk(u.Tensor); err != nil {
			return fmt.Errorf("mask used at %s: %w", u, err)
		}
	}
	return nil
}

func hasSubgraph(n *onnxpb.NodeProto) bool {
	for _, a := range n.GetAttribute() {
		if a.G != nil || len(a.Graphs) > 0 {
			return true
		}
	}
	return false
}

// SeqEntries returns which entries of a shape read are sequence lengths, from its values
// in two probe runs with sequence lengths seqA and seqB (which must differ, and differ from
// every other dimension of the probe).
func SeqEntries(a, b []int64, seqA, seqB int64) []bool {
	out := make([]bool, len(a))
	for i := range a {
		out[i] = i < len(b) && a[i] == seqA && b[i] == seqB
	}
	return out
}

// MaskUseAxis returns the query axis of u's value from its shapes in two probe runs with
// sequence lengths seqA and seqB (-1: no query axis, keep it whole). On attention scores
// the value broadcasts against [..., query, key], so a sequence axis must be one of its
// last two; on other activations it may have one sequence axis, the tokens'.
func MaskUseAxis(u KVMaskUse, a, b []int64, seqA, seqB int64) (int, error) {
	if len(a) != len(b) {
		return 0, fmt.Errorf("mask used at %s: its rank changes with the input (%v, %v)", u, a, b)
	}
	var seq []int
	for i := range a {
		if a[i] == seqA && b[i] == seqB {
			seq = append(seq, i)
		}
	}
	r := len(a)
	if u.Scores {
		axis := -1
		for _, s := range seq {
			switch s {
			case r - 2:
				axis = s
			case r - 1: // the keys: all of the past and the new tokens, as the full run's
			default:
				return 0, fmt.Errorf("mask used at %s: shape %v has a sequence axis (%d) that is neither the query (%d) nor the key axis (%d) of the scores", u, a, s, r-2, r-1)
			}
		}
		return axis, nil
	}
	switch len(seq) {
	case 0:
		return -1, nil
	case 1:
		return seq[0], nil
	}
	return 0, fmt.Errorf("mask used at %s: shape %v has %d sequence axes %v; outside the attention scores one (the tokens') is expected", u, a, len(seq), seq)
}

// ExtendMasksToPast rewrites g, whose inputs are mask (attention_mask over the past and
// the new tokens), query (the new tokens, [batch, q]) and positions (their positions, or
// ""), so that at every use of masks a value is computed for the whole sequence and the
// last q entries of its query axis are taken (see the comment above KVMaskUse). Uses and
// shape reads must come from FindMaskUses on g, with Axis and SeqEntries set.
func ExtendMasksToPast(g *onnxpb.GraphProto, opset int64, masks KVMasks, mask, query, positions string) error {
	if len(masks.Uses) == 0 {
		return nil
	}
	d := analyseSeq(g, mask, positions)
	b := NewBuilder(g, opset, "ortalign_kvmask")
	one := b.ConstInt64s([]int64{1})
	total := b.Gather(b.Shape(mask), one, 0) // [1]: past + new tokens
	q := b.Gather(b.Shape(query), one, 0)    // [1]: new tokens
	fullPos := ""
	positionsFull := func() (string, error) {
		if fullPos != "" {
			return fullPos, nil
		}
		dt, _, ok := TensorType(Input(g, positions))
		if !ok {
			return "", fmt.Errorf("input %q has no tensor type", positions)
		}
		m := b.Cast(mask, Int64)
		cum := b.Sub(b.Op("CumSum", []string{m, b.ConstScalarInt64(1)}), b.ConstScalarInt64(1))
		synth := b.Where(b.Equal(m, b.ConstScalarInt64(0)), b.ConstScalarInt64(1), cum)
		past := b.Op("Slice", []string{synth, b.ConstInt64s([]int64{0}), b.Sub(total, q), one})
		if dt != Int64 {
			past = b.Cast(past, dt)
		}
		fullPos = b.Concat(1, past, positions)
		return fullPos, nil
	}
	memo := map[string]string{}
	var full func(name string) (string, error)
	full = func(name string) (string, error) {
		if v, ok := memo[name]; ok {
			return v, nil
		}
		if name == "" || name == mask || (!d.seq[name] && !d.pos[name]) {
			return name, nil
		}
		if name == positions {
			return positionsFull()
		}
		p := d.producers[name]
		if p == nil {
			return name, nil
		}
		if op := p.GetOpType(); op == "Shape" && d.act[p.GetInput()[0]] {
			entries, ok := masks.SeqEntries[name]
			if !ok {
				return "", fmt.Errorf("shape read %q (node %q) was not probed", name, p.GetName())
			}
			if !slices.Contains(entries, true) {
				memo[name] = name
				return name, nil
			}
			v := b.Where(b.Const(BoolTensor("", []int64{int64(len(entries))}, entries)), total, name)
			memo[name] = v
			return v, nil
		}
		if hasSubgraph(p) || p.GetOpType() == "Size" {
			return "", fmt.Errorf("%s node %q: cannot extend %q to a past", p.GetOpType(), p.GetName(), name)
		}
		c := proto.Clone(p).(*onnxpb.NodeProto)
		c.Name = proto.String(b.Name(p.GetOpType()))
		for i, in := range c.Input {
			v, err := full(in)
			if err != nil {
				return "", err
			}
			c.Input[i] = v
		}
		for i, o := range c.Output {
			if o == "" {
				continue
			}
			c.Output[i] = b.Name(p.GetOpType() + "_full")
			memo[o] = c.Output[i]
		}
		g.Node = append(g.Node, c)
		return memo[name], nil
	}
	for _, u := range masks.Uses {
		v, err := full(u.Tensor)
		if err != nil {
			return fmt.Errorf("mask used at %s: %w", u, err)
		}
		if u.Axis >= 0 {
			v = b.Op("Slice", []string{v, b.Neg(q), b.ConstInt64s([]int64{math.MaxInt64}), b.ConstInt64s([]int64{int64(u.Axis)})})
		}
		u.Node.Input[u.Input] = v
	}
	return TopologicalSort(g)
}
