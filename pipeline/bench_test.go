package pipeline

import (
	"fmt"
	"math/rand"
	"os"
	"syscall"
	"testing"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
	"ortalign/onnx/ort"
)

// peakRSSMB is the process's peak resident set size so far.
func peakRSSMB() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Maxrss) / 1024 // Linux reports KiB
}

// benchModel is made by `python3 testdata/gen_bench.py` (GPT-2 style, n_embd 256,
// 4 layers, vocab 8192); scripts/bench.sh makes it and runs PyTorch side by side.
const benchModel = "../testdata/bench/gpt2_bench.onnx"

// BenchmarkScore measures scoring throughput (batch 16 × 128 tokens, completion = the
// second half of each row, as gen_bench.py --torch-bench does) at 1 and 2 threads.
func BenchmarkScore(b *testing.B) {
	if _, err := os.Stat(benchModel); err != nil {
		b.Skip("no benchmark model: run scripts/bench.sh (needs python3-torch)")
	}
	const batch, seq = 16, 128
	rows := benchBatch(batch, seq)
	for _, threads := range []int{1, 2} {
		b.Run(fmt.Sprintf("threads=%d", threads), func(b *testing.B) {
			lm, err := LoadLogProbModel(benchModel, ModelOptions{Threads: threads})
			if err != nil {
				b.Fatal(err)
			}
			defer lm.Close()
			if _, err := lm.SequenceLogps(rows); err != nil { // warm-up
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := lm.SequenceLogps(rows); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(batch*seq*b.N)/b.Elapsed().Seconds(), "tokens/s")
			b.ReportMetric(peakRSSMB(), "peak-RSS-MB")
		})
	}
}

// benchBatch is the benchmark batch: rows of 128 random ids whose second half is the
// completion, as testdata/gen_bench.py and gen_dpo_oracle.py --bench use.
func benchBatch(rows, seq int) []Sequence {
	r := rand.New(rand.NewSource(0))
	out := make([]Sequence, rows)
	for i := range out {
		ids := make([]int64, seq)
		for t := range ids {
			ids[t] = r.Int63n(8192)
		}
		out[i] = Sequence{IDs: ids, CompletionStart: seq / 2}
	}
	return out
}

// BenchmarkDPOStep measures one DPO training step on the benchmark model: policy forward
// on 8 chosen + 8 rejected rows of 128 tokens, loss, generated backward (one ORT run),
// then AdamW in Go. Reports tokens/s, achieved GFLOP/s (6 × parameters × tokens per step)
// and peak RSS; compare with `python3 testdata/gen_dpo_oracle.py --bench`.
func BenchmarkDPOStep(b *testing.B) {
	if _, err := os.Stat(benchModel); err != nil {
		b.Skip("no benchmark model: run scripts/bench.sh (needs python3-torch)")
	}
	const pairsN, seq = 8, 128
	rows := benchBatch(2*pairsN, seq)
	pairs := make([]EncodedPair, pairsN)
	for i := range pairs {
		pairs[i] = EncodedPair{Index: i, Chosen: rows[i], Rejected: rows[pairsN+i]}
	}
	m, err := onnx.Load(benchModel)
	if err != nil {
		b.Fatal(err)
	}
	params := onnx.Summary(m).ParamCount
	for _, threads := range []int{1, 2} {
		b.Run(fmt.Sprintf("threads=%d", threads), func(b *testing.B) {
			cfg := TrainConfig{Optim: OptimConfig{Name: OptimAdamW, WeightDecay: 0.01},
				LR: 1e-5, BatchSize: pairsN, Threads: threads, Profile: os.Getenv("ORTALIGN_PROFILE")}
			tr, err := NewEngine(benchModel, m, cfg, DPO{Loss: LossConfig{Type: LossSigmoid, Beta: 0.1}})
			if err != nil {
				b.Fatal(err)
			}
			defer tr.Close()
			ref := make([]float64, pairsN)
			if _, err := tr.StepOn([][]EncodedPair{WithReference(pairs, ref, ref)}, cfg.LR); err != nil { // warm-up
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := tr.StepOn([][]EncodedPair{WithReference(pairs, ref, ref)}, cfg.LR); err != nil {
					b.Fatal(err)
				}
			}
			sec := b.Elapsed().Seconds() / float64(b.N)
			tokens := float64(2 * pairsN * seq)
			b.ReportMetric(tokens/sec, "tokens/s")
			b.ReportMetric(6*float64(params)*tokens/sec/1e9, "GFLOP/s")
			b.ReportMetric(peakRSSMB(), "peak-RSS-MB")
		})
	}
}

// BenchmarkMatMul measures ONNX Runtime's float32 MatMul throughput on this machine
// (2048×256 by 256×1024, the shape of the benchmark model's MLP), the yardstick for the
// DPO step's FLOP utilisation.
func BenchmarkMatMul(b *testing.B) {
	const M, K, N = 2048, 256, 1024
	g := &onnxpb.GraphProto{Name: proto.String("matmul")}
	onnx.AddInput(g, "a", onnx.Float, onnx.Dims(M, K))
	onnx.AddInput(g, "b", onnx.Float, onnx.Dims(K, N))
	bl := onnx.NewBuilder(g, 17, "")
	addIdentity(g, bl.MatMul("a", "b"), "c")
	onnx.AddOutput(g, "c", onnx.Float, onnx.Dims(M, N))
	model := onnx.NewModel(&onnxpb.ModelProto{IrVersion: proto.Int64(8), Graph: g,
		OpsetImport: []*onnxpb.OperatorSetIdProto{{Domain: proto.String(""), Version: proto.Int64(17)}}})
	bytes, err := model.Marshal()
	if err != nil {
		b.Fatal(err)
	}
	a := &ort.Tensor{Shape: []int64{M, K}, F32: make([]float32, M*K)}
	w := &ort.Tensor{Shape: []int64{K, N}, F32: make([]float32, K*N)}
	c := &ort.Tensor{Shape: []int64{M, N}, F32: make([]float32, M*N)}
	for i := range a.F32 {
		a.F32[i] = float32(i%7) * 0.1
	}
	for _, threads := range []int{1, 2} {
		b.Run(fmt.Sprintf("threads=%d", threads), func(b *testing.B) {
			s, err := ort.NewSession(bytes, nil, ort.Options{Threads: threads})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Destroy()
			in := map[string]*ort.Tensor{"a": a, "b": w}
			into := map[string]*ort.Tensor{"c": c}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := s.Run(in, into); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(2*M*K*N*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}
