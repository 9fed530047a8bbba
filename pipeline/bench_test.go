package pipeline

import (
	"fmt"
	"math/rand"
	"os"
	"syscall"
	"testing"
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
	r := rand.New(rand.NewSource(0))
	rows := make([]Sequence, batch)
	for i := range rows {
		ids := make([]int64, seq)
		for t := range ids {
			ids[t] = r.Int63n(8192)
		}
		rows[i] = Sequence{IDs: ids, CompletionStart: seq / 2}
	}
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
