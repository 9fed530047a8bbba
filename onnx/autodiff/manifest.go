package autodiff

import (
	"encoding/json"
	"fmt"
	"slices"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
)

// Manifest describes the inputs and outputs of a training model, for
// trainers that drive it (and for `ortalign artifacts`, which writes it as
// JSON next to the model).
type Manifest struct {
	// Loss is the name of the scalar loss output.
	Loss string `json:"loss"`
	// Inputs are the data inputs fed each step (not the parameters).
	Inputs []Value `json:"inputs"`
	// Params are the trainable parameters, fed each step as inputs, each
	// with the output that holds its gradient.
	Params []Param `json:"params"`
	// Outputs are all outputs in order: the loss, the kept outputs, then
	// the gradients.
	Outputs []Value `json:"outputs"`
}

// Value is a graph input or output.
type Value struct {
	Name string `json:"name"`
	// ElemType is the ONNX element type name ("FLOAT", "INT64", ...).
	ElemType string `json:"elem_type"`
	// Shape is the value's shape; nil when the rank is unknown.
	Shape Shape `json:"shape"`
}

// Param is a trainable parameter of a training model.
type Param struct {
	// Name is the parameter's input name (the initializer name in the
	// forward model).
	Name string `json:"name"`
	// Grad is the name of the output holding the parameter's gradient.
	Grad string `json:"grad"`
	// ElemType is the ONNX element type name ("FLOAT").
	ElemType string `json:"elem_type"`
	// Dims is the parameter's (and its gradient's) fixed shape.
	Dims []int64 `json:"dims"`
}

// Shape is a list of dims. In JSON a fixed size is a number, a symbolic dim
// its name, and an unknown dim null: [ "batch", "sequence", 512 ].
type Shape []onnx.Dim

// MarshalJSON writes the mixed array described at Shape.
func (s Shape) MarshalJSON() ([]byte, error) {
	if s == nil {
		return []byte("null"), nil
	}
	out := make([]any, len(s))
	for i, d := range s {
		switch {
		case d.IsParam():
			out[i] = d.Param
		case d.IsKnown():
			out[i] = d.Value
		}
	}
	return json.Marshal(out)
}

// UnmarshalJSON reads the mixed array described at Shape.
func (s *Shape) UnmarshalJSON(b []byte) error {
	var raw []any
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("shape: %w", err)
	}
	if raw == nil {
		*s = nil
		return nil
	}
	out := make(Shape, len(raw))
	for i, v := range raw {
		switch v := v.(type) {
		case nil:
			out[i] = onnx.DimUnknown()
		case string:
			out[i] = onnx.DimParam(v)
		case float64:
			out[i] = onnx.DimValue(int64(v))
		default:
			return fmt.Errorf("shape: dim %d is %T, want a number, a name or null", i, v)
		}
	}
	*s = out
	return nil
}

func valueOf(vi *onnxpb.ValueInfoProto) Value {
	et, dims, _ := onnx.TensorType(vi)
	return Value{Name: vi.GetName(), ElemType: et.String(), Shape: Shape(dims)}
}

// manifest describes the finished training graph g.
func manifest(g *onnxpb.GraphProto, cfg Config, params []Param) Manifest {
	mf := Manifest{Loss: cfg.Loss, Params: params}
	for _, in := range g.GetInput() {
		if slices.Contains(cfg.Trainable, in.GetName()) || onnx.Initializer(g, in.GetName()) != nil {
			continue
		}
		mf.Inputs = append(mf.Inputs, valueOf(in))
	}
	for _, out := range g.GetOutput() {
		mf.Outputs = append(mf.Outputs, valueOf(out))
	}
	return mf
}
