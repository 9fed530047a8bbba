package pipeline

import (
	"context"
	"fmt"
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
