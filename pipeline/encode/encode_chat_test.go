package encode

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"ortalign/data"
	"ortalign/pipeline/lm"
	"ortalign/tokenize"
)

// chatmlTemplate is a ChatML chat template (Qwen's, without tools); chatmlRender writes
// the same text in Go, independently of the template engine.
const chatmlTemplate = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}" +
	"{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"

func chatmlRender(msgs []data.Message, gen bool) string {
	var b strings.Builder
	for _, m := range msgs {
		fmt.Fprintf(&b, "<|im_start|>%s\n%s<|im_end|>\n", m.Role, m.Content)
	}
	if gen {
		b.WriteString("<|im_start|>assistant\n")
	}
	return b.String()
}

// chatTokenizerDir copies the test tokenizer into a temporary directory with a
// tokenizer_config.json holding chatTemplate (none when empty).
func chatTokenizerDir(t *testing.T, chatTemplate string) string {
	t.Helper()
	dir := t.TempDir()
	src, err := os.ReadFile("../../testdata/tokenizer/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), src, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := map[string]any{"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|pad|>"}
	if chatTemplate != "" {
		cfg["chat_template"] = chatTemplate
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func readExamples(t *testing.T, name string) (string, data.Layout, []data.Example) {
	t.Helper()
	path := filepath.Join("../../data/testdata", name)
	ds, err := data.Open(path, data.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	ex, _, err := ds.ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	return path, ds.Layout, ex
}

func TestEncodePairsConversational(t *testing.T) {
	tok, err := tokenize.Load(chatTokenizerDir(t, chatmlTemplate))
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range []string{"duckdb_ultrafeedback.parquet", "arrow_ultrafeedback.parquet", "arrow_conversational.parquet", "duckdb_ultrafeedback.jsonl"} {
		t.Run(file, func(t *testing.T) {
			path, layout, examples := readExamples(t, file)
			if layout != data.Conversational {
				t.Fatalf("layout %v, want conversational", layout)
			}
			pairs, stats, err := EncodePairs(path, layout, examples, tok, EncodeConfig{}, int64(tok.VocabSize()))
			if err != nil {
				t.Fatal(err)
			}
			if len(pairs) != len(examples) || stats.Dropped != 0 || stats.BoundaryMismatches != 0 || stats.Truncated != 0 {
				t.Fatalf("%d pairs from %d examples, stats %+v", len(pairs), len(examples), stats)
			}
			multiTurn := 0
			for i, p := range pairs {
				ex := examples[i]
				if len(ex.PromptMessages) > 2 {
					multiTurn++
				}
				for _, side := range []struct {
					name string
					seq  lm.Sequence
					msgs []data.Message
				}{{"chosen", p.Chosen, ex.ChosenMessages}, {"rejected", p.Rejected, ex.RejectedMessages}} {
					promptIDs, _ := tok.Encode(chatmlRender(ex.PromptMessages, true), false)
					joint, _ := tok.Encode(chatmlRender(slices.Concat(ex.PromptMessages, side.msgs), false), false)
					want := make([]int64, len(joint))
					for j, id := range joint {
						want[j] = int64(id)
					}
					if side.seq.CompletionStart != len(promptIDs) || !slices.Equal(side.seq.IDs, want) {
						t.Fatalf("row %d %s: start %d ids %v\nwant start %d ids %v", ex.Row, side.name,
							side.seq.CompletionStart, side.seq.IDs, len(promptIDs), want)
					}
					completion := make([]int, len(side.seq.IDs)-side.seq.CompletionStart)
					for j, id := range side.seq.IDs[side.seq.CompletionStart:] {
						completion[j] = int(id)
					}
					text, _ := tok.Decode(completion, false)
					if wantText := side.msgs[len(side.msgs)-1].Content + "<|im_end|>\n"; text != wantText {
						t.Errorf("row %d %s: completion %q, want %q (no EOS appended)", ex.Row, side.name, text, wantText)
					}
				}
			}
			if strings.Contains(file, "ultrafeedback") && multiTurn == 0 {
				t.Error("no multi-turn prompt was checked")
			}
		})
	}
}

func TestEncodePairsConversationalTruncation(t *testing.T) {
	tok, err := tokenize.Load(chatTokenizerDir(t, chatmlTemplate))
	if err != nil {
		t.Fatal(err)
	}
	path, layout, examples := readExamples(t, "duckdb_ultrafeedback.parquet")
	full, _, err := EncodePairs(path, layout, examples, tok, EncodeConfig{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A limit just above the first single-turn prompt: longer prompts are dropped,
	// the others truncated.
	limit := full[0].Chosen.CompletionStart + 2
	pairs, stats, err := EncodePairs(path, layout, examples, tok, EncodeConfig{MaxLength: limit, Truncation: tokenize.KeepStart}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if stats.Truncated == 0 || len(pairs)+stats.Dropped != len(examples) {
		t.Fatalf("stats %+v, %d pairs", stats, len(pairs))
	}
	for _, p := range pairs {
		if len(p.Chosen.IDs) > limit || len(p.Rejected.IDs) > limit {
			t.Fatalf("row %d longer than %d", p.Row, limit)
		}
	}
}

func TestEncodePairsConversationalErrors(t *testing.T) {
	path, layout, examples := readExamples(t, "arrow_conversational.parquet")
	t.Run("no chat template", func(t *testing.T) {
		dir := chatTokenizerDir(t, "")
		tok, err := tokenize.Load(dir)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = EncodePairs(path, layout, examples, tok, EncodeConfig{}, 0)
		want := fmt.Sprintf("conversational dataset %s needs a chat template: tokenizer_config.json next to %s has none",
			path, filepath.Join(dir, "tokenizer.json"))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err %v\nwant %q", err, want)
		}
	})
	t.Run("template refuses", func(t *testing.T) {
		src, err := os.ReadFile("../../tokenize/testdata/chat/gemini.jinja") // no system role
		if err != nil {
			t.Fatal(err)
		}
		tok, err := tokenize.Load(chatTokenizerDir(t, string(src)))
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = EncodePairs(path, layout, examples, tok, EncodeConfig{}, 0)
		var te *tokenize.TemplateError
		if !errors.As(err, &te) || te.Message != "System role not supported" ||
			!strings.Contains(err.Error(), path+": row 0:") {
			t.Errorf("err %v", err)
		}
	})
}
