package onnx

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx/onnxpb"
)

// Dim is one dimension of a value's shape: a fixed size, a symbolic name
// (Param, e.g. "batch"), or unknown. The zero Dim is the fixed size 0; use
// DimValue, DimParam and DimUnknown to make dims.
type Dim struct {
	// Value is the fixed size when Param is empty; a negative Value means
	// the dimension is unknown.
	Value int64
	// Param is the symbolic name of the dimension, if it has one.
	Param string
}

// DimValue returns a fixed-size dimension.
func DimValue(v int64) Dim { return Dim{Value: v} }

// DimParam returns a symbolic dimension.
func DimParam(name string) Dim { return Dim{Param: name} }

// DimUnknown returns a dimension of unknown size without a name.
func DimUnknown() Dim { return Dim{Value: -1} }

// IsParam reports whether d is symbolic.
func (d Dim) IsParam() bool { return d.Param != "" }

// IsKnown reports whether d has a fixed size.
func (d Dim) IsKnown() bool { return d.Param == "" && d.Value >= 0 }

// String returns the size, the symbolic name, or "?" for an unknown dim.
func (d Dim) String() string {
	switch {
	case d.Param != "":
		return d.Param
	case d.Value < 0:
		return "?"
	}
	return strconv.FormatInt(d.Value, 10)
}

// Dims turns fixed sizes into dims.
func Dims(sizes ...int64) []Dim {
	out := make([]Dim, len(sizes))
	for i, s := range sizes {
		out[i] = DimValue(s)
	}
	return out
}

// TensorValueInfo returns a ValueInfoProto for a tensor value. dims nil
// leaves the shape out (unknown rank); an empty non-nil slice is a scalar.
// An elemType of Undefined leaves the type out entirely.
func TensorValueInfo(name string, elemType DataType, dims []Dim) *onnxpb.ValueInfoProto {
	vi := &onnxpb.ValueInfoProto{Name: proto.String(name)}
	if elemType == Undefined {
		return vi
	}
	tt := &onnxpb.TypeProto_Tensor{ElemType: proto.Int32(int32(elemType))}
	if dims != nil {
		shape := &onnxpb.TensorShapeProto{Dim: make([]*onnxpb.TensorShapeProto_Dimension, len(dims))}
		for i, d := range dims {
			pd := &onnxpb.TensorShapeProto_Dimension{}
			switch {
			case d.Param != "":
				pd.Value = &onnxpb.TensorShapeProto_Dimension_DimParam{DimParam: d.Param}
			case d.Value >= 0:
				pd.Value = &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: d.Value}
			}
			shape.Dim[i] = pd
		}
		tt.Shape = shape
	}
	vi.Type = &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{TensorType: tt}}
	return vi
}

// TensorType returns the element type and dims of a tensor-typed value.
// dims is nil when the shape (rank) is unknown. ok is false when vi has no
// tensor type.
func TensorType(vi *onnxpb.ValueInfoProto) (elemType DataType, dims []Dim, ok bool) {
	tt := vi.GetType().GetTensorType()
	if tt == nil {
		return Undefined, nil, false
	}
	if s := tt.GetShape(); s != nil {
		dims = make([]Dim, len(s.GetDim()))
		for i, d := range s.GetDim() {
			switch v := d.GetValue().(type) {
			case *onnxpb.TensorShapeProto_Dimension_DimValue:
				dims[i] = DimValue(v.DimValue)
			case *onnxpb.TensorShapeProto_Dimension_DimParam:
				dims[i] = DimParam(v.DimParam)
			default:
				dims[i] = DimUnknown()
			}
		}
	}
	return DataType(tt.GetElemType()), dims, true
}

// Initializer returns the initializer of g named name, or nil.
func Initializer(g *onnxpb.GraphProto, name string) *onnxpb.TensorProto {
	for _, t := range g.GetInitializer() {
		if t.GetName() == name {
			return t
		}
	}
	return nil
}

// AddInitializer appends t to g's initializers. t must have a name that no
// initializer of g has yet.
func AddInitializer(g *onnxpb.GraphProto, t *onnxpb.TensorProto) error {
	if t.GetName() == "" {
		return errors.New("add initializer: tensor has no name")
	}
	if Initializer(g, t.GetName()) != nil {
		return fmt.Errorf("add initializer %q: graph %q already has one of that name", t.GetName(), g.GetName())
	}
	g.Initializer = append(g.Initializer, t)
	return nil
}

// RemoveInitializer removes the initializer named name from g and returns
// it, or nil if g has none of that name. A graph input of the same name (as
// older models list initializers among the inputs) is left in place, so the
// value becomes an ordinary input.
func RemoveInitializer(g *onnxpb.GraphProto, name string) *onnxpb.TensorProto {
	for i, t := range g.GetInitializer() {
		if t.GetName() == name {
			g.Initializer = append(g.Initializer[:i], g.Initializer[i+1:]...)
			return t
		}
	}
	return nil
}

func findValueInfo(vis []*onnxpb.ValueInfoProto, name string) int {
	for i, vi := range vis {
		if vi.GetName() == name {
			return i
		}
	}
	return -1
}

// Input returns g's input named name, or nil.
func Input(g *onnxpb.GraphProto, name string) *onnxpb.ValueInfoProto {
	if i := findValueInfo(g.GetInput(), name); i >= 0 {
		return g.Input[i]
	}
	return nil
}

// Output returns g's output named name, or nil.
func Output(g *onnxpb.GraphProto, name string) *onnxpb.ValueInfoProto {
	if i := findValueInfo(g.GetOutput(), name); i >= 0 {
		return g.Output[i]
	}
	return nil
}

// AddInput appends a tensor input to g; see TensorValueInfo for elemType and
// dims. It fails if g already has an input of that name or a node produces it.
func AddInput(g *onnxpb.GraphProto, name string, elemType DataType, dims []Dim) error {
	if name == "" {
		return errors.New("add input: empty name")
	}
	if Input(g, name) != nil {
		return fmt.Errorf("add input %q: graph %q already has that input", name, g.GetName())
	}
	if n := Producers(g)[name]; n != nil {
		return fmt.Errorf("add input %q: node %q (%s) already produces it", name, n.GetName(), n.GetOpType())
	}
	g.Input = append(g.Input, TensorValueInfo(name, elemType, dims))
	return nil
}

// AddOutput appends a tensor output to g; see TensorValueInfo for elemType
// and dims. The main graph of a model needs the type of every output.
func AddOutput(g *onnxpb.GraphProto, name string, elemType DataType, dims []Dim) error {
	if name == "" {
		return errors.New("add output: empty name")
	}
	if Output(g, name) != nil {
		return fmt.Errorf("add output %q: graph %q already has that output", name, g.GetName())
	}
	g.Output = append(g.Output, TensorValueInfo(name, elemType, dims))
	return nil
}

// RemoveInput removes g's input named name and reports whether there was one.
func RemoveInput(g *onnxpb.GraphProto, name string) bool {
	if i := findValueInfo(g.GetInput(), name); i >= 0 {
		g.Input = append(g.Input[:i], g.Input[i+1:]...)
		return true
	}
	return false
}

// RemoveOutput removes g's output named name and reports whether there was one.
func RemoveOutput(g *onnxpb.GraphProto, name string) bool {
	if i := findValueInfo(g.GetOutput(), name); i >= 0 {
		g.Output = append(g.Output[:i], g.Output[i+1:]...)
		return true
	}
	return false
}

// Producers maps each value produced by a node of g (not of its subgraphs)
// to that node.
func Producers(g *onnxpb.GraphProto) map[string]*onnxpb.NodeProto {
	out := make(map[string]*onnxpb.NodeProto)
	for _, n := range g.GetNode() {
		for _, o := range n.Output {
			if o != "" {
				out[o] = n
			}
		}
	}
	return out
}

// Consumers maps each value read by a node of g to the nodes that read it,
// in graph order, each node once. A node whose subgraphs (If, Loop, Scan
// bodies) read a value of g counts as a consumer of that value.
func Consumers(g *onnxpb.GraphProto) map[string][]*onnxpb.NodeProto {
	out := make(map[string][]*onnxpb.NodeProto)
	for _, n := range g.GetNode() {
		for _, in := range NodeInputs(n) {
			out[in] = append(out[in], n)
		}
	}
	return out
}

// WalkBack visits every value that g's outputs depend on, once each, from the outputs
// back: visit gets the value and its producer (nil for inputs and initializers) and says
// whether to go on through the producer's inputs.
func WalkBack(g *onnxpb.GraphProto, visit func(value string, producer *onnxpb.NodeProto) bool) {
	producers := Producers(g)
	seen := map[string]bool{}
	var stack []string
	for _, o := range g.GetOutput() {
		stack = append(stack, o.GetName())
	}
	for len(stack) > 0 {
		v := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[v] {
			continue
		}
		seen[v] = true
		n := producers[v]
		if visit(v, n) && n != nil {
			stack = append(stack, NodeInputs(n)...)
		}
	}
}

// NodeInputs returns the distinct values n reads, in order: its inputs
// (without the empty names of omitted optional inputs) followed by the
// outer-scope values its subgraphs read (implicit inputs).
func NodeInputs(n *onnxpb.NodeProto) []string {
	seen := map[string]bool{}
	var out []string
	add := func(s string) {
		if s != "" && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	for _, in := range n.Input {
		add(in)
	}
	for _, a := range n.Attribute {
		if a.G != nil {
			for _, s := range outerReads(a.G) {
				add(s)
			}
		}
		for _, sg := range a.Graphs {
			for _, s := range outerReads(sg) {
				add(s)
			}
		}
	}
	return out
}

// outerReads returns the values g's nodes (recursively) read that g does not
// define itself: its implicit inputs from the enclosing scope.
func outerReads(g *onnxpb.GraphProto) []string {
	defined := map[string]bool{}
	for _, vi := range g.Input {
		defined[vi.GetName()] = true
	}
	for _, t := range g.Initializer {
		defined[t.GetName()] = true
	}
	for _, st := range g.SparseInitializer {
		defined[st.GetValues().GetName()] = true
	}
	for _, n := range g.Node {
		for _, o := range n.Output {
			defined[o] = true
		}
	}
	seen := map[string]bool{}
	var out []string
	for _, n := range g.Node {
		for _, in := range NodeInputs(n) {
			if !defined[in] && !seen[in] {
				seen[in] = true
				out = append(out, in)
			}
		}
	}
	for _, vi := range g.Output { // a subgraph may pass an outer value straight through
		if name := vi.GetName(); name != "" && !defined[name] && !seen[name] {
			seen[name] = true
			out = append(out, name)
		}
	}
	return out
}

// TopologicalSort reorders g's nodes so that every node comes after the
// producers of the values it reads (including values read by its
// subgraphs). Nodes that are already in order keep their relative order.
// A cycle is an error that names a node on it.
func TopologicalSort(g *onnxpb.GraphProto) error {
	nodes := g.GetNode()
	producer := make(map[string]int, len(nodes))
	for i, n := range nodes {
		for _, o := range n.Output {
			if o != "" {
				producer[o] = i
			}
		}
	}
	indeg := make([]int, len(nodes))
	users := make([][]int, len(nodes))
	for i, n := range nodes {
		for _, in := range NodeInputs(n) {
			p, ok := producer[in]
			if !ok {
				continue // graph input, initializer or outer-scope value
			}
			if p == i {
				return fmt.Errorf("topological sort of graph %q: node %q (%s) reads its own output %q", g.GetName(), nodes[i].GetName(), nodes[i].GetOpType(), in)
			}
			indeg[i]++
			users[p] = append(users[p], i)
		}
	}
	// Kahn's algorithm, always taking the ready node that came first.
	ready := &intHeap{}
	for i := range nodes {
		if indeg[i] == 0 {
			ready.push(i)
		}
	}
	order := make([]*onnxpb.NodeProto, 0, len(nodes))
	for ready.len() > 0 {
		i := ready.pop()
		order = append(order, nodes[i])
		for _, u := range users[i] {
			indeg[u]--
			if indeg[u] == 0 {
				ready.push(u)
			}
		}
	}
	if len(order) != len(nodes) {
		for i, d := range indeg {
			if d > 0 && onCycle(i, users) {
				n := nodes[i]
				return fmt.Errorf("topological sort of graph %q: node %q (%s) is on a cycle", g.GetName(), n.GetName(), n.GetOpType())
			}
		}
		return fmt.Errorf("topological sort of graph %q: graph has a cycle", g.GetName())
	}
	g.Node = order
	return nil
}

// onCycle reports whether node start can reach itself.
func onCycle(start int, users [][]int) bool {
	seen := make([]bool, len(users))
	stack := append([]int(nil), users[start]...)
	for len(stack) > 0 {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if i == start {
			return true
		}
		if seen[i] {
			continue
		}
		seen[i] = true
		stack = append(stack, users[i]...)
	}
	return false
}

// intHeap is a min-heap of node indices.
type intHeap struct{ a []int }

func (h *intHeap) len() int { return len(h.a) }

func (h *intHeap) push(v int) {
	h.a = append(h.a, v)
	for i := len(h.a) - 1; i > 0; {
		p := (i - 1) / 2
		if h.a[p] <= h.a[i] {
			break
		}
		h.a[p], h.a[i] = h.a[i], h.a[p]
		i = p
	}
}

func (h *intHeap) pop() int {
	top := h.a[0]
	last := len(h.a) - 1
	h.a[0] = h.a[last]
	h.a = h.a[:last]
	for i := 0; ; {
		l, r, m := 2*i+1, 2*i+2, i
		if l < len(h.a) && h.a[l] < h.a[m] {
			m = l
		}
		if r < len(h.a) && h.a[r] < h.a[m] {
			m = r
		}
		if m == i {
			break
		}
		h.a[m], h.a[i] = h.a[i], h.a[m]
		i = m
	}
	return top
}

// Names returns every name used in g and its subgraphs: values (inputs,
// outputs, value_info, initializers, node inputs and outputs) and node names.
func Names(g *onnxpb.GraphProto) map[string]bool {
	used := map[string]bool{}
	forEachGraph(g, func(g *onnxpb.GraphProto) {
		for _, vis := range [][]*onnxpb.ValueInfoProto{g.Input, g.Output, g.ValueInfo} {
			for _, vi := range vis {
				used[vi.GetName()] = true
			}
		}
		for _, t := range g.Initializer {
			used[t.GetName()] = true
		}
		for _, st := range g.SparseInitializer {
			used[st.GetValues().GetName()] = true
		}
		for _, n := range g.Node {
			used[n.GetName()] = true
			for _, s := range n.Input {
				used[s] = true
			}
			for _, s := range n.Output {
				used[s] = true
			}
		}
	})
	delete(used, "")
	return used
}

// UniqueName returns prefix if no value, node or initializer of g or its
// subgraphs uses it, else prefix_1, prefix_2, ... whichever is free first.
// The name is not reserved: add it to the graph before asking again.
func UniqueName(g *onnxpb.GraphProto, prefix string) string {
	return uniqueIn(Names(g), prefix)
}

func uniqueIn(used map[string]bool, prefix string) string {
	if prefix == "" {
		prefix = "v"
	}
	if !used[prefix] {
		return prefix
	}
	var sb strings.Builder
	for i := 1; ; i++ {
		sb.Reset()
		sb.WriteString(prefix)
		sb.WriteByte('_')
		sb.WriteString(strconv.Itoa(i))
		if s := sb.String(); !used[s] {
			return s
		}
	}
}

// Prune removes from g the nodes and initializers that no graph output needs, value infos
// of removed values, and graph inputs nothing reads except those in keepInputs. Nodes
// must be in topological order.
func Prune(g *onnxpb.GraphProto, keepInputs []string) {
	live := map[string]bool{}
	for _, o := range g.GetOutput() {
		live[o.GetName()] = true
	}
	nodes := g.GetNode()
	keep := make([]bool, len(nodes))
	for i := len(nodes) - 1; i >= 0; i-- {
		for _, o := range nodes[i].GetOutput() {
			if live[o] {
				keep[i] = true
			}
		}
		if keep[i] {
			for _, in := range NodeInputs(nodes[i]) {
				live[in] = true
			}
		}
	}
	var kept []*onnxpb.NodeProto
	for i, n := range nodes {
		if keep[i] {
			kept = append(kept, n)
		}
	}
	g.Node = kept
	var inits []*onnxpb.TensorProto
	for _, t := range g.GetInitializer() {
		if live[t.GetName()] {
			inits = append(inits, t)
		}
	}
	g.Initializer = inits
	var ins []*onnxpb.ValueInfoProto
	for _, in := range g.GetInput() {
		if live[in.GetName()] || slices.Contains(keepInputs, in.GetName()) {
			ins = append(ins, in)
		}
	}
	g.Input = ins
	var vis []*onnxpb.ValueInfoProto
	for _, vi := range g.GetValueInfo() {
		if live[vi.GetName()] {
			vis = append(vis, vi)
		}
	}
	g.ValueInfo = vis
}
