package pipeline

import (
	"context"
	"fmt"
	"slices"
	"testing"
)

var genModels = []string{"gpt2_opset17", "llama_opset17", "llama_kv_opset17"}

func genModelPath(name string) string { return "../testdata/models/" + name + ".onnx" }

// loadGen loads a test model for generation; notices go to the test log.
func loadGen(t testing.TB, name string, cache CacheMode, threads int) *Generator {
	t.Helper()
	gen, err := LoadGenerator(genModelPath(name), GeneratorOptions{Threads: threads, Cache: cache, Notice: func(s string) { t.Log(s) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gen.Close)
	return gen
}

// mixedPrompts are prompts of different lengths (ids below the tiny models' 512).
func mixedPrompts() []Prompt {
	lens := []int{5, 1, 9, 3}
	var ps []Prompt
	for i, n := range lens {
		ids := make([]int64, n)
		for t := range ids {
			ids[t] = int64((i*97 + t*31 + 7) % 500)
		}
		ps = append(ps, Prompt{IDs: ids, Index: i})
	}
	return ps
}

func generate(t testing.TB, gen *Generator, ps []Prompt, o SampleOptions) []Completion {
	t.Helper()
	out, err := gen.Generate(context.Background(), ps, o)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestGenerateCacheMatchesNoCache: greedy decoding with the KV cache (the export's own
// for llama_kv, derived by graph surgery for the plain exports) gives the tokens of
// decoding without it, on a mixed-length batch, left- and right-padded.
func TestGenerateCacheMatchesNoCache(t *testing.T) {
	for _, name := range genModels {
		t.Run(name, func(t *testing.T) {
			cached := loadGen(t, name, CacheAuto, 1)
			want := map[string]string{"gpt2_opset17": "derived", "llama_opset17": "derived", "llama_kv_opset17": "export"}[name]
			if cached.CacheMode() != want {
				t.Fatalf("cache mode %q, want %q", cached.CacheMode(), want)
			}
			plain := loadGen(t, name, CacheOff, 1)
			if plain.CacheMode() != "none" {
				t.Fatalf("CacheOff: mode %q", plain.CacheMode())
			}
			o := SampleOptions{MaxNewTokens: 20}
			ref := generate(t, plain, mixedPrompts(), o)
			for _, side := range []string{"left", "right"} {
				o.PaddingSide = side
				got := generate(t, cached, mixedPrompts(), o)
				for i := range ref {
					if !slices.Equal(got[i].IDs, ref[i].IDs) {
						t.Errorf("%s padding, prompt %d: cache %v, no cache %v", side, i, got[i].IDs, ref[i].IDs)
					}
					for k := range ref[i].Logps {
						if d := got[i].Logps[k] - ref[i].Logps[k]; d > 1e-4 || d < -1e-4 {
							t.Errorf("%s padding, prompt %d token %d: logp %v vs %v", side, i, k, got[i].Logps[k], ref[i].Logps[k])
							break
						}
					}
				}
			}
			// Each row alone gives the same tokens as in the batch.
			for i, p := range mixedPrompts() {
				alone := generate(t, cached, []Prompt{p}, o)
				if !slices.Equal(alone[0].IDs, ref[i].IDs) {
					t.Errorf("prompt %d alone: %v, in batch %v", i, alone[0].IDs, ref[i].IDs)
				}
			}
			fmt.Println(name, ref[0].IDs)
		})
	}
}
