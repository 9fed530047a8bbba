package autodiff

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx"
)

// goldenGraphs are the SHA-256 of the training graphs (deterministic
// protobuf bytes, then the manifest's JSON) Build makes for the DPO loss
// of each tiny model, without and with gradient checkpointing. They guard
// refactors of Build that must not change what it emits; a change that
// means to change the graphs updates them (ORTALIGN_GOLDEN_PRINT=1 prints
// the new ones).
var goldenGraphs = map[string]string{
	"gpt2_opset14/checkpointing=false":      "bebf608997decbedccce48591207222a179ade6ce122dc0be0226458ac62e5bd",
	"gpt2_opset14/checkpointing=true":       "316a1edd7b5dac5515cf2c1e1217d5dbf799554786415a3bc31b8d5ada9ea627",
	"gpt2_opset17/checkpointing=false":      "908001cdcba1476643bdc05a7fa3e32f23b31215bc1ab5ec1ec819d35cc95bce",
	"gpt2_opset17/checkpointing=true":       "c6474a3cb9847cb0836a783504e84ca3115ceecd79ce3f5c8580be2ea131ada2",
	"gpt2_tied_opset17/checkpointing=false": "bddb92e29656fa4b794163726988993548ec76c2434fee9b2784307cc7636ecc",
	"gpt2_tied_opset17/checkpointing=true":  "b8c3abc58b61a8cb9c55f2a31a7e19c76b8a57fa8461dc060aee504e7a9585eb",
	"llama_opset14/checkpointing=false":     "a2bd01e68df96647c33abf8141ee6e9a73abec90c818e95281443b5c02090568",
	"llama_opset14/checkpointing=true":      "aa46fabc0d0a640fd59c9ef5cc43bbbe96e4598935ba30a90726e4843c892b56",
	"llama_opset17/checkpointing=false":     "c6a002102e62abfd2048b1d73b48384aeb23449b0e9634bf07443769bf1f9f4f",
	"llama_opset17/checkpointing=true":      "ea480ea2c620823004a1bf14b4c33a6ee8b501a3076686c7b42019fdb163bf74",
}

func TestTrainingGraphsUnchanged(t *testing.T) {
	for _, file := range []string{"gpt2_opset14", "gpt2_opset17", "gpt2_tied_opset17", "llama_opset14", "llama_opset17"} {
		for _, ck := range []bool{false, true} {
			name := fmt.Sprintf("%s/checkpointing=%v", file, ck)
			path := filepath.Join("..", "..", "testdata", "models", file+".onnx")
			if _, err := os.Stat(path); err != nil {
				t.Skipf("%s missing", path)
			}
			m, err := onnx.Load(path)
			if err != nil {
				t.Fatal(err)
			}
			loss, logps := appendDPOLoss(t, m, 0.1)
			var trainable []string
			for _, init := range m.Graph().GetInitializer() {
				if onnx.DataType(init.GetDataType()) == onnx.Float && len(init.GetDims()) > 0 {
					trainable = append(trainable, init.GetName())
				}
			}
			res, err := Build(m, Config{Loss: loss, Trainable: trainable, KeepOutputs: []string{logps}, GradientCheckpointing: ck})
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			b, err := proto.MarshalOptions{Deterministic: true}.Marshal(res.Model.Proto())
			if err != nil {
				t.Fatal(err)
			}
			j, err := json.Marshal(res.Manifest)
			if err != nil {
				t.Fatal(err)
			}
			h := sha256.New()
			h.Write(b)
			h.Write(j)
			got := hex.EncodeToString(h.Sum(nil))
			if os.Getenv("ORTALIGN_GOLDEN_PRINT") != "" {
				fmt.Printf("\t%q: %q,\n", name, got)
				continue
			}
			if want := goldenGraphs[name]; got != want {
				t.Errorf("%s: training graph hash %s, want %s", name, got, want)
			}
		}
	}
}
