package onnx

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx/onnxpb"
)

func nodeNames(nodes []*onnxpb.NodeProto) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.GetName())
	}
	return out
}

func TestProducersConsumers(t *testing.T) {
	g := mustLoad(t, mlpPath).Graph()
	prod := Producers(g)
	if n := prod["h2"]; n.GetName() != "add2" {
		t.Errorf("producer of h2 = %q, want add2", n.GetName())
	}
	if _, ok := prod["x"]; ok {
		t.Error("graph input x has a producer")
	}
	if _, ok := prod["then_out"]; ok {
		t.Error("Producers looked into subgraphs")
	}
	cons := Consumers(g)
	// h2 is read only inside the If's branches: the If node consumes it.
	if got := nodeNames(cons["h2"]); !slices.Equal(got, []string{"if1"}) {
		t.Errorf("consumers of h2 = %v, want [if1]", got)
	}
	if got := nodeNames(cons["logits"]); !slices.Equal(got, []string{"softmax"}) {
		t.Errorf("consumers of logits = %v", got)
	}
	if got := NodeInputs(g.Node[6]); !slices.Equal(got, []string{"cond", "h2"}) {
		t.Errorf("NodeInputs(if1) = %v, want [cond h2]", got)
	}
}

func TestTopologicalSort(t *testing.T) {
	m := mustLoad(t, mlpPath)
	want := nodeNames(m.Graph().Node)
	rng := rand.New(rand.NewPCG(3, 4))
	for range 20 {
		g := proto.Clone(m.Graph()).(*onnxpb.GraphProto)
		rng.Shuffle(len(g.Node), func(i, j int) { g.Node[i], g.Node[j] = g.Node[j], g.Node[i] })
		if err := TopologicalSort(g); err != nil {
			t.Fatal(err)
		}
		pos := map[string]int{}
		for i, n := range g.Node {
			for _, o := range n.Output {
				pos[o] = i
			}
		}
		for i, n := range g.Node {
			for _, in := range NodeInputs(n) {
				if p, ok := pos[in]; ok && p >= i {
					t.Fatalf("node %q at %d reads %q produced at %d", n.GetName(), i, in, p)
				}
			}
		}
	}
	// A sorted graph keeps its order.
	g := proto.Clone(m.Graph()).(*onnxpb.GraphProto)
	if err := TopologicalSort(g); err != nil {
		t.Fatal(err)
	}
	if got := nodeNames(g.Node); !slices.Equal(got, want) {
		t.Errorf("sorted graph reordered: %v", got)
	}
	// A cycle is reported with a node on it, not a node downstream.
	cyc := &onnxpb.GraphProto{Name: proto.String("cyc"), Node: []*onnxpb.NodeProto{
		{Name: proto.String("head"), OpType: proto.String("Relu"), Input: []string{"x"}, Output: []string{"a"}},
		{Name: proto.String("loop1"), OpType: proto.String("Add"), Input: []string{"a", "c"}, Output: []string{"b"}},
		{Name: proto.String("loop2"), OpType: proto.String("Neg"), Input: []string{"b"}, Output: []string{"c"}},
		{Name: proto.String("tail"), OpType: proto.String("Neg"), Input: []string{"c"}, Output: []string{"d"}},
	}}
	err := TopologicalSort(cyc)
	if err == nil || !(strings.Contains(err.Error(), `"loop1"`) || strings.Contains(err.Error(), `"loop2"`)) {
		t.Errorf("cycle: err = %v, want it to name loop1 or loop2", err)
	}
	self := &onnxpb.GraphProto{Node: []*onnxpb.NodeProto{
		{Name: proto.String("me"), OpType: proto.String("Add"), Input: []string{"x", "y"}, Output: []string{"y"}},
	}}
	if err := TopologicalSort(self); err == nil || !strings.Contains(err.Error(), `"me"`) {
		t.Errorf("self loop: err = %v", err)
	}
}

func TestUniqueName(t *testing.T) {
	g := mustLoad(t, mlpPath).Graph()
	tests := []struct{ prefix, want string }{
		{"fresh", "fresh"},
		{"x", "x_1"},               // graph input
		{"W1", "W1_1"},             // initializer
		{"relu1", "relu1_1"},       // node name
		{"then_out", "then_out_1"}, // value inside a subgraph
		{"else_neg", "else_neg_1"}, // node inside a subgraph
		{"", "v"},
	}
	for _, tc := range tests {
		if got := UniqueName(g, tc.prefix); got != tc.want {
			t.Errorf("UniqueName(%q) = %q, want %q", tc.prefix, got, tc.want)
		}
	}
	g.Input = append(g.Input, TensorValueInfo("x_1", Float, nil))
	if got := UniqueName(g, "x"); got != "x_2" {
		t.Errorf("UniqueName(x) = %q, want x_2", got)
	}
}

func TestEditInputsOutputsInitializers(t *testing.T) {
	m := mustLoad(t, mlpPath)
	g := m.Graph()
	w1 := RemoveInitializer(g, "W1")
	if w1 == nil || Initializer(g, "W1") != nil {
		t.Fatal("RemoveInitializer(W1) failed")
	}
	if RemoveInitializer(g, "W1") != nil {
		t.Error("second RemoveInitializer(W1) found something")
	}
	if err := AddInput(g, "W1", Float, Dims(4, 8)); err != nil {
		t.Fatal(err)
	}
	if err := AddInput(g, "W1", Float, nil); err == nil {
		t.Error("duplicate AddInput succeeded")
	}
	if err := AddInput(g, "h1", Float, nil); err == nil || !strings.Contains(err.Error(), "relu1") {
		t.Errorf("AddInput of a node output: err = %v", err)
	}
	if err := AddInitializer(g, w1); err != nil {
		t.Fatal(err)
	}
	if err := AddInitializer(g, w1); err == nil {
		t.Error("duplicate AddInitializer succeeded")
	}
	if err := AddInitializer(g, &onnxpb.TensorProto{}); err == nil {
		t.Error("AddInitializer without a name succeeded")
	}
	if err := AddOutput(g, "h1", Float, []Dim{DimParam("batch"), DimValue(8)}); err != nil {
		t.Fatal(err)
	}
	et, dims, ok := TensorType(Output(g, "h1"))
	if !ok || et != Float || !slices.Equal(dims, []Dim{DimParam("batch"), DimValue(8)}) {
		t.Errorf("TensorType(h1) = %v %v %v", et, dims, ok)
	}
	if !RemoveOutput(g, "probs") || RemoveOutput(g, "probs") {
		t.Error("RemoveOutput(probs) should succeed once")
	}
	var outs []string
	for _, o := range g.Output {
		outs = append(outs, o.GetName())
	}
	if !slices.Equal(outs, []string{"logits", "h1"}) {
		t.Errorf("outputs = %v", outs)
	}
	if !RemoveInput(g, "W1") || Input(g, "W1") != nil {
		t.Error("RemoveInput(W1) failed")
	}
	// Scalar vs unknown rank.
	if _, d, _ := TensorType(TensorValueInfo("s", Float, []Dim{})); d == nil || len(d) != 0 {
		t.Errorf("scalar dims = %#v, want empty non-nil", d)
	}
	if _, d, _ := TensorType(TensorValueInfo("u", Float, nil)); d != nil {
		t.Errorf("unknown-rank dims = %#v, want nil", d)
	}
	if _, _, ok := TensorType(TensorValueInfo("n", Undefined, nil)); ok {
		t.Error("untyped value reported a tensor type")
	}
	if got := []string{DimValue(3).String(), DimParam("seq").String(), DimUnknown().String()}; !slices.Equal(got, []string{"3", "seq", "?"}) {
		t.Errorf("Dim strings %v", got)
	}
	// The edited model still saves and loads.
	if _, err := m.Marshal(); err != nil {
		t.Fatal(err)
	}
}
