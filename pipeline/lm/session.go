package lm

import (
	"fmt"
	"os"
	"path/filepath"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx"
	"ortalign/onnx/ort"
)

// inlineLimit is the largest model handed to ONNX Runtime from memory; protobuf cannot
// serialize more than 2 GB in one message. A variable so tests can force the file path.
var InlineLimit = onnx.MaxProtoSize

// newModelSession opens m in ONNX Runtime with the given outputs: from memory when it
// serializes under inlineLimit, else through a temporary model.onnx with its weights in
// external data, which is removed once the session holds them.
func NewModelSession(m *onnx.Model, outputs []string, o ort.Options) (*ort.Session, error) {
	if int64(proto.Size(m.Proto())) < int64(InlineLimit) {
		b, err := m.Marshal()
		if err != nil {
			return nil, err
		}
		return ort.NewSession(b, outputs, o)
	}
	dir, err := os.MkdirTemp("", "ortalign-model-*")
	if err != nil {
		return nil, fmt.Errorf("stage large model: %w", err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "model.onnx")
	if err := m.Clone().Save(path, onnx.SaveOptions{ExternalData: onnx.ExternalAlways, ExternalDataName: "model.onnx_data"}); err != nil {
		return nil, fmt.Errorf("stage large model: %w", err)
	}
	return ort.NewSessionFromFile(path, outputs, o)
}
