package generate

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestPlainSamplingFastPaths: greedy decoding and sampling at temperature 1 without a
// penalty or filter (argmax32, sampleRaw with the normalizer from logz) pick the tokens of
// the general path (processLogits, argmax, sampleScores) from the same draws.
func TestPlainSamplingFastPaths(t *testing.T) {
	src := rand.New(rand.NewPCG(3, 4))
	for trial := 0; trial < 200; trial++ {
		raw := make([]float32, 1+src.IntN(300))
		scale := []float32{0.1, 3, 40}[trial%3]
		for i := range raw {
			raw[i] = float32(src.NormFloat64()) * scale
		}
		if trial%7 == 0 {
			raw[src.IntN(len(raw))] = float32(math.Inf(-1))
		}
		m := math.Inf(-1)
		for _, v := range raw {
			m = max(m, float64(v))
		}
		z := 0.0
		for _, v := range raw {
			z += math.Exp(float64(v) - m)
		}
		logz := m + math.Log(z)
		buf := make([]float64, len(raw))
		for _, temp := range []float64{0, 1} {
			o := SampleOptions{Temperature: temp}
			if err := o.normalize(); err != nil {
				t.Fatal(err)
			}
			fast := nextToken(buf, raw, logz, nil, &o, rand.New(rand.NewPCG(uint64(trial), 9)))
			processLogits(buf, raw, nil, &o)
			var want int
			if temp == 0 {
				want = argmax(buf)
			} else {
				want = sampleScores(buf, rand.New(rand.NewPCG(uint64(trial), 9)))
			}
			if fast != int64(want) {
				t.Fatalf("trial %d, temperature %v: fast path picked %d, the general one %d", trial, temp, fast, want)
			}
		}
	}
}
