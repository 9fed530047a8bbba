package generate

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// BenchmarkGenerate measures greedy generation on the tiny models with and without the KV
// cache: a batch of 4 prompts of 32 tokens, 64 new tokens each, 1 ORT thread. Reported:
// tokens/s (generated tokens over wall time, prefill included) and ms/step (the latency
// of one decoding step of the batch, i.e. per generated token of a row).
//
//	go test ./pipeline -run '^$' -bench Generate -benchtime 5x
func BenchmarkGenerate(b *testing.B) {
	const batch, promptLen, newTokens = 4, 32, 64
	var ps []Prompt
	for i := 0; i < batch; i++ {
		ids := make([]int64, promptLen)
		for t := range ids {
			ids[t] = int64((i*131 + t*17 + 3) % 500)
		}
		ps = append(ps, Prompt{IDs: ids, Index: i})
	}
	for _, name := range genModels {
		for _, c := range []struct {
			label string
			mode  CacheMode
		}{{"cache", CacheAuto}, {"nocache", CacheOff}} {
			b.Run(fmt.Sprintf("%s/%s", name, c.label), func(b *testing.B) {
				gen := loadGen(b, name, c.mode, 1)
				o := SampleOptions{MaxNewTokens: newTokens}
				b.ResetTimer()
				start := time.Now()
				for i := 0; i < b.N; i++ {
					if _, err := gen.Generate(context.Background(), ps, o); err != nil {
						b.Fatal(err)
					}
				}
				el := time.Since(start).Seconds()
				b.ReportMetric(float64(b.N*batch*newTokens)/el, "tokens/s")
				b.ReportMetric(el*1000/float64(b.N*newTokens), "ms/step")
			})
		}
	}
}

// BenchmarkGenerateSide is BenchmarkGenerate's KV-cached greedy run on any model, for the
// side-by-side with PyTorch eager (scripts/bench_generate.sh, testdata/bench_generate.py):
// 4 prompts of 32 tokens (the same ids as BenchmarkGenerate), 64 new tokens, greedy.
// ORTALIGN_BENCH_GEN_MODEL picks the model (default the tiny Llama), ORTALIGN_BENCH_THREADS
// the ORT threads (default 1). Reports tokens/s, ms/step and the process's peak RSS.
//
//	ORTALIGN_BENCH_THREADS=2 go test ./pipeline -run '^$' -bench GenerateSide -benchtime 3x
func BenchmarkGenerateSide(b *testing.B) {
	const batch, promptLen, newTokens = 4, 32, 64
	model := os.Getenv("ORTALIGN_BENCH_GEN_MODEL")
	if model == "" {
		model = genModelPath("llama_opset17")
	}
	threads := 1
	if s := os.Getenv("ORTALIGN_BENCH_THREADS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			b.Fatal(err)
		}
		threads = n
	}
	var ps []Prompt
	for i := 0; i < batch; i++ {
		ids := make([]int64, promptLen)
		for t := range ids {
			ids[t] = int64((i*131 + t*17 + 3) % 500)
		}
		ps = append(ps, Prompt{IDs: ids, Index: i})
	}
	gen, err := LoadGenerator(model, GeneratorOptions{Threads: threads, Cache: CacheAuto, Notice: func(s string) { b.Log(s) }})
	if err != nil {
		b.Fatal(err)
	}
	defer gen.Close()
	b.Logf("cache mode %s, %d threads", gen.CacheMode(), threads)
	o := SampleOptions{MaxNewTokens: newTokens}
	if _, err := gen.Generate(context.Background(), ps, o); err != nil { // warm-up
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if _, err := gen.Generate(context.Background(), ps, o); err != nil {
			b.Fatal(err)
		}
	}
	el := time.Since(start).Seconds()
	b.ReportMetric(float64(b.N*batch*newTokens)/el, "tokens/s")
	b.ReportMetric(el*1000/float64(b.N*newTokens), "ms/step")
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		b.ReportMetric(float64(ru.Maxrss)/1024, "peakRSS_MB")
	}
}
