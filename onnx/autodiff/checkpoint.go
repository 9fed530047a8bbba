package autodiff

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
)

// Gradient checkpointing (Config.GradientCheckpointing).
//
// In one ONNX Runtime session a forward value stays allocated until the last
// node that reads it has run. Without checkpointing the backward pass reads
// the intermediates of every decoder layer, so all of them stay alive from
// the forward pass until the backward pass reaches their layer: the
// activation memory grows with layers × batch × sequence × width.
//
// With checkpointing, the backward of each decoder layer (a segment) reads a
// copy of the layer's forward, recomputed right before that backward from
// the layer's inputs only: the residual stream entering the layer and the
// other values made outside it (masks, rotary tables), which stay alive as
// the checkpoints, plus parameters and constants. The original intermediates
// are then read by forward nodes only and die during the forward pass. The
// rules are the same; they are applied to the layer's nodes renamed to the
// recomputed values, so the gradients are the same operators on the same
// numbers: equal to those without checkpointing.
//
// The recomputation must not run early: ONNX Runtime orders nodes by their
// data dependencies only, and its common-subexpression elimination would
// merge a copy fed by the very same values back into the original. So each
// input x of a segment's recomputation is first passed through
//
//	x' = Where(IsNaN(ReduceSum(dy)), x, x)
//
// where dy is the gradient of the segment's output, complete when the walk
// reaches the segment. x' equals x bit for bit whatever dy holds (both
// branches are x), no graph optimizer of ONNX Runtime folds it, and no valid
// order can compute it before dy: the recomputation of layer k runs after
// the backward of the layers above k, as in PyTorch's checkpoint. The cost
// is one reduction over dy and one copy of each input per layer.
//
// Segments are found from the node names torch.onnx.export writes
// ("/model/layers.3/self_attn/...", "/transformer/h.3/mlp/...") or, for the
// dynamo exporter, the node's name-scope metadata. A segment recomputes its
// nodes that depend on the graph's data inputs; nodes computed from
// parameters and constants only (constants, weight transposes) are not
// recomputed. A segment with a random operator or a subgraph is kept as it
// is. Without segments the graph is built as without checkpointing and
// Result.Notices says so.

// layerName matches the name scope of one decoder layer in a node name or
// name-scope metadata: "/model/layers.3/", "/transformer/h.11/",
// "model.layers.3.self_attn", "/gpt_neox/layers.0/", "/model/decoder/layers.1/".
var layerName = regexp.MustCompile(`^(.*?(?:^|[/.])(?:layers|layer|h|blocks|block)\.\d+)(?:[/.:]|$)`)

// scopeMetadata are node metadata keys holding the name scope of a node
// (torch.onnx.export with dynamo=True).
var scopeMetadata = []string{"pkg.torch.onnx.name_scopes", "namespace"}

// segment is a decoder layer whose forward is recomputed in the backward pass.
type segment struct {
	name string
	// nodes are the nodes recomputed, in graph order: the layer's nodes that
	// depend on the graph's data inputs.
	nodes []*onnxpb.NodeProto
	// inputs are the data-dependent values nodes read that are made outside
	// the segment (or are graph inputs): the checkpoints.
	inputs []string
	// outputs are the values of nodes read outside the segment: boundaries,
	// which the backward reads as they are.
	outputs map[string]bool
	// rename maps each value of nodes (but outputs) and each input to its
	// recomputed copy, once emitted.
	rename map[string]string
	// copies maps each node to its recomputed copy in the graph; ruled, to
	// the renamed node its rule saw.
	copies, ruled map[*onnxpb.NodeProto]*onnxpb.NodeProto
}

// checkpoints are the segments of a graph, and what Result reports.
type checkpoints struct {
	segs []*segment
	of   map[*onnxpb.NodeProto]*segment // each recomputed node's segment
	// notices say what was not checkpointed and why.
	notices []string
}

// segmentKey returns the decoder-layer scope of n, "" when it has none.
func segmentKey(n *onnxpb.NodeProto) string {
	if m := layerName.FindStringSubmatch(n.GetName()); m != nil {
		return m[1]
	}
	for _, p := range n.GetMetadataProps() {
		if !slices.Contains(scopeMetadata, p.GetKey()) {
			continue
		}
		// The innermost layer scope in the list wins: match each entry.
		var key string
		for _, part := range strings.FieldsFunc(p.GetValue(), func(r rune) bool { return strings.ContainsRune("[]',", r) }) {
			if m := layerName.FindStringSubmatch(strings.TrimSpace(part)); m != nil {
				key = m[1]
			}
		}
		if key != "" {
			return key
		}
	}
	return ""
}

// findSegments groups the nodes of g (topologically sorted) into decoder
// layers to recompute. keep lists values read outside the graph's nodes
// (loss, kept outputs); trainable, the parameters (not data).
func findSegments(g *onnxpb.GraphProto, trainable []string, keep []string) *checkpoints {
	ck := &checkpoints{of: map[*onnxpb.NodeProto]*segment{}}
	isParam := map[string]bool{}
	for _, t := range trainable {
		isParam[t] = true
	}
	// data holds the values that depend on a data input of the graph.
	data := map[string]bool{}
	for _, in := range g.GetInput() {
		if !isParam[in.GetName()] && onnx.Initializer(g, in.GetName()) == nil {
			data[in.GetName()] = true
		}
	}
	// key holds the layer of each data-dependent node ("" for none).
	key := map[*onnxpb.NodeProto]string{}
	var dataNodes []*onnxpb.NodeProto
	for _, n := range g.GetNode() {
		if !slices.ContainsFunc(onnx.NodeInputs(n), func(v string) bool { return data[v] }) {
			continue
		}
		for _, o := range n.GetOutput() {
			if o != "" {
				data[o] = true
			}
		}
		key[n] = segmentKey(n)
		dataNodes = append(dataNodes, n)
	}
	readers := map[string][]*onnxpb.NodeProto{}
	for _, n := range g.GetNode() {
		for _, v := range onnx.NodeInputs(n) {
			readers[v] = append(readers[v], n)
		}
	}
	external := map[string]bool{}
	for _, o := range g.GetOutput() {
		external[o.GetName()] = true
	}
	for _, k := range keep {
		external[k] = true
	}
	attachSideBranches(g, dataNodes, key, data, readers, external)
	byKey := map[string]*segment{}
	members := map[*segment][]*onnxpb.NodeProto{}
	for _, n := range dataNodes {
		if key[n] == "" {
			continue
		}
		s := byKey[key[n]]
		if s == nil {
			s = &segment{name: key[n]}
			byKey[key[n]] = s
			ck.segs = append(ck.segs, s)
		}
		members[s] = append(members[s], n)
	}
	if len(ck.segs) == 0 {
		ck.notices = append(ck.notices, "gradient checkpointing: no decoder layers found (no node names or name scopes with layers.N or h.N); activations are kept as without checkpointing")
		return ck
	}
	var segs []*segment
	for _, s := range ck.segs {
		nodes := members[s]
		if bad := slices.IndexFunc(nodes, unrecomputable); bad >= 0 {
			ck.notices = append(ck.notices, fmt.Sprintf("gradient checkpointing: layer %q is not recomputed: it has %s", s.name, nodeRef(nodes[bad])))
			continue
		}
		in := map[*onnxpb.NodeProto]bool{}
		made := map[string]bool{}
		for _, n := range nodes {
			in[n] = true
			for _, o := range n.GetOutput() {
				made[o] = true
			}
		}
		s.nodes, s.outputs = nodes, map[string]bool{}
		seen := map[string]bool{}
		for _, n := range nodes {
			for _, v := range n.GetInput() {
				if v != "" && data[v] && !made[v] && !seen[v] {
					seen[v] = true
					s.inputs = append(s.inputs, v)
				}
			}
			for _, o := range n.GetOutput() {
				if o == "" {
					continue
				}
				if external[o] || slices.ContainsFunc(readers[o], func(r *onnxpb.NodeProto) bool { return !in[r] }) {
					s.outputs[o] = true
				}
			}
		}
		for _, n := range nodes {
			ck.of[n] = s
		}
		segs = append(segs, s)
	}
	ck.segs = segs
	return ck
}

// attachSideBranches gives the layer of the nodes around them to the
// data-dependent nodes without one (key "") that branch off a layer and join
// it again: every data value they read comes from that layer (or such a
// node) and every node that reads their outputs belongs to it (or is such a
// node). Nodes added after export, such as LoRA adapters on a layer's
// projections, are then recomputed with the layer instead of cutting it.
func attachSideBranches(g *onnxpb.GraphProto, nodes []*onnxpb.NodeProto, key map[*onnxpb.NodeProto]string, data map[string]bool, readers map[string][]*onnxpb.NodeProto, external map[string]bool) {
	const none = "\x00"
	producer := onnx.Producers(g)
	// agree folds layer k into the running common layer c.
	agree := func(c, k string) string {
		switch {
		case c == "" || c == k:
			return k
		}
		return none
	}
	up := map[*onnxpb.NodeProto]string{}
	for _, n := range nodes {
		if key[n] != "" {
			continue
		}
		c := ""
		for _, v := range onnx.NodeInputs(n) {
			if !data[v] {
				continue
			}
			p := producer[v]
			k := none
			if p != nil {
				k = cmpOr(key[p], up[p])
			}
			c = agree(c, k)
		}
		up[n] = c
	}
	down := map[*onnxpb.NodeProto]string{}
	for i := len(nodes) - 1; i >= 0; i-- {
		n := nodes[i]
		if key[n] != "" || up[n] == "" || up[n] == none {
			continue
		}
		c := ""
		for _, o := range n.GetOutput() {
			if o == "" {
				continue
			}
			if external[o] {
				c = none
			}
			for _, r := range readers[o] {
				c = agree(c, cmpOr(key[r], down[r]))
			}
		}
		if c == up[n] {
			down[n] = c
		} else {
			down[n] = none
		}
	}
	for _, n := range nodes {
		if k := down[n]; key[n] == "" && k != "" && k != none {
			key[n] = k
		}
	}
}

// cmpOr returns a, or b when a is "" (cmp.Or for two strings; "" and none
// stay apart).
func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	if b != "" {
		return b
	}
	return "\x00"
}

// unrecomputable reports whether n cannot be recomputed: a random operator
// would give other values, a subgraph reads values the copy would not rename.
func unrecomputable(n *onnxpb.NodeProto) bool {
	if opOf(n).random {
		return true
	}
	return slices.ContainsFunc(n.GetAttribute(), func(a *onnxpb.AttributeProto) bool {
		return a.GetG() != nil || len(a.GetGraphs()) > 0
	})
}

// names returns the names of the segments whose recomputation was emitted
// (a layer no gradient flows through has none).
func (ck *checkpoints) names() []string {
	var out []string
	for _, s := range ck.segs {
		if s.rename != nil {
			out = append(out, s.name)
		}
	}
	return out
}

// recomputed returns n as its rule must see it: for a node of a checkpointed
// segment, a copy whose inputs and outputs are the recomputed values. The
// first node of a segment that the walk reaches emits the recomputation,
// made to depend on the gradients of n's outputs (gy).
func (e *emitter) recomputed(ck *checkpoints, n *node) *node {
	s := ck.of[n.NodeProto]
	if s == nil {
		return n
	}
	if s.rename == nil {
		e.recompute(s, n.gy)
	}
	c := &node{NodeProto: proto.CloneOf(n.NodeProto), gy: n.gy}
	s.ruled[n.NodeProto] = c.NodeProto
	for i, v := range c.Input {
		if r, ok := s.rename[v]; ok {
			c.Input[i] = r
		}
	}
	for i, v := range c.Output {
		if r, ok := s.rename[v]; ok {
			c.Output[i] = r
		}
	}
	if i, ok := e.index[n.NodeProto]; ok {
		e.index[c.NodeProto] = i
	}
	return c
}

// recompute appends the copy of s's nodes to the graph, fed by s's inputs
// passed through a Where that depends on the gradients gy (see the comment
// at the top of this file), and records the copies' names in s.rename.
func (e *emitter) recompute(s *segment, gy []string) {
	s.rename = map[string]string{}
	s.copies, s.ruled = map[*onnxpb.NodeProto]*onnxpb.NodeProto{}, map[*onnxpb.NodeProto]*onnxpb.NodeProto{}
	i := slices.IndexFunc(gy, func(v string) bool { return v != "" })
	if i < 0 {
		fail("no gradient reaches layer %q", s.name)
	}
	b := e.b
	cond := b.Op("IsNaN", []string{b.ReduceSum(gy[i], nil, false)})
	never := ""
	for _, x := range s.inputs {
		switch e.types[x] {
		case onnx.Bool: // ONNX Runtime's Where has no bool kernel: x or false
			if never == "" {
				never = b.Op("And", []string{cond, b.Not(cond)})
			}
			s.rename[x] = e.alias(x, b.Op("Or", []string{x, never}))
		case onnx.Float, onnx.Double, onnx.Float16, onnx.Int32, onnx.Int64, onnx.UInt8:
			s.rename[x] = e.alias(x, b.Where(cond, x, x))
		}
		// Other types are read as they are: a node fed by them alone may be
		// merged back into the forward one (as if not recomputed).
	}
	g := b.Graph()
	used := onnx.Names(g)
	for _, n := range s.nodes {
		c := proto.CloneOf(n)
		for j, v := range c.Input {
			if r, ok := s.rename[v]; ok {
				c.Input[j] = r
			}
		}
		for j, v := range c.Output {
			if v == "" {
				continue
			}
			r := uniqueIn(used, "recompute"+slashed(v))
			used[r] = true
			c.Output[j] = r
			if !s.outputs[v] {
				s.rename[v] = e.alias(v, r)
			}
		}
		name := n.GetName()
		if name == "" {
			name = n.GetOpType() + "_" + fmt.Sprint(e.index[n])
		}
		c.Name = ptr(uniqueIn(used, "recompute"+slashed(name)))
		used[c.GetName()] = true
		g.Node = append(g.Node, c)
		s.copies[n] = c
	}
}

// applied gives the recomputed copy of n the outputs that n's rule added to
// the node it saw (LayerNormalization's rule reads the Mean and InvStdDev
// outputs, adding them to the node when unused by the forward).
func (ck *checkpoints) applied(n *onnxpb.NodeProto) {
	s := ck.of[n]
	if s == nil {
		return
	}
	c, r := s.copies[n], s.ruled[n]
	for j, o := range r.GetOutput() {
		for len(c.Output) <= j {
			c.Output = append(c.Output, "")
		}
		if c.Output[j] == "" && o != "" {
			c.Output[j] = o
		}
	}
}

// alias gives the copy r of forward value v v's type and sample shapes, and
// returns r.
func (e *emitter) alias(v, r string) string {
	if t, ok := e.types[v]; ok {
		e.types[r] = t
	}
	if s, ok := e.shapes[v]; ok {
		e.shapes[r] = s
	}
	if s, ok := e.other[v]; ok && e.other != nil {
		e.other[r] = s
	}
	return r
}

func slashed(name string) string {
	if strings.HasPrefix(name, "/") {
		return name
	}
	return "/" + name
}
