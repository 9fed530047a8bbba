package lora

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math"
	"math/rand"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
	"ortalign/onnx/ort"
)

func load(t *testing.T, file string) *onnx.Model {
	t.Helper()
	m, err := onnx.Load("../../testdata/models/" + file)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func modules(ts []Target) []string {
	var out []string
	for _, t := range ts {
		out = append(out, t.Module)
	}
	return out
}

// TestModulePathsFromOpaqueNames: the tiny models' weights are named onnx::MatMul_N; the
// module paths come from the node scopes, completed with the prefix the exporter dropped
// (model. for Llama, transformer. for GPT-2), as PyTorch names the modules.
func TestModulePathsFromOpaqueNames(t *testing.T) {
	cases := map[string][]string{
		"llama_opset17.onnx": {
			"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj", "model.layers.0.self_attn.o_proj",
			"model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj",
			"model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.v_proj", "model.layers.1.self_attn.o_proj",
			"model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj",
		},
		"gpt2_opset14.onnx": {
			"transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj",
			"transformer.h.1.attn.c_attn", "transformer.h.1.attn.c_proj", "transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj",
		},
	}
	for file, want := range cases {
		targets, err := FindTargets(load(t, file))
		if err != nil {
			t.Fatal(err)
		}
		sel, err := Select(targets, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := modules(sel); !slices.Equal(got, want) {
			t.Errorf("%s: default targets\n%q\nwant\n%q", file, got, want)
		}
		all, err := Select(targets, []string{AllLinear})
		if err != nil {
			t.Fatal(err)
		}
		if got := modules(all); !slices.Equal(got, want) {
			t.Errorf("%s: all-linear\n%q\nwant (no lm_head)\n%q", file, got, want)
		}
		if len(targets) != len(want)+1 || !targets[len(targets)-1].OutputLayer {
			t.Errorf("%s: want the lm_head found last and marked as the output layer, got %+v", file, targets[len(targets)-1])
		}
	}
	targets, _ := FindTargets(load(t, "llama_opset17.onnx"))
	sel, err := Select(targets, []string{"q_proj", "v_proj"})
	if err != nil || len(sel) != 4 || sel[1].Module != "model.layers.0.self_attn.v_proj" || sel[1].In != 32 || sel[1].Out != 16 {
		t.Fatalf("q_proj,v_proj: %+v, %v", sel, err)
	}
	if _, err := Select(targets, []string{"qkv"}); err == nil || !strings.Contains(err.Error(), "model.layers.0.self_attn.q_proj") {
		t.Fatalf("want an error listing the layers found, got %v", err)
	}
	if got := ModuleNames(sel); !slices.Equal(got, []string{"q_proj", "v_proj"}) {
		t.Fatalf("ModuleNames %q", got)
	}
}

// TestDeltaIsTransposeOfPEFTUpdate: for a MatMul weight [in, out] the update is
// (α/r)·(B·A)ᵀ, for Gemm with transB it is (α/r)·B·A / alpha.
func TestDeltaIsTransposeOfPEFTUpdate(t *testing.T) {
	a := []float32{1, 2, 3, 4, 5, 6} // r=2, in=3
	b := []float32{1, 0, 0, 1}       // out=2, r=2: identity
	ad := Adapter{Target: Target{In: 3, Out: 2, Alpha: 1}, R: 2}
	d, err := Delta(ad, 2, a, b)
	if err != nil {
		t.Fatal(err)
	}
	// B·A = A = [[1 2 3] [4 5 6]]; transposed [[1 4] [2 5] [3 6]], times 2
	if want := []float64{2, 8, 4, 10, 6, 12}; !slices.Equal(d, want) {
		t.Fatalf("MatMul delta %v, want %v", d, want)
	}
	ad.TransB, ad.Alpha = true, 2
	d, _ = Delta(ad, 2, a, b)
	if want := []float64{1, 2, 3, 4, 5, 6}; !slices.Equal(d, want) {
		t.Fatalf("Gemm transB delta %v, want %v", d, want)
	}
}

// readSafetensors is an independent reader of the format.
func readSafetensors(t *testing.T, b []byte) (map[string][]int64, map[string][]float32, map[string]string) {
	t.Helper()
	n := binary.LittleEndian.Uint64(b)
	hdr := b[8 : 8+n]
	if n%8 != 0 {
		t.Errorf("header length %d not a multiple of 8", n)
	}
	var h map[string]json.RawMessage
	if err := json.Unmarshal(hdr, &h); err != nil {
		t.Fatal(err)
	}
	data := b[8+n:]
	shapes, values, meta := map[string][]int64{}, map[string][]float32{}, map[string]string{}
	covered := 0
	for name, raw := range h {
		if name == "__metadata__" {
			if err := json.Unmarshal(raw, &meta); err != nil {
				t.Fatal(err)
			}
			continue
		}
		var e struct {
			Dtype   string  `json:"dtype"`
			Shape   []int64 `json:"shape"`
			Offsets []int   `json:"data_offsets"`
		}
		if err := json.Unmarshal(raw, &e); err != nil {
			t.Fatal(err)
		}
		if e.Dtype != "F32" || len(e.Offsets) != 2 || e.Offsets[1] > len(data) {
			t.Fatalf("%s: bad entry %s", name, raw)
		}
		v := make([]float32, (e.Offsets[1]-e.Offsets[0])/4)
		for i := range v {
			v[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[e.Offsets[0]+4*i:]))
		}
		covered += e.Offsets[1] - e.Offsets[0]
		shapes[name], values[name] = e.Shape, v
	}
	if covered != len(data) {
		t.Errorf("tensors cover %d of %d data bytes", covered, len(data))
	}
	return shapes, values, meta
}

func TestSafetensorsRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	in := []Tensor{{Name: "b.lora_B.weight", Shape: []int64{3, 1}, Data: []float32{1, -2, 3.5}}, {Name: "a.lora_A.weight", Shape: []int64{1, 2}, Data: []float32{0.25, math.MaxFloat32}}}
	if err := WriteSafetensors(&buf, in, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	shapes, values, meta := readSafetensors(t, buf.Bytes())
	if meta["format"] != "pt" || len(values) != 2 {
		t.Fatalf("meta %v, %d tensors", meta, len(values))
	}
	for _, x := range in {
		if !slices.Equal(shapes[x.Name], x.Shape) || !slices.Equal(values[x.Name], x.Data) {
			t.Errorf("%s: %v %v, want %v %v", x.Name, shapes[x.Name], values[x.Name], x.Shape, x.Data)
		}
	}
	if err := WriteSafetensors(&buf, []Tensor{{Name: "x", Shape: []int64{2}, Data: []float32{1}}}, nil); err == nil {
		t.Fatal("want an error for a shape that does not match the data")
	}
}

// TestInsertThenMergeGemmAndMatMul: on a graph with a Gemm (transB, alpha 0.5, bias) and
// a MatMul, the adapted graph with non-zero adapters computes what the original graph
// computes after Merge; a weight read by two nodes is no target.
func TestInsertThenMergeGemmAndMatMul(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	vals := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(rng.NormFloat64())
		}
		return v
	}
	g := &onnxpb.GraphProto{Name: proto.String("g")}
	g.Input = []*onnxpb.ValueInfoProto{onnx.TensorValueInfo("x", onnx.Float, onnx.Dims(2, 3))}
	g.Output = []*onnxpb.ValueInfoProto{onnx.TensorValueInfo("y", onnx.Float, onnx.Dims(2, 2)), onnx.TensorValueInfo("z", onnx.Float, onnx.Dims(2, 2)),
		onnx.TensorValueInfo("v", onnx.Float, onnx.Dims(2, 5))}
	g.Initializer = []*onnxpb.TensorProto{
		onnx.FloatTensor("fc1.weight", []int64{4, 3}, vals(12)), onnx.FloatTensor("fc1.bias", []int64{4}, vals(4)),
		onnx.FloatTensor("fc3.weight", []int64{5, 4}, vals(20)),
		onnx.FloatTensor("onnx::MatMul_7", []int64{4, 2}, vals(8)), onnx.FloatTensor("shared", []int64{4, 2}, vals(8)),
	}
	node := func(name, op string, in []string, out string, attrs ...*onnxpb.AttributeProto) *onnxpb.NodeProto {
		return &onnxpb.NodeProto{Name: proto.String(name), OpType: proto.String(op), Input: in, Output: []string{out}, Attribute: attrs}
	}
	g.Node = []*onnxpb.NodeProto{
		node("/fc1/Gemm", "Gemm", []string{"x", "fc1.weight", "fc1.bias"}, "h", onnx.AttrInt("transB", 1), onnx.AttrFloat("alpha", 0.5)),
		node("/act/Relu", "Relu", []string{"h"}, "a"),
		// A Linear exported without constant folding: MatMul(a, Transpose(W [out, in])).
		node("/fc3/Transpose", "Transpose", []string{"fc3.weight"}, "fc3_t", onnx.AttrInts("perm", []int64{1, 0})),
		node("/fc3/MatMul", "MatMul", []string{"a", "fc3_t"}, "v"),
		node("/head/fc2/MatMul", "MatMul", []string{"a", "onnx::MatMul_7"}, "y"),
		node("/s1/MatMul", "MatMul", []string{"a", "shared"}, "s1"),
		node("/s2/MatMul", "MatMul", []string{"a", "shared"}, "s2"),
		node("/sum/Add", "Add", []string{"s1", "s2"}, "z"),
	}
	m := onnx.NewModel(&onnxpb.ModelProto{IrVersion: proto.Int64(8), Graph: g, OpsetImport: []*onnxpb.OperatorSetIdProto{{Version: proto.Int64(17)}}})
	targets, err := FindTargets(m)
	if err != nil {
		t.Fatal(err)
	}
	if got := modules(targets); !slices.Equal(got, []string{"fc1", "fc3", "head.fc2"}) || !targets[0].Gemm || !targets[0].TransB || targets[0].In != 3 || targets[0].Out != 4 ||
		targets[1].Gemm || !targets[1].TransB || targets[1].Weight != "fc3.weight" || targets[1].In != 4 || targets[1].Out != 5 || !targets[2].OutputLayer {
		t.Fatalf("targets %+v", targets)
	}
	adapted := m.Clone()
	c := Config{R: 2, Alpha: 3, Seed: 9}
	ads, err := Insert(adapted, targets, c)
	if err != nil {
		t.Fatal(err)
	}
	values := map[string][]float32{}
	for _, a := range ads {
		for _, name := range []string{a.A, a.B} {
			init := onnx.Initializer(adapted.Graph(), name)
			n, _ := onnx.NumElements(init)
			values[name] = vals(int(n))
			if err := onnx.SetTensorFloats(init, values[name]); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := Merge(m, ads, c.Scale(), values); err != nil {
		t.Fatal(err)
	}
	run := func(m *onnx.Model) []float32 {
		b, err := m.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		s, err := ort.NewSession(b, []string{"y", "v"}, ort.Options{Threads: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Destroy()
		out, err := s.Run(map[string]*ort.Tensor{"x": {Shape: []int64{2, 3}, F32: []float32{1, -2, 0.5, 0.25, 3, -1}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return append(out["y"].F32, out["v"].F32...)
	}
	got, want := run(adapted), run(m)
	for i := range want {
		if math.Abs(float64(got[i]-want[i])) > 1e-5*math.Max(1, math.Abs(float64(want[i]))) {
			t.Fatalf("adapted graph gives %v, merged %v", got, want)
		}
	}
	if len(m.Graph().GetNode()) != 8 {
		t.Fatal("merge changed the graph")
	}
}
