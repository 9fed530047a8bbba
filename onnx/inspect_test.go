package onnx

import (
	"maps"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx/onnxpb"
)

func TestSummary(t *testing.T) {
	m := mustLoad(t, mlpPath)
	// Add a node of another domain inside a subgraph, and an initializer
	// that older models list among the inputs.
	then := FindAttr(m.Graph().Node[6], "then_branch").G
	then.Node = append(then.Node, &onnxpb.NodeProto{OpType: proto.String("FusedMatMul"), Domain: proto.String("com.microsoft"), Input: []string{"h2", "h2"}, Output: []string{"fm"}})
	m.Graph().Input = append(m.Graph().Input, TensorValueInfo("W1", Float, Dims(4, 8)))

	s := Summary(m)
	if s.IRVersion != 8 || s.ProducerName != "ortalign-testdata" || s.ProducerVersion != "1" || s.GraphName != "tiny_mlp" {
		t.Errorf("header: %+v", s)
	}
	if !slices.Equal(s.Opsets, []OpsetImport{{"", 17}}) {
		t.Errorf("opsets %v", s.Opsets)
	}
	if len(s.Inputs) != 1 || s.Inputs[0].Name != "x" || s.Inputs[0].ElemType != Float ||
		!slices.Equal(s.Inputs[0].Dims, []Dim{DimParam("batch"), DimValue(4)}) {
		t.Errorf("inputs %+v", s.Inputs)
	}
	if len(s.Outputs) != 2 || s.Outputs[1].Name != "probs" || !slices.Equal(s.Outputs[1].Dims, []Dim{DimParam("batch"), DimValue(3)}) {
		t.Errorf("outputs %+v", s.Outputs)
	}
	// W1 4*8 + b1 8 + W2 8*3 + b2 3 + scale16 3 (float16 counts); out_shape is INT64.
	if want := int64(32 + 8 + 24 + 3 + 3); s.ParamCount != want {
		t.Errorf("ParamCount = %d, want %d", s.ParamCount, want)
	}
	if want := int64(4*(32+8+24+3) + 2*3 + 8*2); s.ParamBytes != want {
		t.Errorf("ParamBytes = %d, want %d", s.ParamBytes, want)
	}
	want := map[string]int{
		"MatMul": 2, "Add": 2, "Relu": 1, "Constant": 1, "If": 1, "Identity": 1, "Neg": 1,
		"Cast": 1, "Mul": 1, "Reshape": 1, "Softmax": 1, "com.microsoft:FusedMatMul": 1,
	}
	if !maps.Equal(s.OpHistogram, want) {
		t.Errorf("OpHistogram = %v, want %v", s.OpHistogram, want)
	}
	if s.Nodes != 14 || s.Initializers != 6 {
		t.Errorf("Nodes = %d, Initializers = %d", s.Nodes, s.Initializers)
	}
}
