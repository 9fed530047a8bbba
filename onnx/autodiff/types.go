package autodiff

import (
	"slices"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
)

// inferTypes returns the element type of every value of g it can tell:
// inputs, initializers, annotated values, and node outputs by their
// operator's entry in the registry (opDef.types; most operators keep their
// first input's type).
func inferTypes(g *onnxpb.GraphProto) map[string]onnx.DataType {
	types := map[string]onnx.DataType{}
	for _, vis := range [][]*onnxpb.ValueInfoProto{g.GetInput(), g.GetValueInfo(), g.GetOutput()} {
		for _, vi := range vis {
			if et, _, ok := onnx.TensorType(vi); ok && et != onnx.Undefined {
				types[vi.GetName()] = et
			}
		}
	}
	for _, t := range g.GetInitializer() {
		types[t.GetName()] = onnx.DataType(t.GetDataType())
	}
	for _, n := range g.GetNode() {
		in := func(i int) onnx.DataType {
			if i < len(n.GetInput()) {
				return types[n.GetInput()[i]]
			}
			return onnx.Undefined
		}
		out := outputTypes(n, in)
		for i, o := range n.GetOutput() {
			if o == "" {
				continue
			}
			if _, known := types[o]; known {
				continue // annotated in the graph
			}
			t := out[0]
			if i < len(out) {
				t = out[i]
			}
			types[o] = t
		}
	}
	return types
}

// outputTypes returns the element types of n's outputs, one per output or a
// single one for all, given its inputs' (in).
func outputTypes(n *onnxpb.NodeProto, in func(int) onnx.DataType) []onnx.DataType {
	if t := opOf(n).types; t != nil {
		return t(n, in)
	}
	return []onnx.DataType{in(0)}
}

// fixed is the typeRule of an operator whose outputs have the types ts.
func fixed(ts ...onnx.DataType) typeRule {
	return func(*onnxpb.NodeProto, func(int) onnx.DataType) []onnx.DataType { return ts }
}

// input is the typeRule of an operator whose outputs have input i's type.
func input(i int) typeRule {
	return func(_ *onnxpb.NodeProto, in func(int) onnx.DataType) []onnx.DataType {
		return []onnx.DataType{in(i)}
	}
}

// firstAnd is the typeRule of an operator with two outputs: the first of
// the first input's type, the second of type t (a mask, indices).
func firstAnd(t onnx.DataType) typeRule {
	return func(_ *onnxpb.NodeProto, in func(int) onnx.DataType) []onnx.DataType {
		return []onnx.DataType{in(0), t}
	}
}

// attrType is the typeRule of an operator whose output type is given by
// the integer attribute name, and otherwise by def (nil: unknown).
func attrType(name string, def typeRule) typeRule {
	return func(n *onnxpb.NodeProto, in func(int) onnx.DataType) []onnx.DataType {
		if a := onnx.FindAttr(n, name); a != nil {
			return []onnx.DataType{onnx.DataType(a.GetI())}
		}
		if def == nil {
			return []onnx.DataType{onnx.Undefined}
		}
		return def(n, in)
	}
}

// constantTypes is Constant's typeRule: its value's type.
func constantTypes(n *onnxpb.NodeProto, _ func(int) onnx.DataType) []onnx.DataType {
	return []onnx.DataType{constantType(n)}
}

// constantOfShapeTypes is ConstantOfShape's typeRule: its value's type,
// float by default.
func constantOfShapeTypes(n *onnxpb.NodeProto, _ func(int) onnx.DataType) []onnx.DataType {
	if a := onnx.FindAttr(n, "value"); a != nil && a.T != nil {
		return []onnx.DataType{onnx.DataType(a.T.GetDataType())}
	}
	return []onnx.DataType{onnx.Float}
}

// layerNormTypes is LayerNormalization's typeRule: Y has X's type; Mean and
// InvStdDev have stash_type's, float unless the attribute says otherwise
// (then X's type).
func layerNormTypes(n *onnxpb.NodeProto, in func(int) onnx.DataType) []onnx.DataType {
	if a := onnx.FindAttr(n, "stash_type"); a != nil && a.GetI() != 1 {
		return []onnx.DataType{in(0), in(0), in(0)}
	}
	return []onnx.DataType{in(0), onnx.Float, onnx.Float}
}

// constantType is the element type of a Constant node's value.
func constantType(n *onnxpb.NodeProto) onnx.DataType {
	for _, a := range n.GetAttribute() {
		switch a.GetName() {
		case "value":
			return onnx.DataType(a.GetT().GetDataType())
		case "value_float", "value_floats":
			return onnx.Float
		case "value_int", "value_ints":
			return onnx.Int64
		case "value_string", "value_strings":
			return onnx.String
		}
	}
	return onnx.Undefined
}

// constValues maps the values of g whose contents are fixed (initializers
// and Constant node outputs) to their tensors.
func constValues(g *onnxpb.GraphProto) map[string]*onnxpb.TensorProto {
	out := map[string]*onnxpb.TensorProto{}
	for _, t := range g.GetInitializer() {
		out[t.GetName()] = t
	}
	for _, n := range g.GetNode() {
		if n.GetOpType() != "Constant" || len(n.GetOutput()) != 1 {
			continue
		}
		for _, a := range n.GetAttribute() {
			switch a.GetName() {
			case "value":
				out[n.Output[0]] = a.GetT()
			case "value_int":
				out[n.Output[0]] = onnx.ScalarInt64("", a.GetI())
			case "value_ints":
				out[n.Output[0]] = onnx.Int64Tensor("", []int64{int64(len(a.GetInts()))}, a.GetInts())
			case "value_float":
				out[n.Output[0]] = onnx.ScalarFloat("", a.GetF())
			case "value_floats":
				out[n.Output[0]] = onnx.FloatTensor("", []int64{int64(len(a.GetFloats()))}, a.GetFloats())
			}
		}
	}
	foldIndexConstants(g, out)
	return out
}

// foldIndexConstants adds to consts the small integer values that exporters compute
// from constants with Unsqueeze, Squeeze, Concat, Cast or Identity — a Slice's axes
// written as Unsqueeze(Constant) is one (Qwen2-style attention from torch.onnx.export):
// gradient rules need such values as constants. Nodes are visited in graph order, which
// is topological.
func foldIndexConstants(g *onnxpb.GraphProto, consts map[string]*onnxpb.TensorProto) {
	const maxElems = 64
	ints := func(v string) ([]int64, []int64, bool) {
		t, ok := consts[v]
		if !ok || numel(t.GetDims()) > maxElems {
			return nil, nil, false
		}
		var vals []int64
		var err error
		switch onnx.DataType(t.GetDataType()) {
		case onnx.Int64:
			vals, err = onnx.TensorInt64s(t)
		case onnx.Int32:
			vals, err = int32s(t)
		default:
			return nil, nil, false
		}
		return vals, t.GetDims(), err == nil
	}
	for _, n := range g.GetNode() {
		if n.GetDomain() != "" || len(n.GetOutput()) != 1 || len(n.GetInput()) == 0 {
			continue
		}
		vals, dims, ok := ints(n.GetInput()[0])
		if !ok {
			continue
		}
		var outDims []int64
		switch n.GetOpType() {
		case "Identity":
			outDims = dims
		case "Cast":
			to := int32(0)
			for _, a := range n.GetAttribute() {
				if a.GetName() == "to" {
					to = int32(a.GetI())
				}
			}
			if onnx.DataType(to) != onnx.Int64 {
				continue
			}
			outDims = dims
		case "Unsqueeze", "Squeeze":
			var axes []int64
			if len(n.GetInput()) > 1 {
				if axes, _, ok = ints(n.GetInput()[1]); !ok {
					continue
				}
			}
			for _, a := range n.GetAttribute() {
				if a.GetName() == "axes" {
					axes = a.GetInts()
				}
			}
			if outDims, ok = squeezeDims(dims, axes, n.GetOpType() == "Unsqueeze"); !ok {
				continue
			}
		case "Concat":
			if len(dims) != 1 {
				continue
			}
			all := slices.Clone(vals)
			for _, in := range n.GetInput()[1:] {
				more, d, ok2 := ints(in)
				if !ok2 || len(d) != 1 {
					ok = false
					break
				}
				all = append(all, more...)
			}
			if !ok {
				continue
			}
			vals, outDims = all, []int64{int64(len(all))}
		default:
			continue
		}
		consts[n.GetOutput()[0]] = onnx.Int64Tensor("", outDims, vals)
	}
}

// squeezeDims is the shape after Unsqueeze (insert) or Squeeze (remove) of axes; nil
// axes on Squeeze removes every 1.
func squeezeDims(dims, axes []int64, insert bool) ([]int64, bool) {
	if insert {
		r := int64(len(dims) + len(axes))
		at := map[int64]bool{}
		for _, a := range axes {
			if a < 0 {
				a += r
			}
			if a < 0 || a >= r || at[a] {
				return nil, false
			}
			at[a] = true
		}
		out := make([]int64, 0, r)
		k := 0
		for i := int64(0); i < r; i++ {
			if at[i] {
				out = append(out, 1)
			} else {
				out = append(out, dims[k])
				k++
			}
		}
		return out, true
	}
	drop := map[int64]bool{}
	for _, a := range axes {
		if a < 0 {
			a += int64(len(dims))
		}
		if a < 0 || a >= int64(len(dims)) || dims[a] != 1 {
			return nil, false
		}
		drop[a] = true
	}
	var out []int64
	for i, d := range dims {
		if (len(axes) == 0 && d == 1) || drop[int64(i)] {
			continue
		}
		out = append(out, d)
	}
	return out, true
}
