package generate

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
	"ortalign/pipeline/lm"
)

var genModels = []string{"gpt2_opset17", "llama_opset17", "llama_kv_opset17"}

func genModelPath(name string) string { return "../../testdata/models/" + name + ".onnx" }

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
		})
	}
}

type generateOracle struct {
	MaxNewTokens int       `json:"max_new_tokens"`
	Prompts      [][]int64 `json:"prompts"`
	Models       map[string]struct {
		Greedy map[string][]struct {
			IDs    []int64   `json:"ids"`
			Logps  []float64 `json:"logps"`
			MinGap float64   `json:"min_gap"`
		} `json:"greedy"`
		Warpers []struct {
			Temperature float64 `json:"temperature"`
			TopK        int     `json:"top_k"`
			TopP        float64 `json:"top_p"`
			MinP        float64 `json:"min_p"`
			Allowed     []int   `json:"allowed"`
		} `json:"warpers"`
	} `json:"models"`
}

func loadGenerateOracle(t *testing.T) generateOracle {
	t.Helper()
	b, err := os.ReadFile("../../testdata/expected/generate.json")
	if err != nil {
		t.Fatal(err)
	}
	var o generateOracle
	if err := json.Unmarshal(b, &o); err != nil {
		t.Fatal(err)
	}
	return o
}

// TestGenerateGreedyMatchesPyTorch: greedy decoding (with and without a repetition
// penalty), batched with mixed lengths, with and without the KV cache, gives PyTorch's
// tokens (testdata/gen_generate_oracle.py decodes each prompt alone) and their log-probs
// within 1e-4.
func TestGenerateGreedyMatchesPyTorch(t *testing.T) {
	orc := loadGenerateOracle(t)
	var ps []Prompt
	for i, p := range orc.Prompts {
		ps = append(ps, Prompt{IDs: p, Index: i})
	}
	if want := mixedPrompts(); len(want) != len(ps) || !slices.Equal(want[2].IDs, ps[2].IDs) {
		t.Fatal("oracle prompts are not mixedPrompts(): regenerate testdata/expected/generate.json")
	}
	for _, name := range genModels {
		kind := strings.SplitN(name, "_", 2)[0] // llama_kv has llama's weights
		for _, cache := range []CacheMode{CacheAuto, CacheOff} {
			gen := loadGen(t, name, cache, 1)
			for penalty, want := range orc.Models[kind].Greedy {
				rp, _ := strconv.ParseFloat(penalty, 64)
				got := generate(t, gen, ps, SampleOptions{MaxNewTokens: orc.MaxNewTokens, RepetitionPenalty: rp})
				for i, w := range want {
					if !slices.Equal(got[i].IDs, w.IDs) {
						t.Errorf("%s (%s) penalty %s prompt %d: %v, PyTorch %v (min top-2 gap %.3g)", name, gen.CacheMode(), penalty, i, got[i].IDs, w.IDs, w.MinGap)
						continue
					}
					if got[i].FinishReason != FinishLength {
						t.Errorf("%s prompt %d: finish %q, want length", name, i, got[i].FinishReason)
					}
					for k := range w.Logps {
						if d := math.Abs(got[i].Logps[k] - w.Logps[k]); d > 1e-4 {
							t.Errorf("%s (%s) prompt %d token %d: logp %.6f, PyTorch %.6f", name, gen.CacheMode(), i, k, got[i].Logps[k], w.Logps[k])
						}
					}
				}
			}
		}
	}
}

// TestWarpersMatchTransformers: the set of tokens left by temperature, top-k, top-p and
// min-p is transformers' (the oracle applies its warpers' code to PyTorch's logits of
// the same prompt).
func TestWarpersMatchTransformers(t *testing.T) {
	orc := loadGenerateOracle(t)
	for _, name := range []string{"gpt2_opset17", "llama_opset17"} {
		gen := loadGen(t, name, CacheOff, 1)
		out, err := gen.runFull([][]int64{orc.Prompts[0]})
		if err != nil {
			t.Fatal(err)
		}
		raw := out[NextLogitsOutput].F32
		s := make([]float64, len(raw))
		for _, w := range orc.Models[strings.SplitN(name, "_", 2)[0]].Warpers {
			o := SampleOptions{Temperature: w.Temperature, TopK: w.TopK, TopP: w.TopP, MinP: w.MinP}
			if err := o.normalize(); err != nil {
				t.Fatal(err)
			}
			processLogits(s, raw, nil, &o)
			var got []int
			for i, v := range s {
				if !math.IsInf(v, -1) {
					got = append(got, i)
				}
			}
			if !slices.Equal(got, w.Allowed) {
				t.Errorf("%s %+v: allowed %v, transformers %v", name, o, got, w.Allowed)
			}
		}
	}
}

// TestSamplingSeedIndependentOfThreadsAndBatch: a fixed seed samples the same tokens with
// 1 and 2 ORT threads, with and without the cache, and for a prompt alone or in a batch
// (each row draws from its own (seed, prompt, return) source); another seed differs.
func TestSamplingSeedIndependentOfThreadsAndBatch(t *testing.T) {
	o := SampleOptions{Temperature: 1.2, TopK: 50, TopP: 0.95, MaxNewTokens: 12, NumReturnSequences: 2, Seed: 7}
	for _, name := range []string{"gpt2_opset17", "llama_opset17"} {
		ref := generate(t, loadGen(t, name, CacheAuto, 1), mixedPrompts(), o)
		if len(ref) != 2*len(mixedPrompts()) {
			t.Fatalf("%d completions, want %d", len(ref), 2*len(mixedPrompts()))
		}
		if slices.Equal(ref[0].IDs, ref[1].IDs) {
			t.Errorf("%s: the two return sequences of prompt 0 are equal: %v", name, ref[0].IDs)
		}
		for _, c := range []struct {
			cache   CacheMode
			threads int
		}{{CacheAuto, 2}, {CacheOff, 1}, {CacheOff, 2}} {
			got := generate(t, loadGen(t, name, c.cache, c.threads), mixedPrompts(), o)
			for i := range ref {
				if !slices.Equal(got[i].IDs, ref[i].IDs) {
					t.Errorf("%s cache %d threads %d row %d: %v, want %v", name, c.cache, c.threads, i, got[i].IDs, ref[i].IDs)
				}
			}
		}
		gen := loadGen(t, name, CacheAuto, 2)
		alone := generate(t, gen, mixedPrompts()[2:3], o)
		if !slices.Equal(alone[1].IDs, ref[5].IDs) || alone[1].PromptIndex != 2 || alone[1].ReturnIndex != 1 {
			t.Errorf("%s: prompt 2 alone, return 1: %v, in the batch %v", name, alone[1].IDs, ref[5].IDs)
		}
		o2 := o
		o2.Seed = 8
		other := generate(t, gen, mixedPrompts(), o2)
		same := 0
		for i := range ref {
			if slices.Equal(other[i].IDs, ref[i].IDs) {
				same++
			}
		}
		if same == len(ref) {
			t.Errorf("%s: seeds 7 and 8 sample the same tokens", name)
		}
	}
}

// TestSamplingDegenerateCasesEqualGreedy: top-k 1 and top-p 1e-6 leave one token, so
// sampling at any temperature is greedy decoding (with the repetition penalty applied
// before, as in transformers).
func TestSamplingDegenerateCasesEqualGreedy(t *testing.T) {
	for _, name := range genModels {
		gen := loadGen(t, name, CacheAuto, 1)
		greedy := generate(t, gen, mixedPrompts(), SampleOptions{MaxNewTokens: 10, RepetitionPenalty: 1.2})
		for _, o := range []SampleOptions{
			{Temperature: 1, TopK: 1},
			{Temperature: 2.5, TopK: 1, Seed: 3},
			{Temperature: 1, TopP: 1e-6, Seed: 4},
			{Temperature: 0.5, TopP: 1e-6, MinP: 0.3, Seed: 5},
		} {
			o.MaxNewTokens, o.RepetitionPenalty = 10, 1.2
			got := generate(t, gen, mixedPrompts(), o)
			for i := range greedy {
				if !slices.Equal(got[i].IDs, greedy[i].IDs) {
					t.Errorf("%s %+v prompt %d: %v, greedy %v", name, o, i, got[i].IDs, greedy[i].IDs)
				}
			}
		}
	}
}

// TestSampledTokensInAllowedSet: with top-k and min-p, every sampled token is in the set
// the test computes itself from the step's logits (re-run without a cache): among the k
// largest temperature-scaled logits and with probability (renormalised over those) at least
// min-p times the largest.
func TestSampledTokensInAllowedSet(t *testing.T) {
	const k, mp, temp = 8, 0.2, 1.5
	for _, name := range []string{"gpt2_opset17", "llama_opset17"} {
		gen := loadGen(t, name, CacheAuto, 1)
		ref := loadGen(t, name, CacheOff, 1)
		o := SampleOptions{Temperature: temp, TopK: k, MinP: mp, MaxNewTokens: 15, NumReturnSequences: 3, Seed: 11}
		comps := generate(t, gen, mixedPrompts(), o)
		distinct := map[int64]bool{}
		checked := 0
		for _, c := range comps {
			prefix := slices.Clone(mixedPrompts()[c.PromptIndex].IDs)
			for _, tok := range c.IDs {
				out, err := ref.runFull([][]int64{prefix})
				if err != nil {
					t.Fatal(err)
				}
				raw := out[NextLogitsOutput].F32
				sorted := slices.Clone(raw)
				slices.Sort(sorted)
				kth := float64(sorted[len(sorted)-k]) / temp
				maxv := float64(sorted[len(sorted)-1]) / temp
				// p_i / p_max = exp(s_i - s_max) within the top-k set.
				allowed := func(i int64) bool {
					s := float64(raw[i]) / temp
					return s >= kth && math.Exp(s-maxv) >= mp-1e-9
				}
				if !allowed(tok) {
					t.Errorf("%s prompt %d return %d: sampled %d outside the top-%d / min-p %.2g set", name, c.PromptIndex, c.ReturnIndex, tok, k, mp)
				}
				distinct[tok] = true
				checked++
				prefix = append(prefix, tok)
			}
		}
		if checked == 0 || len(distinct) < 10 {
			t.Errorf("%s: %d tokens checked, %d distinct: sampling looks degenerate", name, checked, len(distinct))
		}
	}
}

// TestGenerateLogpsMatchLogProbModel: each completion token's log-prob equals what the
// log-prob head (LogProbModel) gives the same token after the same prefix, within 1e-4.
func TestGenerateLogpsMatchLogProbModel(t *testing.T) {
	for _, name := range genModels {
		gen := loadGen(t, name, CacheAuto, 1)
		comps := generate(t, gen, mixedPrompts(), SampleOptions{Temperature: 1, MaxNewTokens: 8, Seed: 2, NumReturnSequences: 2})
		lpm, err := lm.LoadLogProbModel(genModelPath(name), lm.ModelOptions{Threads: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer lpm.Close()
		var rows []lm.Sequence
		var want []float64
		for _, c := range comps {
			p := mixedPrompts()[c.PromptIndex].IDs
			for k := range c.IDs {
				rows = append(rows, lm.Sequence{IDs: append(slices.Clone(p), c.IDs[:k+1]...), CompletionStart: len(p) + k})
				want = append(want, c.Logps[k])
			}
		}
		got, err := lpm.SequenceLogps(rows)
		if err != nil {
			t.Fatal(err)
		}
		for i := range got {
			if d := math.Abs(got[i] - want[i]); d > 1e-4 {
				t.Errorf("%s row %d: generate logp %.6f, LogProbModel %.6f", name, i, want[i], got[i])
			}
		}
	}
}

// TestGenerateFinishReasons: EOS ends a row with the EOS kept, a stop string ends it with
// the text cut before it, max-new-tokens with "length"; finished rows do not disturb the
// others (same tokens as without the EOS, up to it).
func TestGenerateFinishReasons(t *testing.T) {
	gen := loadGen(t, "llama_opset17", CacheAuto, 1)
	base := generate(t, gen, mixedPrompts(), SampleOptions{MaxNewTokens: 12})
	eos := base[0].IDs[3]
	got := generate(t, gen, mixedPrompts(), SampleOptions{MaxNewTokens: 12, EOS: []int64{eos, 9999}})
	for i, c := range got {
		k := slices.Index(base[i].IDs, eos)
		if k < 0 {
			if c.FinishReason != FinishLength || !slices.Equal(c.IDs, base[i].IDs) {
				t.Errorf("prompt %d: %v %q, want %v length", i, c.IDs, c.FinishReason, base[i].IDs)
			}
			continue
		}
		if c.FinishReason != FinishEOS || !slices.Equal(c.IDs, base[i].IDs[:k+1]) || len(c.Logps) != k+1 {
			t.Errorf("prompt %d: %v %q, want %v eos", i, c.IDs, c.FinishReason, base[i].IDs[:k+1])
		}
	}
	// Decode ids as space-separated numbers; stop at the text of base[1]'s 3rd token.
	decode := func(ids []int64) (string, error) {
		var sb strings.Builder
		for _, id := range ids {
			fmt.Fprintf(&sb, "<%d>", id)
		}
		return sb.String(), nil
	}
	stop := fmt.Sprintf("<%d>", base[1].IDs[2])
	got = generate(t, gen, mixedPrompts(), SampleOptions{MaxNewTokens: 12, Stop: []string{stop, "never"}, Decode: decode})
	k := slices.Index(base[1].IDs, base[1].IDs[2])
	if c := got[1]; c.FinishReason != FinishStop || !slices.Equal(c.IDs, base[1].IDs[:k+1]) {
		t.Errorf("stop: %v %q, want %v stop", c.IDs, c.FinishReason, base[1].IDs[:k+1])
	} else if want, _ := decode(base[1].IDs[:k]); c.Text != want {
		t.Errorf("stop text %q, want %q", c.Text, want)
	}
	if _, err := gen.Generate(context.Background(), mixedPrompts(), SampleOptions{MaxNewTokens: 2, Stop: []string{"x"}}); err == nil {
		t.Error("stop strings without a decoder: no error")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := gen.Generate(ctx, mixedPrompts(), SampleOptions{MaxNewTokens: 5}); err == nil {
		t.Error("cancelled context: no error")
	}
}

// TestDerivedCacheFallsBack: when no cache can be derived (the attention's Softmax written
// as Exp(LogSoftmax)), or the derived one is wrong (GPT-2's positions hidden behind an
// Identity, so the decode graph would restart them at 0), the generator says so in one
// notice and decodes without a cache, giving the plain model's tokens.
func TestDerivedCacheFallsBack(t *testing.T) {
	ref := generate(t, loadGen(t, "gpt2_opset17", CacheOff, 1), mixedPrompts(), SampleOptions{MaxNewTokens: 8})
	edits := map[string]func(g *onnxpb.GraphProto){
		"no softmax": func(g *onnxpb.GraphProto) {
			var nodes []*onnxpb.NodeProto
			for _, n := range g.GetNode() {
				if n.GetOpType() == "Softmax" {
					mid := n.GetOutput()[0] + "_log"
					nodes = append(nodes,
						&onnxpb.NodeProto{OpType: proto.String("LogSoftmax"), Input: n.Input, Output: []string{mid}, Attribute: n.Attribute},
						&onnxpb.NodeProto{OpType: proto.String("Exp"), Input: []string{mid}, Output: n.Output})
					continue
				}
				nodes = append(nodes, n)
			}
			g.Node = nodes
		},
		"hidden positions": func(g *onnxpb.GraphProto) {
			var nodes []*onnxpb.NodeProto
			for _, n := range g.GetNode() {
				nodes = append(nodes, n)
				if n.GetOpType() == "Range" {
					out := n.GetOutput()[0]
					n.Output[0] = out + "_pre"
					nodes = append(nodes, &onnxpb.NodeProto{OpType: proto.String("Identity"), Input: []string{out + "_pre"}, Output: []string{out}})
				}
			}
			g.Node = nodes
		},
	}
	for label, edit := range edits {
		m, err := onnx.Load(genModelPath("gpt2_opset17"))
		if err != nil {
			t.Fatal(err)
		}
		edit(m.Graph())
		var notices []string
		gen, err := NewGenerator(label, m, GeneratorOptions{Threads: 1, Notice: func(s string) { notices = append(notices, s) }})
		if err != nil {
			t.Fatal(err)
		}
		defer gen.Close()
		if gen.CacheMode() != "none" || len(notices) != 1 || !strings.Contains(notices[0], "without a cache") {
			t.Errorf("%s: mode %q, notices %q", label, gen.CacheMode(), notices)
		}
		t.Logf("%s: %s", label, notices)
		got := generate(t, gen, mixedPrompts(), SampleOptions{MaxNewTokens: 8})
		for i := range ref {
			if !slices.Equal(got[i].IDs, ref[i].IDs) {
				t.Errorf("%s prompt %d: %v, want %v", label, i, got[i].IDs, ref[i].IDs)
			}
		}
	}
}

// TestFindAttentionPoints: the cache goes where the task wants it: after the projection
// and the head split, after rotary for Llama's keys and before GQA's repeat_kv (2 KV heads
// of 8, not the 4 query heads); GPT-2 gets a position_ids input.
func TestFindAttentionPoints(t *testing.T) {
	gen := loadGen(t, "llama_opset17", CacheAuto, 1)
	if len(gen.pasts) != 4 {
		t.Fatalf("%d pasts, want 4", len(gen.pasts))
	}
	for _, p := range gen.pasts {
		dims := slices.Clone(p.dims)
		dims[p.batchAxis], dims[p.seqAxis] = -1, -1
		if n := dims[0] * dims[1] * dims[2] * dims[3]; n != 16 { // 2 heads · 8, batch and seq as -1·-1
			t.Errorf("%s: dims %v (batch axis %d, seq axis %d): want 2 KV heads of 8", p.name, p.dims, p.batchAxis, p.seqAxis)
		}
	}
	g2 := loadGen(t, "gpt2_opset17", CacheAuto, 1)
	if !g2.hasPos || len(g2.pasts) != 4 {
		t.Errorf("gpt2: position_ids %v, %d pasts", g2.hasPos, len(g2.pasts))
	}
}
