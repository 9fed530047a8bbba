package onnx

import (
	"bytes"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx/onnxpb"
)

// marshalTo streams a model field by field; its bytes must be proto.Marshal's, whether
// every message is streamed or only the large ones, unknown fields included.
func TestMarshalToEqualsMarshal(t *testing.T) {
	paths := []string{"testdata/mlp.onnx", "testdata/unknown_fields.onnx"}
	more, _ := filepath.Glob("../testdata/models/*.onnx")
	paths = append(paths, more...)
	defer func(old int) { streamMin = old }(streamMin)
	for _, p := range paths {
		m, err := Load(p)
		if err != nil {
			t.Fatal(err)
		}
		want, err := proto.Marshal(m.Proto())
		if err != nil {
			t.Fatal(err)
		}
		for _, min := range []int{0, 64, 4096, 1 << 20} {
			streamMin = min
			var buf bytes.Buffer
			if err := marshalTo(&buf, m.Proto()); err != nil {
				t.Fatalf("%s streamMin %d: %v", p, min, err)
			}
			if !bytes.Equal(buf.Bytes(), want) {
				t.Fatalf("%s streamMin %d: %d bytes differ from proto.Marshal's %d", p, min, buf.Len(), len(want))
			}
		}
	}
}

// A saved model (streamed) is byte for byte the file proto.Marshal would have written.
func TestSaveStreamsMarshalBytes(t *testing.T) {
	defer func(old int) { streamMin = old }(streamMin)
	streamMin = 0
	m, err := Load("../testdata/models/llama_opset17.onnx")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := proto.Marshal(m.Proto())
	out := filepath.Join(t.TempDir(), "m.onnx")
	if err := m.Save(out, SaveOptions{ExternalData: ExternalNever}); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("saved %d bytes, proto.Marshal %d", len(got), len(want))
	}
}

// FloatsView shares the raw_data's memory; TensorFloats and SetTensorFloats (memmove
// on little-endian machines) agree with the element-wise conversion.
func TestFloatsView(t *testing.T) {
	data := []float32{1.5, -2, 3.25, float32(math.Inf(1)), 0}
	tp := FloatTensor("w", []int64{5}, data)
	v, ok := FloatsView(tp)
	if !ok || len(v) != 5 || v[2] != 3.25 {
		t.Fatalf("view %v ok %v", v, ok)
	}
	v[0] = 7
	got, err := TensorFloats(tp)
	if err != nil || got[0] != 7 || got[3] != data[3] {
		t.Fatalf("after a write through the view: %v %v", got, err)
	}
	got[1] = 9 // TensorFloats copies
	if v[1] != -2 {
		t.Fatal("TensorFloats shares memory")
	}
	if err := SetTensorFloats(tp, []float32{1, 2, 3, 4, 5}); err != nil {
		t.Fatal(err)
	}
	if b := tp.RawData; math.Float32frombits(binary.LittleEndian.Uint32(b[8:])) != 3 {
		t.Fatalf("raw %v", b)
	}
	if _, ok := FloatsView(Int64Tensor("i", []int64{1}, []int64{1})); ok {
		t.Fatal("view of an int64 tensor")
	}
	if _, ok := FloatsView(&onnxpb.TensorProto{DataType: proto.Int32(int32(Float)), Dims: []int64{1}, FloatData: []float32{1}}); ok {
		t.Fatal("view of float_data")
	}
}
