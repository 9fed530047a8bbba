package onnxpb

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// TestFieldNumbers pins the field numbers that other ONNX tools rely on, so
// that an edit to onnx.proto cannot silently change the wire format.
func TestFieldNumbers(t *testing.T) {
	tests := []struct {
		msg    proto.Message
		fields map[string]protowire.Number
	}{
		{&ModelProto{}, map[string]protowire.Number{"ir_version": 1, "producer_name": 2, "producer_version": 3, "domain": 4, "model_version": 5, "doc_string": 6, "graph": 7, "opset_import": 8, "metadata_props": 14, "training_info": 20, "functions": 25}},
		{&GraphProto{}, map[string]protowire.Number{"node": 1, "name": 2, "initializer": 5, "doc_string": 10, "input": 11, "output": 12, "value_info": 13, "quantization_annotation": 14, "sparse_initializer": 15, "metadata_props": 16}},
		{&NodeProto{}, map[string]protowire.Number{"input": 1, "output": 2, "name": 3, "op_type": 4, "attribute": 5, "doc_string": 6, "domain": 7, "overload": 8, "metadata_props": 9}},
		{&AttributeProto{}, map[string]protowire.Number{"name": 1, "f": 2, "i": 3, "s": 4, "t": 5, "g": 6, "floats": 7, "ints": 8, "strings": 9, "tensors": 10, "graphs": 11, "doc_string": 13, "tp": 14, "type_protos": 15, "type": 20, "ref_attr_name": 21, "sparse_tensor": 22, "sparse_tensors": 23}},
		{&TensorProto{}, map[string]protowire.Number{"dims": 1, "data_type": 2, "segment": 3, "float_data": 4, "int32_data": 5, "string_data": 6, "int64_data": 7, "name": 8, "raw_data": 9, "double_data": 10, "uint64_data": 11, "doc_string": 12, "external_data": 13, "data_location": 14, "metadata_props": 16}},
		{&ValueInfoProto{}, map[string]protowire.Number{"name": 1, "type": 2, "doc_string": 3, "metadata_props": 4}},
		{&TypeProto{}, map[string]protowire.Number{"tensor_type": 1, "sequence_type": 4, "map_type": 5, "denotation": 6, "sparse_tensor_type": 8, "optional_type": 9}},
		{&TensorShapeProto_Dimension{}, map[string]protowire.Number{"dim_value": 1, "dim_param": 2, "denotation": 3}},
		{&SparseTensorProto{}, map[string]protowire.Number{"values": 1, "indices": 2, "dims": 3}},
		{&FunctionProto{}, map[string]protowire.Number{"name": 1, "input": 4, "output": 5, "attribute": 6, "node": 7, "doc_string": 8, "opset_import": 9, "domain": 10, "attribute_proto": 11, "value_info": 12, "overload": 13, "metadata_props": 14}},
		{&TrainingInfoProto{}, map[string]protowire.Number{"initialization": 1, "algorithm": 2, "initialization_binding": 3, "update_binding": 4}},
		{&OperatorSetIdProto{}, map[string]protowire.Number{"domain": 1, "version": 2}},
	}
	for _, tc := range tests {
		md := tc.msg.ProtoReflect().Descriptor()
		if md.Fields().Len() != len(tc.fields) {
			t.Errorf("%s has %d fields, the table %d", md.Name(), md.Fields().Len(), len(tc.fields))
		}
		for name, num := range tc.fields {
			fd := md.Fields().ByName(protoreflect.Name(name))
			if fd == nil {
				t.Errorf("%s.%s missing", md.Name(), name)
				continue
			}
			if fd.Number() != num {
				t.Errorf("%s.%s = %d, want %d", md.Name(), name, fd.Number(), num)
			}
		}
	}
	// Packed encodings must match ONNX's (proto2: dims unpacked, *_data packed).
	td := (&TensorProto{}).ProtoReflect().Descriptor().Fields()
	if td.ByName("dims").IsPacked() || !td.ByName("float_data").IsPacked() || !td.ByName("int64_data").IsPacked() {
		t.Error("TensorProto packing differs from ONNX")
	}
	if (&AttributeProto{}).ProtoReflect().Descriptor().Fields().ByName("ints").IsPacked() {
		t.Error("AttributeProto.ints must not be packed")
	}
	if TensorProto_BFLOAT16 != 16 || TensorProto_FLOAT8E8M0 != 24 || AttributeProto_TYPE_PROTOS != 14 || TensorProto_EXTERNAL != 1 {
		t.Error("enum values differ from ONNX")
	}
}

// TestUnknownFieldsRoundTrip appends fields the schema does not know to
// messages at several depths and checks that they come back byte for byte.
func TestUnknownFieldsRoundTrip(t *testing.T) {
	var unk []byte
	unk = protowire.AppendTag(unk, 777, protowire.VarintType)
	unk = protowire.AppendVarint(unk, 12345)
	unk = protowire.AppendTag(unk, 778, protowire.BytesType)
	unk = protowire.AppendBytes(unk, []byte("future field"))
	unk = protowire.AppendTag(unk, 779, protowire.Fixed32Type)
	unk = protowire.AppendFixed32(unk, 0xdeadbeef)

	tensor, _ := proto.Marshal(&TensorProto{Name: proto.String("w"), Dims: []int64{2}, DataType: proto.Int32(1), RawData: make([]byte, 8)})
	tensor = append(tensor, unk...)
	node, _ := proto.Marshal(&NodeProto{OpType: proto.String("Relu"), Input: []string{"a"}, Output: []string{"b"}})
	node = append(node, unk...)

	var graph []byte
	graph = protowire.AppendTag(graph, 1, protowire.BytesType) // node
	graph = protowire.AppendBytes(graph, node)
	graph = protowire.AppendTag(graph, 5, protowire.BytesType) // initializer
	graph = protowire.AppendBytes(graph, tensor)
	graph = append(graph, unk...)

	var model []byte
	model = protowire.AppendTag(model, 1, protowire.VarintType)
	model = protowire.AppendVarint(model, 8)
	model = protowire.AppendTag(model, 7, protowire.BytesType)
	model = protowire.AppendBytes(model, graph)
	model = append(model, unk...)

	var m ModelProto
	if err := proto.Unmarshal(model, &m); err != nil {
		t.Fatal(err)
	}
	for name, msg := range map[string]proto.Message{"model": &m, "graph": m.Graph, "node": m.Graph.Node[0], "tensor": m.Graph.Initializer[0]} {
		if got := msg.ProtoReflect().GetUnknown(); !bytes.Equal(got, unk) {
			t.Errorf("%s unknown fields = %x, want %x", name, got, unk)
		}
	}
	out, err := proto.Marshal(&m)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, model) {
		t.Errorf("round trip changed the bytes:\n got %x\nwant %x", out, model)
	}
}

// TestParsesReferenceModel parses a model written by the onnx Python package.
func TestParsesReferenceModel(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "testdata", "mlp.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	var m ModelProto
	if err := proto.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m.GetIrVersion() != 8 || m.GetGraph().GetName() != "tiny_mlp" || len(m.GetGraph().GetInitializer()) != 6 {
		t.Errorf("parsed %v", &m)
	}
	if d := m.GetGraph().GetInput()[0].GetType().GetTensorType().GetShape().GetDim()[0]; d.GetDimParam() != "batch" {
		t.Errorf("input dim 0 = %v, want batch", d)
	}
	if len(m.ProtoReflect().GetUnknown()) != 0 {
		t.Error("the schema misses fields that onnx 1.12 writes")
	}
	out, _ := proto.Marshal(&m)
	if !bytes.Equal(out, b) {
		t.Error("re-marshaled model differs from the file onnx wrote")
	}
}
