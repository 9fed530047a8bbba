package rollout

import (
	"context"
	"math"
	"ortalign/onnx"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/generate"
	"ortalign/pipeline/lm"
	"ortalign/pipeline/objective"
	"slices"
	"testing"
)

// TestGeneratorFedEngineParams: a generator built once over the engine's forward and fed
// its live parameter buffers (Engine.NewGenerator) samples, after a few SGD steps, the
// tokens of a generator built from Engine.Model() — greedy and seeded, with the cache
// and without — on the tiny Llama (derived and exported KV cache), the tied GPT-2 (the
// tie in the graph, and the exporter's transposed copy read as Transpose(wte)) and a
// LoRA Llama (the adapted graph, adapters fed); and differs from the starting weights'
// samples, so the steps mattered.
func TestGeneratorFedEngineParams(t *testing.T) {
	var seqs []lm.Sequence
	for i, p := range policyPrompts() {
		ids := slices.Clone(p.IDs)
		for k := 0; k < 6; k++ {
			ids = append(ids, int64((i*53+k*11+5)%500))
		}
		seqs = append(seqs, lm.Sequence{IDs: ids, CompletionStart: len(p.IDs)})
	}
	for _, c := range []struct {
		name, model, mode string // mode: the cache the fed generator uses
		lr                float64
		ties              int // transposed copies found (TieTransposedCopies)
		adapter           engine.Adapter
	}{
		{"llama", "llama_opset17", "derived", 0.5, 0, nil},
		// The export's own KV cache.
		{"llama_kv", "llama_kv_opset17", "export", 0.5, 0, nil},
		// The tie kept in the graph: one initializer feeds the Gather and, transposed, the
		// lm_head MatMul.
		{"gpt2_tied", "gpt2_tied_opset17", "derived", 0.5, 0, nil},
		// The exporter's transposed copy, trained as the embedding.
		{"gpt2_copy_tied", "gpt2_opset17", "derived", 0.5, 1, nil},
		{"llama_lora", "llama_opset17", "derived", 2, 0, engine.LoRA{R: 4, Alpha: 8, Seed: 1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimSGD}, LR: c.lr, BatchSize: 4, Threads: 1, PadID: 0,
				TieTransposedCopies: true, Adapter: c.adapter}
			e := newPolicyEngine(t, policyModelPath(c.model), cfg, objective.SFT{})
			if len(e.Ties()) != c.ties {
				t.Fatalf("ties %v, want %d", e.Ties(), c.ties)
			}
			greedy := generate.SampleOptions{MaxNewTokens: 12}
			seeded := generate.SampleOptions{Temperature: 1, MaxNewTokens: 12, NumReturnSequences: 2, Seed: 9}
			fedAuto, err := PolicyGenerator(e, generate.GeneratorOptions{Threads: 1, Notice: func(s string) { t.Log(s) }})
			if err != nil {
				t.Fatal(err)
			}
			defer fedAuto.Close()
			fedOff, err := PolicyGenerator(e, generate.GeneratorOptions{Threads: 1, Cache: generate.CacheOff})
			if err != nil {
				t.Fatal(err)
			}
			defer fedOff.Close()
			if fedAuto.CacheMode() != c.mode || fedOff.CacheMode() != "none" {
				t.Fatalf("fed generators' cache modes %q and %q, want %s and none", fedAuto.CacheMode(), fedOff.CacheMode(), c.mode)
			}
			start := sampleAll(t, fedAuto, policyPrompts(), greedy)
			name, shape := e.Trainable()[0], e.ParamShapes()[0]
			for _, bad := range []struct {
				name  string
				shape []int64
			}{{"no_such_tensor", shape}, {name, append([]int64{1}, shape...)}} {
				if err := fedAuto.SetParams([]string{bad.name}, [][]int64{bad.shape}, [][]float32{e.Params()[0]}); err == nil {
					t.Errorf("SetParams(%q, shape %v): no error", bad.name, bad.shape)
				}
			}
			for s := 0; s < 3; s++ {
				if _, err := e.StepOn([][]lm.Sequence{seqs}, c.lr); err != nil {
					t.Fatal(err)
				}
			}
			m, err := e.Model()
			if err != nil {
				t.Fatal(err)
			}
			built, err := generate.NewGenerator(c.model, m, generate.GeneratorOptions{Threads: 1, Notice: func(s string) { t.Log(s) }})
			if err != nil {
				t.Fatal(err)
			}
			defer built.Close()
			changed := 0
			for _, o := range []generate.SampleOptions{greedy, seeded} {
				want := sampleAll(t, built, policyPrompts(), o)
				for _, fed := range []*generate.Generator{fedAuto, fedOff} {
					got := sampleAll(t, fed, policyPrompts(), o)
					for i := range want {
						if !slices.Equal(got[i].IDs, want[i].IDs) {
							t.Errorf("%s, temperature %g, row %d: fed %v, built from Model() %v", fed.CacheMode(), o.Temperature, i, got[i].IDs, want[i].IDs)
							continue
						}
						for k := range want[i].Logps {
							if d := math.Abs(got[i].Logps[k] - want[i].Logps[k]); d > 1e-4 {
								t.Errorf("%s row %d token %d: logp %.6f fed, %.6f built", fed.CacheMode(), i, k, got[i].Logps[k], want[i].Logps[k])
								break
							}
						}
					}
				}
				if o.Temperature == 0 {
					for i := range want {
						if !slices.Equal(want[i].IDs, start[i].IDs) {
							changed++
						}
					}
				}
			}
			if changed == 0 {
				t.Errorf("the steps changed no greedy completion: %v", start[0].IDs)
			}
		})
	}
}

// policyPrompts are four prompts of mixed lengths (a padded batch).
func policyPrompts() []generate.Prompt {
	var ps []generate.Prompt
	for i, n := range []int{5, 1, 9, 3} {
		ids := make([]int64, n)
		for t := range ids {
			ids[t] = int64((i*97 + t*31 + 7) % 500)
		}
		ps = append(ps, generate.Prompt{IDs: ids, Index: i})
	}
	return ps
}

func policyModelPath(name string) string { return "../../testdata/models/" + name + ".onnx" }

// sampleAll generates from gen, failing the test on an error.
func sampleAll(t testing.TB, gen *generate.Generator, ps []generate.Prompt, o generate.SampleOptions) []generate.Completion {
	t.Helper()
	out, err := gen.Generate(context.Background(), ps, o)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// newPolicyEngine builds an engine for obj on the model at path, closed with the test.
func newPolicyEngine[T any](t *testing.T, path string, cfg engine.TrainConfig, obj engine.Objective[T]) *engine.Engine[T] {
	t.Helper()
	m, err := onnx.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	e, err := engine.NewEngine(path, m, cfg, obj)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}
