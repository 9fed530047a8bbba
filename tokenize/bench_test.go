package tokenize

import (
	"fmt"
	"testing"
)

// benchTargetBytes is the size of the benchmark text.
const benchTargetBytes = 3 << 20

// benchDocs returns the benchmark documents: the corpus strings, each prefixed with its
// round number, repeated until they hold benchTargetBytes bytes. testdata/bench_reference.mjs
// builds the same documents for HuggingFace's library.
func benchDocs(t testing.TB) ([]string, int) {
	texts := corpus(t)
	var docs []string
	n := 0
	for round := 0; n < benchTargetBytes; round++ {
		for _, s := range texts {
			d := fmt.Sprintf("%d: %s", round, s)
			docs = append(docs, d)
			n += len(d)
		}
	}
	return docs, n
}

// BenchmarkEncode encodes a few MB of mixed text on one goroutine and reports tokens/s.
// Compare with `node testdata/bench_reference.mjs` (HuggingFace's Rust library, one thread).
func BenchmarkEncode(b *testing.B) {
	docs, size := benchDocs(b)
	for _, name := range []string{"gpt2", "llama3", "qwen3", "gpt4o", "llama2", "gemma3", "bert"} {
		b.Run(name, func(b *testing.B) {
			tk := loadNamed(b, name)
			b.SetBytes(int64(size))
			b.ResetTimer()
			tokens := 0
			for i := 0; i < b.N; i++ {
				for _, d := range docs {
					ids, _ := tk.Encode(d, false)
					tokens += len(ids)
				}
			}
			b.ReportMetric(float64(tokens)/b.Elapsed().Seconds(), "tokens/s")
		})
	}
}
