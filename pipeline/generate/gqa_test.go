package generate

import (
	"encoding/json"
	"os"
	"slices"
	"testing"
)

// gqaOracle is testdata/expected/gqa_genai.json (testdata/gen_gqa_model.py): a tiny export
// in ONNX Runtime GenAI's layout (GroupQueryAttention reading seqlens_k and
// total_sequence_length from attention_mask) and PyTorch's greedy tokens for each prompt
// alone.
type gqaOracle struct {
	MaxNewTokens int       `json:"max_new_tokens"`
	Prompts      [][]int64 `json:"prompts"`
	Greedy       []struct {
		IDs    []int64 `json:"ids"`
		MinGap float64 `json:"min_gap"`
	} `json:"greedy"`
}

func loadGQAOracle(t *testing.T) gqaOracle {
	t.Helper()
	var o gqaOracle
	b, err := os.ReadFile("../../testdata/expected/gqa_genai.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &o); err != nil {
		t.Fatal(err)
	}
	if len(o.Prompts) != len(o.Greedy) || len(o.Prompts) < 4 {
		t.Fatalf("oracle: %d prompts, %d greedy rows", len(o.Prompts), len(o.Greedy))
	}
	return o
}

// TestGQAExportPadding: on a GroupQueryAttention export, greedy decoding with its cache of
// the prompts batched — left-padded, right-padded, and in slots fewer than the rows —
// gives the tokens of each prompt decoded alone, and PyTorch's.
func TestGQAExportPadding(t *testing.T) {
	o := loadGQAOracle(t)
	gen := loadGen(t, "gqa_genai", CacheAuto, 1)
	if gen.CacheMode() != "export" {
		t.Fatalf("cache mode %q, want export", gen.CacheMode())
	}
	var ps []Prompt
	for i, p := range o.Prompts {
		ps = append(ps, Prompt{IDs: p, Index: i})
	}
	opts := SampleOptions{MaxNewTokens: o.MaxNewTokens}
	for i, p := range ps {
		got := generate(t, gen, []Prompt{p}, opts)
		if !slices.Equal(got[0].IDs, o.Greedy[i].IDs) {
			t.Errorf("prompt %d alone: %v, PyTorch %v (min top-2 gap %.3g)", i, got[0].IDs, o.Greedy[i].IDs, o.Greedy[i].MinGap)
		}
	}
	for _, side := range []string{"left", "right"} {
		for _, slots := range []int{0, 2} {
			opts.PaddingSide, opts.BatchSize = side, slots
			got := generate(t, gen, ps, opts)
			for i, w := range o.Greedy {
				if !slices.Equal(got[i].IDs, w.IDs) {
					t.Errorf("%s padding, %d slots, prompt %d: %v, PyTorch %v (min top-2 gap %.3g)", side, slots, i, got[i].IDs, w.IDs, w.MinGap)
				}
			}
		}
	}
}
