package onnx

import (
	"cmp"
	"slices"

	"ortalign/onnx/onnxpb"
)

// ModelSummary is an overview of a model for display (ortalign inspect).
type ModelSummary struct {
	IRVersion       int64
	ProducerName    string
	ProducerVersion string
	GraphName       string
	// Opsets are the imported operator sets, sorted by domain ("" first).
	Opsets []OpsetImport
	// Inputs are the main graph's inputs that are not initializers.
	Inputs []ValueSummary
	// Outputs are the main graph's outputs.
	Outputs []ValueSummary
	// Initializers is the number of initializers of the main graph.
	Initializers int
	// ParamCount is the total number of elements of floating-point
	// initializers of the main graph.
	ParamCount int64
	// ParamBytes is the size of the data of all initializers of the main
	// graph, where the type has a fixed size.
	ParamBytes int64
	// Nodes is the number of nodes, subgraphs included.
	Nodes int
	// OpHistogram counts nodes by operator, subgraphs included. Operators
	// of domains other than the default are keyed "domain:OpType".
	OpHistogram map[string]int
}

// OpsetImport is one imported operator set.
type OpsetImport struct {
	Domain  string
	Version int64
}

// ValueSummary describes a graph input or output.
type ValueSummary struct {
	Name string
	// ElemType is the element type of a tensor value; Undefined when the
	// value has no tensor type.
	ElemType DataType
	// Dims is the shape; nil when the rank is unknown.
	Dims []Dim
	// Type is the kind of a non-tensor value ("sequence", "map",
	// "optional", "sparse_tensor"), empty for tensors and untyped values.
	Type string
}

// Summary describes m: versions, inputs and outputs, parameters and the
// operators it uses.
func Summary(m *Model) ModelSummary {
	p := m.Proto()
	g := p.GetGraph()
	s := ModelSummary{
		IRVersion:       p.GetIrVersion(),
		ProducerName:    p.GetProducerName(),
		ProducerVersion: p.GetProducerVersion(),
		GraphName:       g.GetName(),
		Initializers:    len(g.GetInitializer()),
		OpHistogram:     map[string]int{},
	}
	for _, o := range p.GetOpsetImport() {
		s.Opsets = append(s.Opsets, OpsetImport{Domain: o.GetDomain(), Version: o.GetVersion()})
	}
	slices.SortFunc(s.Opsets, func(a, b OpsetImport) int { return cmp.Compare(a.Domain, b.Domain) })

	inits := map[string]bool{}
	for _, t := range g.GetInitializer() {
		inits[t.GetName()] = true
		dt := DataType(t.GetDataType())
		n, err := NumElements(t)
		if err != nil {
			continue
		}
		if dt.IsFloat() {
			s.ParamCount += n
		}
		if size, err := dt.RawSize(n); err == nil {
			s.ParamBytes += size
		}
	}
	for _, vi := range g.GetInput() {
		if !inits[vi.GetName()] {
			s.Inputs = append(s.Inputs, valueSummary(vi))
		}
	}
	for _, vi := range g.GetOutput() {
		s.Outputs = append(s.Outputs, valueSummary(vi))
	}
	forEachGraph(g, func(g *onnxpb.GraphProto) {
		for _, n := range g.Node {
			s.Nodes++
			s.OpHistogram[opKey(n)]++
		}
	})
	return s
}

// opKey is an operator's histogram key: OpType, or domain:OpType outside
// the default domain.
func opKey(n *onnxpb.NodeProto) string {
	if d := n.GetDomain(); d != "" && d != "ai.onnx" {
		return d + ":" + n.GetOpType()
	}
	return n.GetOpType()
}

func valueSummary(vi *onnxpb.ValueInfoProto) ValueSummary {
	v := ValueSummary{Name: vi.GetName()}
	if et, dims, ok := TensorType(vi); ok {
		v.ElemType, v.Dims = et, dims
		return v
	}
	switch vi.GetType().GetValue().(type) {
	case *onnxpb.TypeProto_SequenceType:
		v.Type = "sequence"
	case *onnxpb.TypeProto_MapType:
		v.Type = "map"
	case *onnxpb.TypeProto_OptionalType:
		v.Type = "optional"
	case *onnxpb.TypeProto_SparseTensorType:
		v.Type = "sparse_tensor"
	}
	return v
}
