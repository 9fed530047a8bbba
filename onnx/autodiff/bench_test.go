package autodiff

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"ortalign/onnx"
	"ortalign/onnx/ort"
)

// BenchmarkBackward compares, on the benchmark model (GPT-2 style, n_embd
// 256, 4 layers, vocab 8192; testdata/bench, made by scripts/bench.sh),
// the forward pass with the DPO loss against the generated training graph
// (forward, loss and all parameter gradients) on 8 pairs of 128 tokens.
// Reverse mode costs about twice the forward's FLOPs, so "train/forward"
// near 3 means the backward adds little beyond its matrix products.
func BenchmarkBackward(b *testing.B) {
	path := filepath.Join("..", "..", "testdata", "bench", "gpt2_bench.onnx")
	if _, err := os.Stat(path); err != nil {
		b.Skip("no benchmark model: run scripts/bench.sh (needs python3-torch)")
	}
	m, err := onnx.Load(path)
	if err != nil {
		b.Fatal(err)
	}
	t := &testing.T{}
	loss, _ := appendDPOLoss(t, m, 0.1)
	var trainable []string
	for _, init := range m.Graph().GetInitializer() {
		if onnx.DataType(init.GetDataType()) == onnx.Float && len(init.GetDims()) > 0 {
			trainable = append(trainable, init.GetName())
		}
	}
	res, err := Build(m, Config{Loss: loss, Trainable: trainable})
	if err != nil {
		b.Fatal(err)
	}
	const rows, seq = 16, 128
	rng := rand.New(rand.NewPCG(1, 2))
	feeds := map[string]*ort.Tensor{
		"input_ids":       {Shape: []int64{rows, seq}, I64: make([]int64, rows*seq)},
		"attention_mask":  {Shape: []int64{rows, seq}, I64: make([]int64, rows*seq)},
		"completion_mask": {Shape: []int64{rows, seq}, F32: make([]float32, rows*seq)},
		"ref_logps":       {Shape: []int64{rows}, F32: make([]float32, rows)},
	}
	for i := range rows * seq {
		feeds["input_ids"].I64[i] = rng.Int64N(8192)
		feeds["attention_mask"].I64[i] = 1
		if i%seq >= seq/2 {
			feeds["completion_mask"].F32[i] = 1
		}
	}
	for _, p := range trainable {
		feeds[p] = paramTensor(&testing.T{}, onnx.Initializer(m.Graph(), p))
	}
	fwd := m.Clone()
	if err := onnx.AddOutput(fwd.Graph(), loss, onnx.Float, []onnx.Dim{}); err != nil {
		b.Fatal(err)
	}
	fwdBytes, err := fwd.Marshal()
	if err != nil {
		b.Fatal(err)
	}
	trainBytes, err := res.Model.Marshal()
	if err != nil {
		b.Fatal(err)
	}
	outs := []string{loss}
	for _, p := range trainable {
		outs = append(outs, res.Grads[p])
	}
	var perStep [2]float64
	for i, c := range []struct {
		name  string
		model []byte
		outs  []string
	}{{"forward", fwdBytes, []string{loss}}, {"train", trainBytes, outs}} {
		b.Run(c.name, func(b *testing.B) {
			s, err := ort.NewSession(c.model, c.outs, ort.Options{Threads: 2})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Destroy()
			in := map[string]*ort.Tensor{}
			for _, info := range s.Inputs() {
				in[info.Name] = feeds[info.Name]
			}
			if _, err := s.Run(in, nil); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for range b.N {
				if _, err := s.Run(in, nil); err != nil {
					b.Fatal(err)
				}
			}
			perStep[i] = b.Elapsed().Seconds() / float64(b.N)
			b.ReportMetric(perStep[i]*1e3, "ms/step")
		})
	}
	if perStep[0] > 0 {
		b.ReportMetric(perStep[1]/perStep[0], "train/forward")
	}
}
