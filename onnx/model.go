package onnx

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"ortalign/onnx/onnxpb"
)

// MaxProtoSize is the largest serialized ModelProto protobuf can handle
// (2 GiB - 1). Larger models must keep tensor data in external files.
const MaxProtoSize = 1<<31 - 1

// maxProtoSize is MaxProtoSize; tests lower it to exercise the switch to
// external data without gigabytes of weights.
var maxProtoSize = MaxProtoSize

// Model is an ONNX model held in memory. All tensor data is in memory
// (raw_data or the typed fields); for tensors that came from an external data
// file the Model remembers where they were, so that Save can keep that
// layout.
//
// A Model is not safe for concurrent use while it is being modified or saved.
type Model struct {
	proto *onnxpb.ModelProto
	// ext records where tensors were stored outside the proto when the
	// model was last loaded or saved.
	ext map[*onnxpb.TensorProto]ExternalLocation
	// extByName is the same for named tensors, so that a tensor replaced by
	// a new TensorProto of the same name keeps its place.
	extByName map[string]ExternalLocation
	// mapped is the model file's mapping that large raw_data refers to (see
	// mmap.go); nil when the model was read or built.
	mapped []byte
}

// ExternalLocation is where a tensor's data is stored outside the model file.
type ExternalLocation struct {
	// Location is the data file's path relative to the model's directory,
	// with forward slashes, as written in the model.
	Location string
	// Offset and Length are the byte range of the tensor's data in the file.
	Offset, Length int64
	// entries are the external_data key/value pairs as the model had them,
	// so that a saved model lists the same keys in the same order.
	entries [][2]string
}

// NewModel wraps a ModelProto. The Model takes ownership of p.
func NewModel(p *onnxpb.ModelProto) *Model {
	if p == nil {
		p = &onnxpb.ModelProto{}
	}
	return &Model{proto: p}
}

// Proto returns the underlying ModelProto. Changes to it change the model.
func (m *Model) Proto() *onnxpb.ModelProto { return m.proto }

// Graph returns the model's main graph, creating an empty one if the model
// has none.
func (m *Model) Graph() *onnxpb.GraphProto {
	if m.proto.Graph == nil {
		m.proto.Graph = &onnxpb.GraphProto{}
	}
	return m.proto.Graph
}

// Opset returns the version of the operator set the model imports for
// domain, or 0 if it imports none. "" and "ai.onnx" both name the default
// ONNX domain.
func (m *Model) Opset(domain string) int64 {
	return opsetOf(m.proto.GetOpsetImport(), domain)
}

func opsetOf(imports []*onnxpb.OperatorSetIdProto, domain string) int64 {
	isDefault := func(d string) bool { return d == "" || d == "ai.onnx" }
	var v int64
	for _, o := range imports {
		if o.GetDomain() == domain || (isDefault(domain) && isDefault(o.GetDomain())) {
			v = max(v, o.GetVersion())
		}
	}
	return v
}

// SetOpset sets the imported version of domain ("" for the default domain),
// adding an import if there is none.
func (m *Model) SetOpset(domain string, version int64) {
	if domain == "ai.onnx" {
		domain = ""
	}
	for _, o := range m.proto.OpsetImport {
		d := o.GetDomain()
		if d == domain || (domain == "" && d == "ai.onnx") {
			o.Version = proto.Int64(version)
			return
		}
	}
	m.proto.OpsetImport = append(m.proto.OpsetImport, &onnxpb.OperatorSetIdProto{
		Domain: proto.String(domain), Version: proto.Int64(version),
	})
}

// ExternalLocation reports where t was stored outside the model file when the
// model was last loaded or saved (by pointer, or else by tensor name).
func (m *Model) ExternalLocation(t *onnxpb.TensorProto) (ExternalLocation, bool) {
	if loc, ok := m.ext[t]; ok {
		return loc, true
	}
	if name := t.GetName(); name != "" {
		loc, ok := m.extByName[name]
		return loc, ok
	}
	return ExternalLocation{}, false
}

// Clone returns a copy of the model, including the remembered external-data layout.
// The graph is copied deeply, but the tensors' raw data (the weights) is shared with m:
// copying hundreds of megabytes for every derived graph (training, scoring, generation)
// multiplied the peak memory. Nothing in ortalign writes into raw data — a new value
// replaces the slice (SetTensorFloats) — and callers must keep it that way. Clone only
// reads m, so clones of one model may be made at once, beside its other readers.
func (m *Model) Clone() *Model {
	cp := cloneSharingBytes(m.proto.ProtoReflect()).Interface().(*onnxpb.ModelProto)
	c := &Model{proto: cp, mapped: m.mapped}
	if len(m.ext) > 0 || len(m.extByName) > 0 {
		var orig []*onnxpb.TensorProto
		walkTensors(m.proto, func(t *onnxpb.TensorProto, _ string) error {
			orig = append(orig, t)
			return nil
		})
		i := 0
		c.ext = make(map[*onnxpb.TensorProto]ExternalLocation)
		walkTensors(c.proto, func(t *onnxpb.TensorProto, _ string) error {
			if i < len(orig) {
				if loc, ok := m.ext[orig[i]]; ok {
					c.ext[t] = loc
				}
			}
			i++
			return nil
		})
		c.extByName = make(map[string]ExternalLocation, len(m.extByName))
		for k, v := range m.extByName {
			c.extByName[k] = v
		}
	}
	return c
}

// Marshal returns the serialized model with all tensor data inline. It fails
// for models over MaxProtoSize; use Save with external data for those.
func (m *Model) Marshal() ([]byte, error) {
	if err := checkNoUnresolved(m.proto); err != nil {
		return nil, err
	}
	if n := proto.Size(m.proto); n > maxProtoSize {
		return nil, fmt.Errorf("marshal model: %d bytes exceeds the protobuf limit of %d; save with external data", n, maxProtoSize)
	}
	b, err := proto.Marshal(m.proto)
	if err != nil {
		return nil, fmt.Errorf("marshal model: %w", err)
	}
	return b, nil
}

// LoadBytes parses a serialized model that has no external data. A model
// whose tensors refer to external files is an error: use Load.
func LoadBytes(b []byte) (*Model, error) {
	p, err := parseModel(b)
	if err != nil {
		return nil, fmt.Errorf("load model bytes: %w", err)
	}
	if err := checkNoUnresolved(p); err != nil {
		return nil, fmt.Errorf("load model bytes: %w", err)
	}
	return &Model{proto: p}, nil
}

// Load reads the model at path. Tensor data stored in external files
// (data_location EXTERNAL, with location/offset/length relative to the
// model's directory) is read into raw_data, and its place is remembered so
// that Save keeps the same layout.
//
// The file is mapped into memory where supported, and the large raw_data of
// the main graph's initializers is used in place rather than copied (see
// mmap.go): the file must not be rewritten in place while the model is in use
// (Save replaces it with a new file, which is safe).
func Load(path string) (*Model, error) {
	p, mapped, err := readModelMapped(path)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", path, err)
	}
	m := &Model{proto: p, mapped: mapped}
	if err := m.resolveExternal(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("load %s: %w", path, err)
	}
	return m, nil
}

// parseModel unmarshals and sanity-checks a ModelProto. Protobuf is lenient
// about truncation at field boundaries, so the checks catch a truncated file
// that still parses: a model needs a graph and at least one opset import.
func parseModel(b []byte) (*onnxpb.ModelProto, error) {
	if len(b) == 0 {
		return nil, errors.New("empty file, not an ONNX model")
	}
	p := &onnxpb.ModelProto{}
	if err := proto.Unmarshal(b, p); err != nil {
		return nil, fmt.Errorf("not a valid ONNX model (truncated or corrupt?): %w", err)
	}
	if p.Graph == nil {
		return nil, errors.New("not a valid ONNX model (truncated or corrupt?): no graph")
	}
	if len(p.OpsetImport) == 0 {
		return nil, errors.New("not a valid ONNX model (truncated or corrupt?): no opset_import")
	}
	return p, nil
}

// checkNoUnresolved fails if a tensor's data is still in an external file.
func checkNoUnresolved(p *onnxpb.ModelProto) error {
	return walkTensors(p, func(t *onnxpb.TensorProto, where string) error {
		if t.GetDataLocation() == onnxpb.TensorProto_EXTERNAL && t.RawData == nil {
			return fmt.Errorf("%s: %w", where, errExternal)
		}
		return nil
	})
}

// cloneSharingBytes is proto.Clone, except that bytes fields share src's slices.
func cloneSharingBytes(src protoreflect.Message) protoreflect.Message {
	dst := src.New()
	src.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList():
			from, to := v.List(), dst.Mutable(fd).List()
			for i := 0; i < from.Len(); i++ {
				e := from.Get(i)
				if fd.Message() != nil {
					e = protoreflect.ValueOfMessage(cloneSharingBytes(e.Message()))
				}
				to.Append(e)
			}
		case fd.IsMap():
			to := dst.Mutable(fd).Map()
			v.Map().Range(func(k protoreflect.MapKey, e protoreflect.Value) bool {
				if fd.MapValue().Message() != nil {
					e = protoreflect.ValueOfMessage(cloneSharingBytes(e.Message()))
				}
				to.Set(k, e)
				return true
			})
		case fd.Message() != nil:
			dst.Set(fd, protoreflect.ValueOfMessage(cloneSharingBytes(v.Message())))
		default:
			dst.Set(fd, v) // scalars, strings, and bytes (shared)
		}
		return true
	})
	if u := src.GetUnknown(); len(u) > 0 {
		dst.SetUnknown(slices.Clone(u))
	}
	return dst
}

// walkTensors calls fn for every dense tensor in the model that can hold
// weights: initializers, sparse initializers' parts and tensor attributes, in
// the main graph, nested subgraphs, training graphs and function bodies. The
// order is deterministic. where describes the tensor for error messages.
func walkTensors(p *onnxpb.ModelProto, fn func(t *onnxpb.TensorProto, where string) error) error {
	if err := walkGraphTensors(p.GetGraph(), "", fn); err != nil {
		return err
	}
	for i, ti := range p.GetTrainingInfo() {
		prefix := fmt.Sprintf("training_info[%d].", i)
		if err := walkGraphTensors(ti.GetInitialization(), prefix+"initialization: ", fn); err != nil {
			return err
		}
		if err := walkGraphTensors(ti.GetAlgorithm(), prefix+"algorithm: ", fn); err != nil {
			return err
		}
	}
	for _, f := range p.GetFunctions() {
		if err := walkNodeTensors(f.GetNode(), fmt.Sprintf("function %q: ", f.GetName()), fn); err != nil {
			return err
		}
	}
	return nil
}

func walkGraphTensors(g *onnxpb.GraphProto, prefix string, fn func(*onnxpb.TensorProto, string) error) error {
	if g == nil {
		return nil
	}
	for _, t := range g.Initializer {
		if err := fn(t, fmt.Sprintf("%sinitializer %q", prefix, t.GetName())); err != nil {
			return err
		}
	}
	for _, st := range g.SparseInitializer {
		if err := walkSparse(st, fmt.Sprintf("%ssparse initializer %q", prefix, st.GetValues().GetName()), fn); err != nil {
			return err
		}
	}
	return walkNodeTensors(g.Node, prefix, fn)
}

func walkSparse(st *onnxpb.SparseTensorProto, where string, fn func(*onnxpb.TensorProto, string) error) error {
	if st.GetValues() != nil {
		if err := fn(st.Values, where+" values"); err != nil {
			return err
		}
	}
	if st.GetIndices() != nil {
		if err := fn(st.Indices, where+" indices"); err != nil {
			return err
		}
	}
	return nil
}

func walkNodeTensors(nodes []*onnxpb.NodeProto, prefix string, fn func(*onnxpb.TensorProto, string) error) error {
	for _, n := range nodes {
		if n == nil {
			continue // a damaged graph: reported by whoever reads it
		}
		for _, a := range n.Attribute {
			if a == nil {
				continue
			}
			where := fmt.Sprintf("%snode %q attribute %q", prefix, n.GetName(), a.GetName())
			if a.T != nil {
				if err := fn(a.T, where); err != nil {
					return err
				}
			}
			for i, t := range a.Tensors {
				if err := fn(t, fmt.Sprintf("%s[%d]", where, i)); err != nil {
					return err
				}
			}
			if a.SparseTensor != nil {
				if err := walkSparse(a.SparseTensor, where, fn); err != nil {
					return err
				}
			}
			for i, st := range a.SparseTensors {
				if err := walkSparse(st, fmt.Sprintf("%s[%d]", where, i), fn); err != nil {
					return err
				}
			}
			sub := fmt.Sprintf("%snode %q subgraph %q: ", prefix, n.GetName(), a.GetName())
			if err := walkGraphTensors(a.G, sub, fn); err != nil {
				return err
			}
			for _, g := range a.Graphs {
				if err := walkGraphTensors(g, sub, fn); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// forEachGraph calls fn for g and every graph nested in its nodes' attributes.
func forEachGraph(g *onnxpb.GraphProto, fn func(*onnxpb.GraphProto)) {
	if g == nil {
		return
	}
	fn(g)
	for _, n := range g.Node {
		for _, a := range n.Attribute {
			forEachGraph(a.G, fn)
			for _, sg := range a.Graphs {
				forEachGraph(sg, fn)
			}
		}
	}
}
