package objective

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
	"ortalign/onnx/ort"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/lm"
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
const benchModel = "../../testdata/bench/gpt2_bench.onnx"

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
			lpm, err := lm.LoadLogProbModel(benchModel, lm.ModelOptions{Threads: threads})
			if err != nil {
				b.Fatal(err)
			}
			defer lpm.Close()
			if _, err := lpm.SequenceLogps(rows); err != nil { // warm-up
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := lpm.SequenceLogps(rows); err != nil {
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
func benchBatch(rows, seq int) []lm.Sequence {
	r := rand.New(rand.NewSource(0))
	out := make([]lm.Sequence, rows)
	for i := range out {
		ids := make([]int64, seq)
		for t := range ids {
			ids[t] = r.Int63n(8192)
		}
		out[i] = lm.Sequence{IDs: ids, CompletionStart: seq / 2}
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
	pairs := make([]encode.EncodedPair, pairsN)
	for i := range pairs {
		pairs[i] = encode.EncodedPair{Index: i, Chosen: rows[i], Rejected: rows[pairsN+i]}
	}
	m, err := onnx.Load(benchModel)
	if err != nil {
		b.Fatal(err)
	}
	params := onnx.Summary(m).ParamCount
	for _, threads := range []int{1, 2} {
		b.Run(fmt.Sprintf("threads=%d", threads), func(b *testing.B) {
			cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimAdamW, WeightDecay: 0.01},
				LR: 1e-5, BatchSize: pairsN, Threads: threads, Profile: os.Getenv("ORTALIGN_PROFILE")}
			tr, err := engine.NewEngine(benchModel, m, cfg, DPO{Loss: LossConfig{Type: LossSigmoid, Beta: 0.1}})
			if err != nil {
				b.Fatal(err)
			}
			defer tr.Close()
			ref := make([]float64, pairsN)
			if _, err := tr.StepOn([][]encode.EncodedPair{WithReference(pairs, ref, ref)}, cfg.LR); err != nil { // warm-up
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := tr.StepOn([][]encode.EncodedPair{WithReference(pairs, ref, ref)}, cfg.LR); err != nil {
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
	lm.AddIdentity(g, bl.MatMul("a", "b"), "c")
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

// realModel is the model of the real-size benchmarks (testdata/gen_bench_real.py export
// smollm2 makes testdata/bench/smollm2.onnx); ORTALIGN_BENCH_MODEL overrides it.
func realModel(tb testing.TB) string {
	p := os.Getenv("ORTALIGN_BENCH_MODEL")
	if p == "" {
		p = "../../testdata/bench/smollm2.onnx"
	}
	if _, err := os.Stat(p); err != nil {
		tb.Skip("no real-size benchmark model: scripts/bench.sh --real makes it (needs python3-torch)")
	}
	return p
}

// envInt is the integer in the environment variable name, or def.
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

// procStatusMB reads a VmRSS/VmHWM-style line of /proc/self/status in MiB.
func procStatusMB(key string) float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, key+":") {
			f := strings.Fields(line[len(key)+1:])
			if len(f) > 0 {
				kb, _ := strconv.ParseFloat(f[0], 64)
				return kb / 1024
			}
		}
	}
	return 0
}

// TestRealMemoryPhases walks the phases of an `ortalign dpo` run on the real-size model
// (load, training graph, sessions, reference, step, export, checkpoint) and logs, after
// each, its seconds, the process's RSS and peak, and Go's heap (before and after a GC:
// garbage vs live). Runs only with ORTALIGN_BENCH_PHASES=1 (minutes, GBs):
//
//	ORTALIGN_BENCH_PHASES=1 ORTALIGN_BENCH_SEQ=128 go test ./pipeline -run RealMemoryPhases -v -timeout 30m
func TestRealMemoryPhases(t *testing.T) {
	if os.Getenv("ORTALIGN_BENCH_PHASES") == "" {
		t.Skip("set ORTALIGN_BENCH_PHASES=1 (and make the model with scripts/bench.sh --real)")
	}
	path := realModel(t)
	seq := envInt("ORTALIGN_BENCH_SEQ", 128)
	threads := envInt("ORTALIGN_BENCH_THREADS", 2)
	last := time.Now()
	phase := func(name string) {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		heap := ms.HeapAlloc
		runtime.GC()
		runtime.ReadMemStats(&ms)
		rss := procStatusMB("VmRSS")
		held := float64(ms.Sys-ms.HeapReleased) / (1 << 20)
		t.Logf("%-28s %6.1fs  RSS %6.0f MB  peak %6.0f MB  Go heap %6.0f MB (live %6.0f MB, held %6.0f MB)  non-Go %6.0f MB",
			name, time.Since(last).Seconds(), rss, procStatusMB("VmHWM"),
			float64(heap)/(1<<20), float64(ms.HeapAlloc)/(1<<20), held, rss-held)
		last = time.Now()
	}
	phase("start")
	m, err := onnx.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	phase("onnx.Load")
	vocab := lm.StaticVocabSize(m)
	r := rand.New(rand.NewSource(1))
	ids := func(n int) []int64 {
		out := make([]int64, n)
		for i := range out {
			out[i] = 3 + r.Int63n(int64(vocab-3))
		}
		return out
	}
	pairs := make([]encode.EncodedPair, 2)
	for i := range pairs {
		p := ids(seq / 2)
		pairs[i] = encode.EncodedPair{Index: i,
			Chosen:   lm.Sequence{IDs: append(append([]int64{}, p...), ids(seq/2)...), CompletionStart: seq / 2},
			Rejected: lm.Sequence{IDs: append(append([]int64{}, p...), ids(seq/2)...), CompletionStart: seq / 2}}
	}
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimAdamW}, LR: 1e-6, BatchSize: 2, Threads: threads,
		MaxGradNorm: 1, TieTransposedCopies: true, Profile: os.Getenv("ORTALIGN_PROFILE")}
	obj := DPO{Loss: LossConfig{Type: LossSigmoid, Beta: 0.1}}
	g, err := engine.BuildTrainingGraph(m, obj, engine.GraphConfig{TieTransposedCopies: true})
	if err != nil {
		t.Fatal(err)
	}
	phase("BuildTrainingGraph")
	t.Logf("training graph: %d nodes, %d initializers, %d trainable, proto %d MB",
		len(g.Model.Graph().Node), len(g.Model.Graph().Initializer), len(g.Trainable), proto.Size(g.Model.Proto())>>20)
	g = nil
	phase("drop graph")
	e, err := engine.NewEngine(path, m, cfg, obj)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	phase("NewEngine (graph+session)")
	pairs, err = ReferenceFromPolicy(context.Background(), e, pairs, nil)
	if err != nil {
		t.Fatal(err)
	}
	phase("reference (eval session)")
	for s := 0; s < envInt("ORTALIGN_BENCH_STEPS", 2); s++ {
		mt, err := e.StepOn([][]encode.EncodedPair{pairs}, cfg.LR)
		if err != nil {
			t.Fatal(err)
		}
		phase(fmt.Sprintf("step %d (loss %.4f)", s+1, mt.Value(engine.LossOutput)))
	}
	dir := t.TempDir()
	if err := e.Export(dir + "/model.onnx"); err != nil {
		t.Fatal(err)
	}
	phase("Export")
	if err := e.SaveCheckpoint(dir+"/checkpoint.bin", map[string]string{}); err != nil {
		t.Fatal(err)
	}
	phase("checkpoint")
	t.Logf("Go heap objects: params+grads+moments of %d tensors", len(e.Trainable()))
}

// BenchmarkScoreReal measures scoring throughput on the real-size model (batch
// ORTALIGN_BENCH_BATCH, default 4, × ORTALIGN_BENCH_SEQ tokens, default 256, 2 threads),
// as `gen_bench_real.py score` does in PyTorch.
func BenchmarkScoreReal(b *testing.B) {
	path := realModel(b)
	batch, seq := envInt("ORTALIGN_BENCH_BATCH", 4), envInt("ORTALIGN_BENCH_SEQ", 256)
	lpm, err := lm.LoadLogProbModel(path, lm.ModelOptions{Threads: envInt("ORTALIGN_BENCH_THREADS", 2)})
	if err != nil {
		b.Fatal(err)
	}
	defer lpm.Close()
	r := rand.New(rand.NewSource(7))
	rows := make([]lm.Sequence, batch)
	for i := range rows {
		ids := make([]int64, seq)
		for t := range ids {
			ids[t] = 3 + r.Int63n(49000)
		}
		rows[i] = lm.Sequence{IDs: ids, CompletionStart: seq / 2}
	}
	if _, err := lpm.SequenceLogps(rows); err != nil { // warm-up
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := lpm.SequenceLogps(rows); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(batch*seq*b.N)/b.Elapsed().Seconds(), "tokens/s")
	b.ReportMetric(peakRSSMB(), "peak-RSS-MB")
}

// BenchmarkBuildTrainingGraphReal measures building the DPO training graph of the
// real-size model (onnx.Load not counted): wall time per build and the process's
// peak RSS. ORTALIGN_AUTODIFF_TRACE=1 logs autodiff.Build's phases to stderr.
//
//	go test ./pipeline -run XXX -bench BuildTrainingGraphReal -benchtime 1x -cpuprofile cpu.out -memprofile mem.out
func BenchmarkBuildTrainingGraphReal(b *testing.B) {
	path := realModel(b)
	m, err := onnx.Load(path)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		g, err := engine.BuildTrainingGraph(m, DPO{Loss: LossConfig{Type: LossSigmoid, Beta: 0.1}}, engine.GraphConfig{TieTransposedCopies: true})
		if err != nil {
			b.Fatal(err)
		}
		if i == 0 {
			b.Logf("training graph: %d nodes, %d initializers, %d trainable",
				len(g.Model.Graph().Node), len(g.Model.Graph().Initializer), len(g.Trainable))
		}
	}
	b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/build")
	b.ReportMetric(peakRSSMB(), "peak-RSS-MB")
}
