package generate

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
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

// benchPrompts are n prompts of promptLen tokens (the ids of BenchmarkGenerate and of
// testdata/bench_generate.py).
func benchPrompts(n, promptLen int) []Prompt {
	var ps []Prompt
	for i := 0; i < n; i++ {
		ids := make([]int64, promptLen)
		for t := range ids {
			ids[t] = int64((i*131 + t*17 + 3) % 500)
		}
		ps = append(ps, Prompt{IDs: ids, Index: i})
	}
	return ps
}

// envInt reads an integer setting of the benchmarks, def when unset.
func envInt(b *testing.B, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		b.Fatalf("%s=%q: %v", name, s, err)
	}
	return n
}

// BenchmarkGenerateSide is BenchmarkGenerate's KV-cached greedy run on any model, for the
// side-by-side with PyTorch (scripts/bench_generate.sh, testdata/bench_generate.py):
// ORTALIGN_BENCH_BATCH prompts (default 4) of 32 tokens (the ids of BenchmarkGenerate),
// 64 new tokens, greedy, after one warm-up run. ORTALIGN_BENCH_GEN_MODEL picks the model
// (default the tiny Llama), ORTALIGN_BENCH_THREADS the ORT threads (default 1),
// ORTALIGN_BENCH_SPIN=1 lets ORT's idle threads spin. Reports tokens/s (generated tokens
// over wall time, prefill included), ms/step (wall time over decoding steps), the share of
// the wall time in ONNX Runtime's runs, and the process's peak RSS.
//
//	ORTALIGN_BENCH_THREADS=2 go test ./pipeline/generate -run '^$' -bench GenerateSide -benchtime 3x
func BenchmarkGenerateSide(b *testing.B) {
	const promptLen, newTokens = 32, 64
	model := os.Getenv("ORTALIGN_BENCH_GEN_MODEL")
	if model == "" {
		model = genModelPath("llama_opset17")
	}
	threads := envInt(b, "ORTALIGN_BENCH_THREADS", 1)
	batch := envInt(b, "ORTALIGN_BENCH_BATCH", 4)
	ps := benchPrompts(batch, promptLen)
	gen, err := LoadGenerator(model, GeneratorOptions{Threads: threads, Spin: os.Getenv("ORTALIGN_BENCH_SPIN") == "1", Notice: func(s string) { b.Log(s) }})
	if err != nil {
		b.Fatal(err)
	}
	defer gen.Close()
	b.Logf("cache mode %s (in place %v), %d threads, batch %d", gen.CacheMode(), gen.inPlace, threads, batch)
	o := SampleOptions{MaxNewTokens: newTokens}
	if _, err := gen.Generate(context.Background(), ps, o); err != nil { // warm-up
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	runs := 0.0
	for i := 0; i < b.N; i++ {
		if _, err := gen.Generate(context.Background(), ps, o); err != nil {
			b.Fatal(err)
		}
		runs += gen.Stats().RunSeconds
	}
	el := time.Since(start).Seconds()
	b.ReportMetric(float64(b.N*batch*newTokens)/el, "tokens/s")
	b.ReportMetric(el*1000/float64(b.N*newTokens), "ms/step")
	b.ReportMetric(runs/el, "ort_share")
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		b.ReportMetric(float64(ru.Maxrss)/1024, "peakRSS_MB")
	}
}

// BenchmarkReadBandwidth measures how fast ORTALIGN_BENCH_THREADS goroutines (default 1)
// read memory: each sums its share of a 1 GiB buffer (eight independent 64-bit sums, so
// the loop is not what limits it), the buffer written first so that every page is
// resident. Reports GB/s (bytes read over wall time) for the decoding bound of
// scripts/bench_generate.sh: batch × GB/s ÷ the model's weight bytes tokens/s.
func BenchmarkReadBandwidth(b *testing.B) {
	threads := envInt(b, "ORTALIGN_BENCH_THREADS", 1)
	buf := make([]uint64, 1<<27) // 1 GiB
	for i := range buf {
		buf[i] = uint64(i)
	}
	sink := make([]uint64, threads)
	b.ResetTimer()
	start := time.Now()
	for n := 0; n < b.N; n++ {
		var wg sync.WaitGroup
		for w := 0; w < threads; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				part := buf[w*len(buf)/threads : (w+1)*len(buf)/threads]
				var s0, s1, s2, s3, s4, s5, s6, s7 uint64
				for i := 0; i+8 <= len(part); i += 8 {
					s0 += part[i]
					s1 += part[i+1]
					s2 += part[i+2]
					s3 += part[i+3]
					s4 += part[i+4]
					s5 += part[i+5]
					s6 += part[i+6]
					s7 += part[i+7]
				}
				sink[w] += s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7
			}()
		}
		wg.Wait()
	}
	el := time.Since(start).Seconds()
	b.ReportMetric(float64(b.N)*float64(8*len(buf))/el/1e9, "GB/s")
	if sink[0] == 1 {
		b.Log("unlikely sum")
	}
}
