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
// repeat_kv). The past can be concatenated at any tensor of that chain from which the
// layout ops still work on a longer sequence: every Reshape/Expand shape below it is
// computed from constants and the shapes of the chain's own tensors, or from the shapes of
// other activations (the new tokens' count), which ExtendMasksToPast then computes for the
// whole sequence (KVPoint.Extend). Which axis of that tensor is the sequence (and which the
// batch) is not known statically; callers find it by running the graph (see KVChain.Points
// and the pipeline's probe) and pick the point with the smallest cache.
//
// Masks and positions that the export computes from the new tokens' length are extended
// to the past by FindMaskUses and ExtendMasksToPast (below).

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
	t := constTensor(g, producers, name)
	if t == nil {
		return nil, false
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
	t := constTensor(g, producers, name)
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
	// Values are the sequence- and position-dependent values the uses are computed from
	// (the uses' own included). Shapes holds their shapes in a probe run and SeqAxes marks
	// their sequence axes (SeqEntries of their shapes in two runs); both are set by the
	// caller and let ExtendMasksToPast take the last q queries early.
	Values  []string
	Shapes  map[string][]int64
	SeqAxes map[string][]bool
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
// attention layers, its attention-mask input and its position input ("" if none), and the
// shape reads and values they are computed from. It fails, naming the node, on a
// dependence the surgery cannot extend: a Size of an activation, or a subgraph between a
// length and a mask.
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
	for _, v := range m.Values {
		seen[v] = true
	}
	var walk func(name string) error
	walk = func(name string) error {
		if seen[name] || !d.seq[name] && !d.pos[name] {
			return nil
		}
		seen[name] = true
		m.Values = append(m.Values, name)
		p := d.producers[name]
		if p == nil {
			return nil
		}
		switch op := p.GetOpType(); {
		case (op == "Shape" || op == "Size") && d.act[p.GetInput()[0]]:
			if op == "Size" {
				return fmt.Errorf("Size node %q reads activation %q: a mask built from an element count cannot be extended to a past", p.GetName(), p.GetInput()[0])
			}
			if !slices.Contains(m.ShapeReads, name) {
				m.ShapeReads = append(m.ShapeReads, name)
			}
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
// shape reads must come from FindMaskUses on g, with Axis and SeqEntries set; where
// Shapes and SeqAxes say what the values are, the taking of the last q queries moves up
// through the nodes that allow it (element-wise ops, Unsqueeze, Expand, Range, Trilu,
// Gather, MatMul, ...), so a mask for q new tokens over P+q keys costs q·(P+q), not
// (P+q)², per step.
func ExtendMasksToPast(g *onnxpb.GraphProto, opset int64, masks KVMasks, mask, query, positions string) error {
	if len(masks.Uses) == 0 {
		return nil
	}
	x := &maskExtender{g: g, d: analyseSeq(g, mask, positions), masks: masks, mask: mask, positions: positions,
		b: NewBuilder(g, opset, "ortalign_kvmask"), memo: map[lastKey]string{}}
	one := x.b.ConstInt64s([]int64{1})
	x.total = x.b.Gather(x.b.Shape(mask), one, 0) // [1]: past + new tokens
	x.q = x.b.Gather(x.b.Shape(query), one, 0)    // [1]: new tokens
	for _, u := range masks.Uses {
		k := 0
		if u.Axis >= 0 {
			seq, ok := masks.SeqAxes[u.Tensor]
			if !ok || u.Axis >= len(seq) {
				return fmt.Errorf("mask used at %s: its shape was not probed", u)
			}
			k = len(seq) - u.Axis
		}
		v, err := x.last(u.Tensor, k)
		if err != nil {
			return fmt.Errorf("mask used at %s: %w", u, err)
		}
		u.Node.Input[u.Input] = v
	}
	return TopologicalSort(g)
}

// lastKey names a value of the whole sequence, with (k > 0) the last q entries of its
// k-th axis from the end taken.
type lastKey struct {
	name string
	k    int
}

// maskExtender builds ExtendMasksToPast's nodes.
type maskExtender struct {
	g                      *onnxpb.GraphProto
	d                      seqDeps
	masks                  KVMasks
	mask, positions        string
	b                      *Builder
	total, q               string // [1] int64: past + new tokens, new tokens
	past, pastScalar, fpos string // built on first use
	memo                   map[lastKey]string
}

// elementwise ops broadcast their inputs against each other, aligned from the last axis:
// taking the last q entries of an output axis is taking them of the inputs' same axis.
var elementwise = map[string]bool{
	"Add": true, "Sub": true, "Mul": true, "Div": true, "Pow": true, "Mod": true, "Min": true, "Max": true,
	"Where": true, "And": true, "Or": true, "Xor": true, "Not": true, "Equal": true, "Less": true,
	"LessOrEqual": true, "Greater": true, "GreaterOrEqual": true, "Cast": true, "CastLike": true, "Neg": true,
	"Abs": true, "Sqrt": true, "Exp": true, "Log": true, "Cos": true, "Sin": true, "Sigmoid": true,
	"Tanh": true, "Relu": true, "Sign": true, "Floor": true, "Ceil": true, "Reciprocal": true,
	"Identity": true, "IsInf": true, "IsNaN": true, "BitwiseAnd": true, "BitwiseOr": true, "BitwiseNot": true,
}

// last returns name computed for the whole sequence, with the last q entries of its k-th
// axis from the end taken (k = 0: all of it). An axis that is not a sequence axis there
// (size 1, broadcast) is left as it is: the value broadcasts the same.
func (x *maskExtender) last(name string, k int) (string, error) {
	if name == "" || name == x.mask && k == 0 || (!x.d.seq[name] && !x.d.pos[name]) {
		return name, nil
	}
	if k > 0 {
		seq, ok := x.masks.SeqAxes[name]
		switch {
		case ok && (k > len(seq) || !seq[len(seq)-k]):
			k = 0
		case !ok:
			return "", fmt.Errorf("value %q: its shape was not probed", name)
		}
	}
	key := lastKey{name, k}
	if v, ok := x.memo[key]; ok {
		return v, nil
	}
	var v string
	var err error
	if k == 0 {
		v, err = x.full(name)
	} else if v, err = x.push(name, k); err == nil && v == "" {
		var whole string
		if whole, err = x.full(name); err == nil {
			v = x.sliceLast(whole, len(x.masks.SeqAxes[name])-k)
		}
	}
	if err != nil {
		return "", err
	}
	x.memo[key] = v
	return v, nil
}

// sliceLast takes the last q entries of axis of v.
func (x *maskExtender) sliceLast(v string, axis int) string {
	b := x.b
	return b.Op("Slice", []string{v, b.Neg(x.q), b.ConstInt64s([]int64{math.MaxInt64}), b.ConstInt64s([]int64{int64(axis)})})
}

// pastLen returns P = total - q as [1] and as a scalar.
func (x *maskExtender) pastLen() (string, string) {
	if x.past == "" {
		x.past = x.b.Sub(x.total, x.q)
		x.pastScalar = x.b.Squeeze(x.past, []int64{0})
	}
	return x.past, x.pastScalar
}

// full returns name computed for the whole sequence.
func (x *maskExtender) full(name string) (string, error) {
	b := x.b
	if name == x.positions {
		if x.fpos == "" {
			dt, _, ok := TensorType(Input(x.g, x.positions))
			if !ok {
				return "", fmt.Errorf("input %q has no tensor type", x.positions)
			}
			past, _ := x.pastLen()
			m := b.Cast(x.mask, Int64)
			cum := b.Sub(b.Op("CumSum", []string{m, b.ConstScalarInt64(1)}), b.ConstScalarInt64(1))
			synth := b.Where(b.Equal(m, b.ConstScalarInt64(0)), b.ConstScalarInt64(1), cum)
			pastPos := b.Op("Slice", []string{synth, b.ConstInt64s([]int64{0}), past, b.ConstInt64s([]int64{1})})
			if dt != Int64 {
				pastPos = b.Cast(pastPos, dt)
			}
			x.fpos = b.Concat(1, pastPos, x.positions)
		}
		return x.fpos, nil
	}
	p := x.d.producers[name]
	if p == nil {
		return name, nil
	}
	if op := p.GetOpType(); op == "Shape" && x.d.act[p.GetInput()[0]] {
		entries, ok := x.masks.SeqEntries[name]
		if !ok {
			return "", fmt.Errorf("shape read %q (node %q) was not probed", name, p.GetName())
		}
		if !slices.Contains(entries, true) {
			return name, nil
		}
		return b.Where(b.Const(BoolTensor("", []int64{int64(len(entries))}, entries)), x.total, name), nil
	}
	if hasSubgraph(p) || p.GetOpType() == "Size" {
		return "", fmt.Errorf("%s node %q: cannot extend %q to a past", p.GetOpType(), p.GetName(), name)
	}
	if c := x.d.producers[p.GetInput()[0]]; p.GetOpType() == "Shape" && c != nil && c.GetOpType() == "ConstantOfShape" && len(p.GetAttribute()) == 0 {
		// The shape of torch.full((T, T), v) is (T, T): no need to fill it.
		return x.last(c.GetInput()[0], 0)
	}
	ks := make([]int, len(p.GetInput()))
	return x.clone(p, name, ks)
}

// clone copies p with each input i replaced by last(input, ks[i]) and returns the copy's
// output that stands for name.
func (x *maskExtender) clone(p *onnxpb.NodeProto, name string, ks []int) (string, error) {
	c := proto.Clone(p).(*onnxpb.NodeProto)
	c.Name = proto.String(x.b.Name(p.GetOpType()))
	for i, in := range c.Input {
		v, err := x.last(in, ks[i])
		if err != nil {
			return "", err
		}
		c.Input[i] = v
	}
	out := ""
	for i, o := range c.Output {
		if o == "" {
			continue
		}
		c.Output[i] = x.b.Name(p.GetOpType() + "_ext")
		if o == name {
			out = c.Output[i]
		}
	}
	x.g.Node = append(x.g.Node, c)
	return out, nil
}

// push computes the last q entries of name's k-th axis from the end (a sequence axis)
// from its inputs' when its producer allows; "" when it does not (the caller slices the
// whole value).
func (x *maskExtender) push(name string, k int) (string, error) {
	if name == x.positions && k == 1 {
		return x.positions, nil // the fed positions are the last q of the whole sequence's
	}
	p := x.d.producers[name]
	if p == nil || len(p.GetOutput()) != 1 || hasSubgraph(p) {
		return "", nil
	}
	rank := len(x.masks.SeqAxes[name])
	axis := rank - k // the sliced output axis
	in := p.GetInput()
	ks := make([]int, len(in))
	rankOf := func(v string) (int, bool) {
		if s, ok := x.masks.SeqAxes[v]; ok {
			return len(s), true
		}
		if t := constTensor(x.g, x.d.producers, v); t != nil {
			return len(t.GetDims()), true
		}
		return 0, false
	}
	switch op := p.GetOpType(); {
	case elementwise[op]:
		for i := range ks {
			ks[i] = k
		}
		if op == "CastLike" {
			ks[1] = 0
		}
	case op == "Unsqueeze" || op == "Squeeze":
		axes, ok := x.constAxes(p)
		if !ok {
			return "", nil
		}
		inRank, ok := rankOf(in[0])
		if !ok {
			return "", nil
		}
		if op == "Unsqueeze" {
			// Output axis axis is input axis axis - (inserted axes before it).
			before := 0
			for _, a := range axes {
				if a < 0 {
					a += int64(rank)
				}
				if a == int64(axis) {
					return "", nil
				}
				if a < int64(axis) {
					before++
				}
			}
			ks[0] = inRank - (axis - before)
		} else {
			if len(axes) == 0 {
				return "", nil
			}
			// Input axis: the axis-th of those not squeezed.
			kept := -1
			for i := 0; i < inRank; i++ {
				if !slices.ContainsFunc(axes, func(a int64) bool { return a == int64(i) || a+int64(inRank) == int64(i) }) {
					kept++
					if kept == axis {
						ks[0] = inRank - i
						break
					}
				}
			}
			if ks[0] == 0 {
				return "", nil
			}
		}
	case op == "Transpose":
		perm := FindAttr(p, "perm")
		if perm == nil || len(perm.GetInts()) != rank {
			return "", nil
		}
		ks[0] = rank - int(perm.GetInts()[axis])
	case op == "Expand" || op == "ConstantOfShape":
		shape := in[len(in)-1]
		n, ok := x.masks.Shapes[shape]
		if !ok || len(n) != 1 || n[0] < int64(k) {
			return "", nil
		}
		s, err := x.last(shape, 0)
		if err != nil {
			return "", err
		}
		onehot := make([]bool, n[0])
		onehot[n[0]-int64(k)] = true
		s = x.b.Where(x.b.Const(BoolTensor("", []int64{n[0]}, onehot)), x.q, s)
		if op == "ConstantOfShape" {
			c := proto.Clone(p).(*onnxpb.NodeProto)
			c.Name = proto.String(x.b.Name(op))
			c.Input = []string{s}
			c.Output = []string{x.b.Name(op + "_ext")}
			x.g.Node = append(x.g.Node, c)
			return c.Output[0], nil
		}
		v, err := x.last(in[0], k)
		if err != nil {
			return "", err
		}
		return x.b.Expand(v, s), nil
	case op == "Range" && k == 1 && x.b.Opset() >= 15: // CastLike
		// start + P·delta, same limit and delta: the last q values.
		start, err := x.last(in[0], 0)
		if err != nil {
			return "", err
		}
		limit, err := x.last(in[1], 0)
		if err != nil {
			return "", err
		}
		delta, err := x.last(in[2], 0)
		if err != nil {
			return "", err
		}
		_, past := x.pastLen()
		start = x.b.Add(start, x.b.Mul(x.b.Op("CastLike", []string{past, start}), delta))
		return x.b.Op("Range", []string{start, limit, delta}), nil
	case op == "Trilu" && rank >= 2:
		// Rows: the last q rows of Trilu(X, d) are Trilu(those rows of X, d + P); columns:
		// Trilu(those columns, d - P); other axes: as they are.
		ks[0] = k
		if k > 2 {
			break
		}
		v, err := x.last(in[0], k)
		if err != nil {
			return "", err
		}
		diag := x.b.ConstScalarInt64(0)
		if len(in) > 1 && in[1] != "" {
			if diag, err = x.last(in[1], 0); err != nil {
				return "", err
			}
		}
		_, past := x.pastLen()
		if k == 2 {
			diag = x.b.Add(diag, past)
		} else {
			diag = x.b.Sub(diag, past)
		}
		c := proto.Clone(p).(*onnxpb.NodeProto)
		c.Name = proto.String(x.b.Name(op))
		c.Input = []string{v, diag}
		c.Output = []string{x.b.Name(op + "_ext")}
		x.g.Node = append(x.g.Node, c)
		return c.Output[0], nil
	case op == "Gather":
		dataRank, ok1 := rankOf(in[0])
		idxRank, ok2 := rankOf(in[1])
		if !ok1 || !ok2 {
			return "", nil
		}
		a := int64(0)
		if at := FindAttr(p, "axis"); at != nil {
			a = at.GetI()
		}
		if a < 0 {
			a += int64(dataRank)
		}
		switch o := int64(axis); {
		case o < a:
			ks[0] = dataRank - int(o)
		case o < a+int64(idxRank):
			ks[1] = idxRank - int(o-a)
		default:
			ks[0] = k
		}
	case op == "MatMul":
		ra, ok1 := rankOf(in[0])
		rb, ok2 := rankOf(in[1])
		if !ok1 || !ok2 || ra < 2 || rb < 2 {
			return "", nil
		}
		switch k {
		case 1:
			ks[1] = 1
		case 2:
			ks[0] = 2
		default:
			ks[0], ks[1] = k, k
		}
	case op == "Concat":
		c := FindAttr(p, "axis")
		if c == nil {
			return "", nil
		}
		ca := c.GetI()
		if ca < 0 {
			ca += int64(rank)
		}
		if ca == int64(axis) {
			return "", nil
		}
		for i := range ks {
			ks[i] = k
		}
	case op == "Slice":
		if len(in) < 4 {
			return "", nil // all leading axes: may include this one
		}
		axes, ok := constInt64s(x.g, x.d.producers, in[3])
		if !ok {
			return "", nil
		}
		j := slices.IndexFunc(axes, func(a int64) bool { return a == int64(axis) || a+int64(rank) == int64(axis) })
		if j < 0 {
			ks[0] = k
			break
		}
		if x.b.Opset() < 15 { // CastLike
			return "", nil
		}
		return x.pushSlice(p, j, axis)
	default:
		return "", nil
	}
	return x.clone(p, name, ks)
}

// pushSlice takes the last q entries of axis of the output of Slice node p, which slices
// that axis (the j-th of its axes) with step 1: they are the input's [end-q, end), end
// clamped to the axis as Slice does — GPT-2's bias[:, :, k-q:k, :k] for the new queries.
func (x *maskExtender) pushSlice(p *onnxpb.NodeProto, j, axis int) (string, error) {
	in := p.GetInput()
	if len(in) > 4 && in[4] != "" {
		steps, ok := constInt64s(x.g, x.d.producers, in[4])
		if !ok || steps[j] != 1 {
			return "", nil
		}
	}
	b := x.b
	ins := make([]string, len(in))
	for i, v := range in {
		var err error
		if ins[i], err = x.last(v, 0); err != nil {
			return "", err
		}
	}
	at := b.ConstInt64s([]int64{int64(j)})
	dim := b.Gather(b.Shape(ins[0]), b.ConstInt64s([]int64{int64(axis)}), 0)
	end := b.Cast(b.Gather(ins[2], at, 0), Int64)
	end = b.Min(b.Where(b.Less(end, b.ConstInt64s([]int64{0})), b.Add(end, dim), end), dim)
	n := int64(-1)
	if t := constTensor(x.g, x.d.producers, in[1]); t != nil && len(t.GetDims()) == 1 {
		n = t.GetDims()[0]
	} else if s, ok := x.masks.Shapes[in[1]]; ok && len(s) == 1 {
		n = s[0]
	}
	if n <= int64(j) {
		return "", nil
	}
	onehot := make([]bool, n)
	onehot[j] = true
	start := b.Op("CastLike", []string{b.Sub(end, x.q), ins[1]})
	ins[1] = b.Where(b.Const(BoolTensor("", []int64{n}, onehot)), start, ins[1])
	return b.Op("Slice", ins), nil
}

// constAxes reads the axes of an Unsqueeze or Squeeze (attribute or constant input).
func (x *maskExtender) constAxes(n *onnxpb.NodeProto) ([]int64, bool) {
	if a := FindAttr(n, "axes"); a != nil {
		return a.GetInts(), true
	}
	if len(n.GetInput()) < 2 {
		return nil, n.GetOpType() == "Squeeze"
	}
	return constInt64s(x.g, x.d.producers, n.GetInput()[1])
}

// constTensor returns the tensor of an initializer or a Constant node's value, else nil.
func constTensor(g *onnxpb.GraphProto, producers map[string]*onnxpb.NodeProto, name string) *onnxpb.TensorProto {
	if t := Initializer(g, name); t != nil {
		return t
	}
	if p := producers[name]; p != nil && p.GetOpType() == "Constant" {
		if a := FindAttr(p, "value"); a != nil {
			return a.GetT()
		}
	}
	return nil
}
