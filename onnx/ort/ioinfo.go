package ort

import (
	"fmt"
	"os"

	ortgo "github.com/yalue/onnxruntime_go"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"ortalign/onnx/onnxpb"
)

// Field numbers of the ONNX schema that modelIO reads (onnx/onnxpb).
const (
	modelGraphField       = 7  // ModelProto.graph
	graphInitializerField = 5  // GraphProto.initializer
	graphInputField       = 11 // GraphProto.input
	graphOutputField      = 12 // GraphProto.output
	tensorNameField       = 8  // TensorProto.name
)

// modelIO reads a serialized model's graph inputs (less those that are initializers, as
// ONNX Runtime lists them) and outputs straight from its bytes, skipping over the
// initializers' data: the binding's GetInputOutputInfo builds a whole ONNX Runtime
// session for that, which on a large model costs as much as the real session.
func modelIO(model []byte) (ins, outs []ortgo.InputOutputInfo, err error) {
	graph, err := field(model, modelGraphField)
	if err != nil {
		return nil, nil, err
	}
	if graph == nil {
		return nil, nil, fmt.Errorf("model has no graph")
	}
	initializers := map[string]bool{}
	var inputs, outputs []*onnxpb.ValueInfoProto
	for b := graph; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, nil, fmt.Errorf("graph: %w", protowire.ParseError(n))
		}
		b = b[n:]
		if typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return nil, nil, fmt.Errorf("graph: %w", protowire.ParseError(n))
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return nil, nil, fmt.Errorf("graph: %w", protowire.ParseError(n))
		}
		b = b[n:]
		switch num {
		case graphInitializerField:
			name, err := field(v, tensorNameField)
			if err != nil {
				return nil, nil, fmt.Errorf("initializer: %w", err)
			}
			initializers[string(name)] = true
		case graphInputField, graphOutputField:
			vi := &onnxpb.ValueInfoProto{}
			if err := proto.Unmarshal(v, vi); err != nil {
				return nil, nil, fmt.Errorf("graph input/output: %w", err)
			}
			if num == graphInputField {
				inputs = append(inputs, vi)
			} else {
				outputs = append(outputs, vi)
			}
		}
	}
	for _, vi := range inputs {
		if !initializers[vi.GetName()] {
			ins = append(ins, ioInfo(vi))
		}
	}
	for _, vi := range outputs {
		outs = append(outs, ioInfo(vi))
	}
	return ins, outs, nil
}

// modelFileIO is modelIO of a model file (external data, if any, is not read).
func modelFileIO(path string) (ins, outs []ortgo.InputOutputInfo, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	return modelIO(b)
}

// field returns the last occurrence of a length-delimited field of a message (nil when
// absent), skipping every other field without decoding it.
func field(msg []byte, want protowire.Number) ([]byte, error) {
	var found []byte
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		msg = msg[n:]
		if num == want && typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(msg)
			if n < 0 {
				return nil, protowire.ParseError(n)
			}
			found, msg = v, msg[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, msg)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		msg = msg[n:]
	}
	return found, nil
}

// ioInfo describes a graph input or output as the binding does: ONNX's element type
// numbers are ONNX Runtime's, dynamic dimensions are -1.
func ioInfo(vi *onnxpb.ValueInfoProto) ortgo.InputOutputInfo {
	info := ortgo.InputOutputInfo{Name: vi.GetName(), OrtValueType: ortgo.ONNXTypeTensor}
	t := vi.GetType().GetTensorType()
	if t == nil {
		info.OrtValueType = ortgo.ONNXTypeUnknown
		return info
	}
	info.DataType = ortgo.TensorElementDataType(t.GetElemType())
	if s := t.GetShape(); s != nil {
		// Non-nil even for a scalar: nil means the shape is not declared.
		dims := make(ortgo.Shape, len(s.GetDim()))
		for i, d := range s.GetDim() {
			dims[i] = -1
			if v, ok := d.GetValue().(*onnxpb.TensorShapeProto_Dimension_DimValue); ok {
				dims[i] = v.DimValue
			}
		}
		info.Dimensions = dims
	}
	return info
}

// ranksKnown reports whether every fetched output (all when want is nil) declares its
// shape, so a scalar can be told from a tensor of unknown shape.
func ranksKnown(outs []ortgo.InputOutputInfo, want []string) bool {
	fetched := map[string]bool{}
	for _, name := range want {
		fetched[name] = true
	}
	for _, o := range outs {
		if (want == nil || fetched[o.Name]) && o.Dimensions == nil {
			return false
		}
	}
	return true
}
