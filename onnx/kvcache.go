package onnx

import (
	"fmt"
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
		if shapeReaders, ok := shapeSources(g, between, below, producers, tensor); ok {
			chain.Points = append(chain.Points, KVPoint{Tensor: tensor, Reader: reader, ShapeReaders: shapeReaders})
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

// shapeSources checks that every non-data input of the layout nodes in between is
// computed from constants and from Shape nodes reading tensors in allowed only, and
// returns the Shape nodes that read point itself.
func shapeSources(g *onnxpb.GraphProto, between []*onnxpb.NodeProto, allowed []string, producers map[string]*onnxpb.NodeProto, point string) ([]*onnxpb.NodeProto, bool) {
	var readers []*onnxpb.NodeProto
	visited := map[string]bool{}
	var visit func(name string) bool
	visit = func(name string) bool {
		if name == "" || visited[name] {
			return true
		}
		visited[name] = true
		p := producers[name]
		if p == nil {
			// A graph input would tie the shape to the fed tensors; an initializer is fine.
			return Initializer(g, name) != nil
		}
		switch p.GetOpType() {
		case "Constant":
			return true
		case "Shape":
			src := p.GetInput()[0]
			if !slices.Contains(allowed, src) {
				// The shape of a value computed from allowed sources (a shape tensor
				// itself) is fine too.
				return visit(src)
			}
			if src == point && !slices.Contains(readers, p) {
				readers = append(readers, p)
			}
			return true
		}
		for _, in := range p.GetInput() {
			if !visit(in) {
				return false
			}
		}
		return true
	}
	for _, n := range between {
		for _, in := range n.GetInput()[1:] {
			if !visit(in) {
				return nil, false
			}
		}
	}
	return readers, true
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

// AddPositionIDs gives a graph that computes its positions as Range(0, sequence) — GPT-2
// exported without position_ids: Gather(wpe, Range(...)) then Unsqueeze(axes 0) to
// broadcast over the batch — an int64 [batch, sequence] input name that feeds the
// position-embedding Gather instead, so positions can differ by row and start after a
// past. It reports whether it found the pattern.
func AddPositionIDs(g *onnxpb.GraphProto, name string) (bool, error) {
	producers := Producers(g)
	consumers := Consumers(g)
	type site struct{ gather, unsq *onnxpb.NodeProto }
	var sites []site
	for _, r := range g.GetNode() {
		if r.GetOpType() != "Range" || !isConstValue(g, producers, r.GetInput()[0], 0) || !isConstValue(g, producers, r.GetInput()[2], 1) {
			continue
		}
		for _, ga := range consumers[r.GetOutput()[0]] {
			if ga.GetOpType() != "Gather" || len(ga.GetInput()) != 2 || ga.GetInput()[1] != r.GetOutput()[0] {
				continue
			}
			if a := FindAttr(ga, "axis"); a != nil && a.GetI() != 0 {
				continue
			}
			w := Initializer(g, ga.GetInput()[0])
			if w == nil || len(w.GetDims()) != 2 {
				continue
			}
			users := consumers[ga.GetOutput()[0]]
			if len(users) != 1 || users[0].GetOpType() != "Unsqueeze" {
				continue
			}
			if axes, ok := unsqueezeAxes(g, producers, users[0]); !ok || !slices.Equal(axes, []int64{0}) {
				continue
			}
			sites = append(sites, site{ga, users[0]})
		}
	}
	if len(sites) == 0 {
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
	return true, nil
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
