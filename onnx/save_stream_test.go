package onnx

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"
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
