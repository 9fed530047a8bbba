package lora

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math"
	"slices"
	"strings"
	"testing"

	"ortalign/onnx"
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
