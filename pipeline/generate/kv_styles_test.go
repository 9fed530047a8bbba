package generate

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
	"ortalign/onnx/ort"
	"ortalign/pipeline/lm"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// kvStylesOracle is testdata/expected/kv_styles.json (testdata/gen_kv_styles.py): plain
// exports in five attention styles written as transformers writes them, and PyTorch's
// greedy tokens for a left-padded batch of prompts.
type kvStylesOracle struct {
	MaxNewTokens int       `json:"max_new_tokens"`
	Prompts      [][]int64 `json:"prompts"`
	Models       map[string]struct {
		File   string `json:"file"`
		Greedy []struct {
			IDs    []int64 `json:"ids"`
			MinGap float64 `json:"min_gap"`
		} `json:"greedy"`
	} `json:"models"`
}

// TestDerivedCacheStyles: on every export style of kv_styles.json a cache is derived (no
// notice, mode "derived"), both written in place (attention rewritten into
// GroupQueryAttention) and concatenating pasts, and greedy decoding with it, of the
// prompts batched with left and with right padding (and in two slots), gives the tokens
// of decoding without a cache and PyTorch's.
func TestDerivedCacheStyles(t *testing.T) {
	var o kvStylesOracle
	if b, err := os.ReadFile("../../testdata/expected/kv_styles.json"); err != nil {
		t.Fatal(err)
	} else if err := json.Unmarshal(b, &o); err != nil {
		t.Fatal(err)
	}
	if len(o.Models) < 5 {
		t.Fatalf("%d styles in the oracle, want 5", len(o.Models))
	}
	var ps []Prompt
	for i, p := range o.Prompts {
		ps = append(ps, Prompt{IDs: p, Index: i})
	}
	for _, style := range slices.Sorted(maps.Keys(o.Models)) {
		want := o.Models[style]
		for _, inPlace := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/inplace=%v", style, inPlace), func(t *testing.T) {
				path := filepath.Join("../../testdata", want.File)
				var notices []string
				cached, err := LoadGenerator(path, GeneratorOptions{Threads: 1, concatOnly: !inPlace, Notice: func(s string) { notices = append(notices, s) }})
				if err != nil {
					t.Fatal(err)
				}
				defer cached.Close()
				if cached.CacheMode() != "derived" || len(notices) > 0 || cached.inPlace != inPlace {
					t.Fatalf("cache mode %q (in place %v), notices %q; want a derived cache (in place %v) and no notice", cached.CacheMode(), cached.inPlace, notices, inPlace)
				}
				plain, err := LoadGenerator(path, GeneratorOptions{Threads: 1, Cache: CacheOff})
				if err != nil {
					t.Fatal(err)
				}
				defer plain.Close()
				opts := SampleOptions{MaxNewTokens: o.MaxNewTokens}
				ref := generate(t, plain, ps, opts)
				for i, w := range want.Greedy {
					if !slices.Equal(ref[i].IDs, w.IDs) {
						t.Errorf("no cache, prompt %d: %v, PyTorch %v (min top-2 gap %.3g)", i, ref[i].IDs, w.IDs, w.MinGap)
					}
				}
				for _, side := range []string{"left", "right", "slots"} {
					opts.PaddingSide, opts.BatchSize = side, 0
					if side == "slots" {
						opts.PaddingSide, opts.BatchSize = "left", 2
					}
					got := generate(t, cached, ps, opts)
					for i, w := range want.Greedy {
						if !slices.Equal(got[i].IDs, w.IDs) {
							t.Errorf("derived cache, %s padding, prompt %d: %v, PyTorch %v (min top-2 gap %.3g)", side, i, got[i].IDs, w.IDs, w.MinGap)
						}
						for k := range ref[i].Logps {
							if d := math.Abs(got[i].Logps[k] - ref[i].Logps[k]); d > 1e-4 {
								t.Errorf("%s padding, prompt %d token %d: logp %.6f with the cache, %.6f without", side, i, k, got[i].Logps[k], ref[i].Logps[k])
								break
							}
						}
					}
				}
			})
		}
	}
}

// TestDerivedCacheNoticeNamesNode: when the derived cache is wrong — here the llama_bool
// style's mask transposed before its Where (queries see later keys, which no cache can
// give) — the generator decodes without a cache, giving the plain model's tokens, and its
// one notice says what failed and names the mask's node and how it was extended.
func TestDerivedCacheNoticeNamesNode(t *testing.T) {
	m, err := onnx.Load("../../testdata/models/kvstyle_llama_bool.onnx")
	if err != nil {
		t.Fatal(err)
	}
	g := m.Graph()
	b := onnx.NewBuilder(g, m.Opset(""), "test")
	var where string
	for _, n := range slices.Clone(g.GetNode()) {
		if n.GetOpType() == "Where" && strings.HasSuffix(n.GetName(), "self_attn/Where_2") {
			n.Input[0] = b.Transpose(n.Input[0], []int64{0, 1, 3, 2})
			if where == "" {
				where = n.GetName()
			}
		}
	}
	if where == "" {
		t.Fatal("no self_attn/Where_2 in kvstyle_llama_bool.onnx")
	}
	if err := onnx.TopologicalSort(g); err != nil {
		t.Fatal(err)
	}
	var notices []string
	gen, err := NewGenerator("anti-causal", m, GeneratorOptions{Threads: 1, Notice: func(s string) { notices = append(notices, s) }})
	if err != nil {
		t.Fatal(err)
	}
	defer gen.Close()
	if gen.CacheMode() != "none" || len(notices) != 1 {
		t.Fatalf("mode %q, notices %q; want no cache and one notice", gen.CacheMode(), notices)
	}
	for _, want := range []string{"differ from a full run", fmt.Sprintf("Where node %q", where), "query axis 2", "without a cache"} {
		if !strings.Contains(notices[0], want) {
			t.Errorf("notice lacks %q: %s", want, notices[0])
		}
	}
	plain, err := NewGenerator("anti-causal", m, GeneratorOptions{Threads: 1, Cache: CacheOff})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	ps := mixedPrompts()
	for i := range ps {
		for k := range ps[i].IDs {
			ps[i].IDs[k] %= int64(gen.VocabSize())
		}
	}
	opts := SampleOptions{MaxNewTokens: 6}
	got, want := generate(t, gen, ps, opts), generate(t, plain, ps, opts)
	for i := range want {
		if !slices.Equal(got[i].IDs, want[i].IDs) {
			t.Errorf("prompt %d: %v, without a cache %v", i, got[i].IDs, want[i].IDs)
		}
	}
	t.Log(notices[0])
}

// TestDerivedCacheMasksLinear: the masks and positions of a decoding step with the derived
// cache cost q·(P+q), not (P+q)²: run one step (2 rows, a past of 40, 1 new token) of the
// derived graph of each style and of the tiny GPT-2 and Llama, and check that no value the mask surgery added has two axes of the
// whole sequence's length.
func TestDerivedCacheMasksLinear(t *testing.T) {
	const batch, past = 2, 40
	var o kvStylesOracle
	if b, err := os.ReadFile("../../testdata/expected/kv_styles.json"); err != nil {
		t.Fatal(err)
	} else if err := json.Unmarshal(b, &o); err != nil {
		t.Fatal(err)
	}
	files := []string{"models/gpt2_opset17.onnx", "models/llama_opset17.onnx"}
	for _, style := range slices.Sorted(maps.Keys(o.Models)) {
		files = append(files, o.Models[style].File)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			m, err := onnx.Load(filepath.Join("../../testdata", file))
			if err != nil {
				t.Fatal(err)
			}
			dv, err := deriveCacheGraph(m, GeneratorOptions{Threads: 1})
			if err != nil {
				t.Fatal(err)
			}
			g := dv.model.Graph()
			b := onnx.NewBuilder(g, dv.model.Opset(""), "test_shape")
			var outs, values []string
			for _, n := range slices.Clone(g.GetNode()) {
				if !strings.HasPrefix(n.GetName(), "ortalign_kvmask/") {
					continue
				}
				for _, v := range n.GetOutput() {
					s := b.Shape(v)
					if err := onnx.AddOutput(g, s, onnx.Int64, []onnx.Dim{onnx.DimParam("rank")}); err != nil {
						t.Fatal(err)
					}
					outs, values = append(outs, s), append(values, v)
				}
			}
			if len(outs) == 0 {
				t.Fatal("the surgery added no nodes")
			}
			// What a decoding step runs (the generator prunes the same way).
			var keep []*onnxpb.ValueInfoProto
			for _, out := range g.GetOutput() {
				if out.GetName() == lm.LogitsOutput || slices.Contains(outs, out.GetName()) {
					keep = append(keep, out)
				}
			}
			g.Output = keep
			onnx.Prune(g, nil)
			sess, err := lm.NewModelSession(dv.model, outs, ort.Options{Threads: 1})
			if err != nil {
				t.Fatal(err)
			}
			defer sess.Destroy()
			total := past + 1
			mask := make([]int64, batch*total)
			for i := range mask {
				mask[i] = 1
			}
			feeds := map[string]*ort.Tensor{
				lm.InputIDs:      {Shape: []int64{batch, 1}, I64: []int64{3, 4}},
				lm.AttentionMask: {Shape: []int64{batch, int64(total)}, I64: mask},
				lm.PositionIDs:   {Shape: []int64{batch, 1}, I64: []int64{past, past}},
			}
			for _, p := range dv.pasts {
				shape := slices.Clone(p.dims)
				shape[p.batchAxis], shape[p.seqAxis] = batch, past
				n := int64(1)
				for _, d := range shape {
					n *= d
				}
				feeds[p.name] = &ort.Tensor{Shape: shape, F32: make([]float32, n)}
			}
			res, err := sess.Run(feeds, nil)
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range outs {
				long := 0
				for _, d := range res[s].I64 {
					if d == int64(total) {
						long++
					}
				}
				if long > 1 {
					t.Errorf("%s has shape %v: quadratic in the sequence (%d tokens)", values[i], res[s].I64, total)
				}
			}
			t.Logf("%d values added by the surgery", len(outs))
		})
	}
}
