package autodiff

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
	"ortalign/onnx/ort"
)

// GradPrefix starts the name of each gradient output: "grad.<param>".
const GradPrefix = "grad."

// Config says what to differentiate.
type Config struct {
	// Loss is the name of a scalar floating-point value of the forward graph
	// (usually one of its outputs). Its gradient is seeded with 1.
	Loss string
	// Trainable lists the initializers to differentiate with respect to.
	// They become graph inputs of the training model, in this order.
	Trainable []string
	// KeepOutputs lists other forward values to expose as outputs of the
	// training model (metrics such as per-sequence log-probs).
	KeepOutputs []string
	// SampleFeeds is an optional small sample of the forward graph's
	// inputs. Build runs the forward graph on it once to learn the ranks
	// and shapes of intermediate values. Without it, Build feeds zeros,
	// giving each symbolic dim a small size of its own (2, 3, 4, ...).
	// Build also runs a second, made-up sample in which every dynamic dim
	// has another size, to tell dims fixed at 1 from dynamic ones.
	SampleFeeds map[string]*ort.Tensor
	// SecondSampleFeeds is an optional second sample whose dynamic dims all
	// differ from SampleFeeds'; it tells dims fixed at 1 from dynamic dims
	// sampled at 1. Without it Build makes one of zeros, which suits graphs
	// whose dynamic dims are independent (not, say, batch = 2 × pairs).
	SecondSampleFeeds map[string]*ort.Tensor
	// Threads is ONNX Runtime's intra-op thread count for the sample run;
	// 0 means 1.
	Threads int
	// Values optionally gives float initializers' values, by name, for the
	// sample run to read instead of the initializers' own data: the
	// caller's copies of the weights it trains. A weight left unaligned in
	// a mapped model file can be fed only as a copy, and the sample run
	// would make its own (a second, for a caller that copies it anyway to
	// train it). A value whose length does not match its initializer is
	// ignored.
	Values map[string][]float32
	// StopGradient lists values of the forward graph whose gradient is not
	// propagated: the backward pass treats them as constants (PyTorch's
	// detach), whatever they are computed from. The values listed in the
	// model's metadata property StopGradientMetadata are added to them.
	StopGradient []string
	// GradientCheckpointing recomputes the forward of each decoder layer in
	// the backward pass instead of keeping its intermediate values alive
	// from the forward pass: activation memory falls from all layers'
	// intermediates to the layers' inputs plus one layer's intermediates, for
	// about one more forward pass of compute. The gradients are the same.
	// Layers are found from the node names torch.onnx.export writes
	// ("/model/layers.N/", "/transformer/h.N/"); without them nothing is
	// recomputed and Result.Notices says so. See checkpoint.go.
	GradientCheckpointing bool
}

// StopGradientMetadata is the key of a model metadata property that lists,
// comma-separated, values Build treats as constants (Config.StopGradient):
// a loss head that needs a stop-gradient records it in the graph it builds.
const StopGradientMetadata = "ortalign.autodiff.stop_gradient"

// stopGradient returns cfg.StopGradient and the values listed in m's
// StopGradientMetadata property, as a set.
func stopGradient(m *onnx.Model, cfg Config) map[string]bool {
	stop := map[string]bool{}
	for _, s := range cfg.StopGradient {
		stop[s] = true
	}
	for _, p := range m.Proto().GetMetadataProps() {
		if p.GetKey() != StopGradientMetadata {
			continue
		}
		for _, s := range strings.Split(p.GetValue(), ",") {
			if s = strings.TrimSpace(s); s != "" {
				stop[s] = true
			}
		}
	}
	return stop
}

// Result is a training model and the names a trainer needs to drive it.
type Result struct {
	// Model is the training model: forward, loss, kept outputs and
	// gradients in one graph.
	Model *onnx.Model
	// Grads maps each trainable parameter to the name of its gradient
	// output ("grad.<param>").
	Grads map[string]string
	// Manifest lists the training model's inputs and outputs.
	Manifest Manifest
	// Checkpointed names the decoder layers recomputed in the backward pass
	// (Config.GradientCheckpointing), in graph order: "/model/layers.0", ...
	Checkpointed []string
	// Notices say what gradient checkpointing could not do: no layers
	// found, a layer kept because it has a random operator.
	Notices []string
}

// NodeRef names a node of a graph.
type NodeRef struct {
	// Name is the node's name (may be empty in hand-made graphs).
	Name string `json:"name"`
	// OpType is the operator, prefixed by its domain and a colon when the
	// domain is not the default ONNX one ("com.microsoft:FusedMatMul").
	OpType string `json:"op_type"`
}

// String formats the reference as `OpType node "name"`.
func (r NodeRef) String() string { return fmt.Sprintf("%s node %q", r.OpType, r.Name) }

func nodeRef(n *onnxpb.NodeProto) NodeRef {
	return NodeRef{Name: n.GetName(), OpType: opKey(n)}
}

// opKey is the registry key of n: its op type, prefixed with the domain
// when that is not the default ONNX domain.
func opKey(n *onnxpb.NodeProto) string {
	if d := n.GetDomain(); d != "" && d != "ai.onnx" {
		return d + ":" + n.GetOpType()
	}
	return n.GetOpType()
}

// UnsupportedError reports operators on the path from a trainable parameter
// to the loss that have no gradient rule.
type UnsupportedError struct {
	// Nodes are the nodes without a rule, in graph order.
	Nodes []NodeRef
}

// Error lists the nodes and says what to do.
func (e *UnsupportedError) Error() string {
	parts := make([]string, 0, len(e.Nodes))
	for _, n := range e.Nodes {
		parts = append(parts, n.String())
	}
	return "no gradient rule for " + strings.Join(parts, ", ") +
		" (on the path from a trainable parameter to the loss; freeze the parameters before it or add a rule in onnx/autodiff)"
}

// Unsupported returns the nodes of m that lie on a path from one of the
// trainable initializers to loss and whose operator has no gradient rule,
// in graph order. It runs nothing; `ortalign inspect` lists them.
func Unsupported(m *onnx.Model, loss string, trainable []string) []NodeRef {
	if m == nil || m.Proto() == nil {
		return nil
	}
	g := m.Graph()
	types := inferTypes(g)
	p := analyze(g, types, loss, trainable, stopGradient(m, Config{}))
	var out []NodeRef
	for _, n := range p.active {
		if _, ok := gradRule(n); !ok {
			out = append(out, nodeRef(n))
		}
	}
	return out
}

// Build differentiates the forward model: it returns a new model that
// computes cfg.Loss, the cfg.KeepOutputs and the gradient of the loss with
// respect to each of cfg.Trainable. The forward model is not modified.
//
// A trainable parameter without a path to the loss, or whose paths all go
// through operators without a gradient (Shape, comparisons, ...), gets a
// zero gradient. A gradient rule that returns the wrong number of
// gradients, or none for a value that depends on a trainable parameter and
// lies on the path to the loss, is an error naming the node: no gradient is
// silently zero. Build does not panic: a malformed model is an error.
func Build(forward *onnx.Model, cfg Config) (res *Result, err error) {
	defer func() {
		// Last line of defence: the known causes of panics are checked
		// before they happen; anything else becomes an error.
		if r := recover(); r != nil {
			res, err = nil, fmt.Errorf("autodiff: internal error in autodiff: %v", r)
		}
	}()
	return build(forward, cfg)
}

// tracePhases logs the time of each phase of Build to stderr
// (ORTALIGN_AUTODIFF_TRACE=1).
var tracePhases = os.Getenv("ORTALIGN_AUTODIFF_TRACE") != ""

// phaseTimer returns a function that, when tracing, logs the time since
// its last call under the given phase name.
func phaseTimer() func(string) {
	if !tracePhases {
		return func(string) {}
	}
	last := time.Now()
	return func(name string) {
		now := time.Now()
		fmt.Fprintf(os.Stderr, "autodiff: %-22s %7.3fs\n", name, now.Sub(last).Seconds())
		last = now
	}
}

func build(forward *onnx.Model, cfg Config) (*Result, error) {
	phase := phaseTimer()
	if forward == nil || forward.Proto() == nil {
		return nil, errors.New("autodiff: nil forward model")
	}
	if forward.Proto().GetGraph() == nil {
		return nil, errors.New("autodiff: forward model has no graph")
	}
	m := forward.Clone()
	g := m.Graph()
	phase("clone")
	if opset := m.Opset(""); opset < 13 {
		return nil, fmt.Errorf("autodiff: model imports default-domain opset %d; opset 13 or later is needed", opset)
	}
	index := make(map[*onnxpb.NodeProto]int, len(g.GetNode()))
	for i, n := range g.GetNode() {
		if n == nil {
			return nil, fmt.Errorf("autodiff: node #%d of graph %q is missing", i, g.GetName())
		}
		index[n] = i
	}
	if err := checkGraph(g, index); err != nil {
		return nil, fmt.Errorf("autodiff: %w", err)
	}
	if err := onnx.TopologicalSort(g); err != nil {
		return nil, fmt.Errorf("autodiff: %w", err)
	}
	if err := checkConfig(g, cfg); err != nil {
		return nil, fmt.Errorf("autodiff: %w", err)
	}
	stop := stopGradient(m, cfg)
	if err := checkStopGradient(g, stop); err != nil {
		return nil, fmt.Errorf("autodiff: %w", err)
	}
	phase("check/sort/stop")
	types := inferTypes(g)
	phase("inferTypes")
	if !types[cfg.Loss].IsFloat() {
		return nil, fmt.Errorf("autodiff: loss %q has type %s; it must be a floating-point scalar", cfg.Loss, types[cfg.Loss])
	}
	p := analyze(g, types, cfg.Loss, cfg.Trainable, stop)
	phase("analyze")
	var missing []NodeRef
	for _, n := range p.active {
		if _, ok := gradRule(n); !ok {
			missing = append(missing, nodeRef(n))
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("autodiff: %w", &UnsupportedError{Nodes: missing})
	}

	samples, err := sampleShapes(m, p, cfg)
	phase("sampleShapes")
	shapes := samples.a
	if err != nil {
		return nil, fmt.Errorf("autodiff: learning shapes: %w", err)
	}
	if s, ok := shapes[cfg.Loss]; !ok || numel(s) != 1 {
		return nil, fmt.Errorf("autodiff: loss %q has shape %v on the sample; it must be a scalar", cfg.Loss, shapes[cfg.Loss])
	}

	// Some gradients need a later opset than the model's (scatter-add, the
	// gradient of Gather, needs 16); the forward operators of opsets 13-15
	// mean the same at 16.
	need := m.Opset("")
	for _, n := range p.active {
		need = max(need, opOf(n).opset)
	}
	if need > m.Opset("") {
		m.SetOpset("", need)
	}

	// Trainable initializers become inputs.
	params := make([]Param, 0, len(cfg.Trainable))
	for _, name := range cfg.Trainable {
		t := onnx.RemoveInitializer(g, name)
		dims := onnx.Dims(t.GetDims()...)
		if onnx.Input(g, name) == nil {
			if err := onnx.AddInput(g, name, onnx.DataType(t.GetDataType()), dims); err != nil {
				return nil, fmt.Errorf("autodiff: %w", err)
			}
		}
		params = append(params, Param{Name: name, ElemType: onnx.DataType(t.GetDataType()).String(), Dims: append([]int64{}, t.GetDims()...)})
	}

	e := &emitter{
		b:      onnx.NewBuilder(g, m.Opset(""), "grad"),
		m:      m,
		types:  types,
		shapes: shapes,
		other:  samples.b,
		consts: constValues(g),
		index:  index,
	}
	var ck *checkpoints
	if cfg.GradientCheckpointing {
		ck = findSegments(g, cfg.Trainable, append([]string{cfg.Loss}, cfg.KeepOutputs...))
	}
	phase("params/consts/segments")
	grads, err := e.backward(p, cfg, ck)
	phase("backward")
	if err != nil {
		return nil, fmt.Errorf("autodiff: %w", err)
	}

	// Outputs: loss, kept values, gradients.
	oldOutputs := map[string]*onnxpb.ValueInfoProto{}
	for _, o := range g.GetOutput() {
		oldOutputs[o.GetName()] = o
	}
	g.Output = nil
	addOut := func(name string) {
		if vi := oldOutputs[name]; vi != nil {
			g.Output = append(g.Output, vi)
			return
		}
		var dims []onnx.Dim
		if s, ok := shapes[name]; ok && name == cfg.Loss {
			dims = onnx.Dims(s...)
		}
		g.Output = append(g.Output, onnx.TensorValueInfo(name, types[name], dims))
	}
	addOut(cfg.Loss)
	for _, k := range cfg.KeepOutputs {
		if k != cfg.Loss {
			addOut(k)
		}
	}
	res := &Result{Model: m, Grads: map[string]string{}}
	if ck != nil {
		res.Checkpointed, res.Notices = ck.names(), ck.notices
	}
	used := onnx.Names(g)
	for i, name := range cfg.Trainable {
		out := uniqueIn(used, GradPrefix+name)
		used[out] = true
		g.Node = append(g.Node, &onnxpb.NodeProto{
			Name: ptr(out + "/identity"), OpType: ptr("Identity"), Input: []string{grads[name]}, Output: []string{out},
		})
		g.Output = append(g.Output, onnx.TensorValueInfo(out, types[name], onnx.Dims(params[i].Dims...)))
		params[i].Grad = out
		res.Grads[name] = out
	}
	phase("outputs")
	onnx.Prune(g, cfg.Trainable)
	phase("prune")
	res.Manifest = manifest(g, cfg, params)
	phase("manifest")
	return res, nil
}

// checkConfig validates cfg against the graph.
func checkConfig(g *onnxpb.GraphProto, cfg Config) error {
	producers := onnx.Producers(g)
	defined := func(name string) bool {
		return producers[name] != nil || onnx.Input(g, name) != nil || onnx.Initializer(g, name) != nil
	}
	if cfg.Loss == "" {
		return errors.New("no loss given")
	}
	if !defined(cfg.Loss) {
		return fmt.Errorf("loss %q is not a value of graph %q", cfg.Loss, g.GetName())
	}
	for _, k := range cfg.KeepOutputs {
		if !defined(k) {
			return fmt.Errorf("kept output %q is not a value of graph %q", k, g.GetName())
		}
	}
	if len(cfg.Trainable) == 0 {
		return errors.New("no trainable parameters given")
	}
	seen := map[string]bool{}
	for _, name := range cfg.Trainable {
		if seen[name] {
			return fmt.Errorf("trainable parameter %q listed twice", name)
		}
		seen[name] = true
		t := onnx.Initializer(g, name)
		if t == nil {
			return fmt.Errorf("trainable parameter %q is not an initializer of graph %q", name, g.GetName())
		}
		if !onnx.DataType(t.GetDataType()).IsFloat() {
			return fmt.Errorf("trainable parameter %q has type %s; only floating-point initializers can be trained", name, onnx.DataType(t.GetDataType()))
		}
	}
	return nil
}

// checkStopGradient checks that every stop-gradient value is a value of g.
func checkStopGradient(g *onnxpb.GraphProto, stop map[string]bool) error {
	if len(stop) == 0 {
		return nil
	}
	producers := onnx.Producers(g)
	names := make([]string, 0, len(stop))
	for s := range stop {
		names = append(names, s)
	}
	slices.Sort(names)
	for _, s := range names {
		if producers[s] == nil && onnx.Input(g, s) == nil && onnx.Initializer(g, s) == nil {
			return fmt.Errorf("stop-gradient value %q is not a value of graph %q", s, g.GetName())
		}
	}
	return nil
}

// checkGraph checks what the walk relies on before anything runs: every
// node writes a value, and every value a node reads is a graph input, an
// initializer or the output of a node.
func checkGraph(g *onnxpb.GraphProto, index map[*onnxpb.NodeProto]int) error {
	defined := map[string]bool{}
	for _, in := range g.GetInput() {
		defined[in.GetName()] = true
	}
	for _, t := range g.GetInitializer() {
		defined[t.GetName()] = true
	}
	for _, n := range g.GetNode() {
		if !slices.ContainsFunc(n.GetOutput(), func(o string) bool { return o != "" }) {
			return fmt.Errorf("%s of graph %q has no outputs", nodeLabel(n, index), g.GetName())
		}
		for _, o := range n.GetOutput() {
			defined[o] = true
		}
	}
	for _, n := range g.GetNode() {
		for _, in := range n.GetInput() {
			if in != "" && !defined[in] {
				return fmt.Errorf("%s of graph %q reads %q, which is not a graph input, an initializer or the output of a node", nodeLabel(n, index), g.GetName(), in)
			}
		}
	}
	return nil
}

// nodeLabel names a node in errors: its reference, and its position in the
// forward graph (index) when it has no name.
func nodeLabel(n *onnxpb.NodeProto, index map[*onnxpb.NodeProto]int) string {
	if n.GetName() == "" {
		if i, ok := index[n]; ok {
			return fmt.Sprintf("%s node #%d (unnamed)", opKey(n), i)
		}
	}
	return nodeRef(n).String()
}

// plan is the result of analysing which nodes need differentiating.
type plan struct {
	// requires holds the float values that depend on a trainable parameter.
	requires map[string]bool
	// from maps each value of requires to one trainable parameter it
	// depends on, for errors.
	from map[string]string
	// active lists, in graph order, the nodes with an output that depends on
	// a trainable parameter and on which the loss depends.
	active []*onnxpb.NodeProto
}

// analyze finds the values that need gradients and the nodes to
// differentiate.
//
// A stop-gradient value never requires a gradient and passes none back: what
// reaches the loss only through it is not differentiated.
func analyze(g *onnxpb.GraphProto, types map[string]onnx.DataType, loss string, trainable []string, stop map[string]bool) plan {
	requires, from := map[string]bool{}, map[string]string{}
	for _, t := range trainable {
		requires[t], from[t] = true, t
	}
	for _, n := range g.GetNode() {
		if n == nil || opOf(n).noGrad {
			continue
		}
		i := slices.IndexFunc(n.GetInput(), func(s string) bool { return requires[s] })
		if i < 0 {
			continue
		}
		for _, o := range n.GetOutput() {
			if o != "" && types[o].IsFloat() && !requires[o] && !stop[o] {
				requires[o], from[o] = true, from[n.GetInput()[i]]
			}
		}
	}
	reaches := map[string]bool{loss: true}
	nodes := g.GetNode()
	var active []*onnxpb.NodeProto
	for i := len(nodes) - 1; i >= 0; i-- {
		n := nodes[i]
		if n == nil {
			continue
		}
		hit, act := false, false
		for _, o := range n.GetOutput() {
			if reaches[o] && !stop[o] {
				hit = true
				act = act || requires[o]
			}
		}
		if !hit {
			continue
		}
		for _, in := range onnx.NodeInputs(n) {
			reaches[in] = true
		}
		if act {
			active = append(active, n)
		}
	}
	slices.Reverse(active)
	return plan{requires: requires, from: from, active: active}
}

func uniqueIn(used map[string]bool, name string) string {
	out := name
	for i := 1; used[out]; i++ {
		out = fmt.Sprintf("%s_%d", name, i)
	}
	return out
}

func ptr[T any](v T) *T { return &v }
