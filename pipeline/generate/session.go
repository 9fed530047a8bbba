package generate

import (
	"fmt"
	"os"
	"path/filepath"

	"ortalign/onnx"
	"ortalign/onnx/ort"
	"ortalign/pipeline/lm"
)

// stageBytes is the initializer data above which a generation graph reaches ONNX Runtime
// through a file rather than from memory. From memory, a model's weights are held three
// times while the session opens (the serialized bytes, ONNX Runtime's parsed copy, its
// tensors), 2.8 GB for the SmolLM2-135M shape; from a file with external data ONNX Runtime
// maps the weights and keeps only what its kernels need.
const stageBytes = 32 << 20

// openSession opens m in ONNX Runtime with the given outputs. A model with more than
// stageBytes of initializers is written to a temporary folder with its weights in
// external data, which ONNX Runtime maps; writing it reads the weights from m's mapped
// file, whose pages are then handed back to the kernel (onnx.Model.ReleaseResident), so
// the weights stay in memory once, in ONNX Runtime.
func openSession(m *onnx.Model, outputs []string, o ort.Options) (*ort.Session, error) {
	size := 0
	for _, t := range m.Graph().GetInitializer() {
		size += len(t.GetRawData())
	}
	if size <= stageBytes {
		return lm.NewModelSession(m, outputs, o)
	}
	dir, err := os.MkdirTemp("", "ortalign-generate-*")
	if err != nil {
		return nil, fmt.Errorf("stage the generation graph: %w", err)
	}
	defer os.RemoveAll(dir)
	staged := filepath.Join(dir, "model.onnx")
	err = m.Clone().Save(staged, onnx.SaveOptions{ExternalData: onnx.ExternalAlways, ExternalDataName: "weights.bin"})
	m.ReleaseResident()
	if err != nil {
		return nil, fmt.Errorf("stage the generation graph: %w", err)
	}
	return ort.NewSessionFromFile(staged, outputs, o)
}
