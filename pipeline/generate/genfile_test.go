package generate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"ortalign/data"
	"ortalign/pipeline/encode"
	"ortalign/tokenize"
)

const genTok = "../../testdata/tokenizer/tokenizer.json"

// writeIDPrompts writes a pre-tokenized prompt-only file.
func writeIDPrompts(t *testing.T, prompts ...[]int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "prompts.parquet")
	var rows [][]any
	for _, ids := range prompts {
		rows = append(rows, []any{ids})
	}
	if err := data.WriteFile(p, []data.Column{{Name: "prompt_input_ids", Kind: data.Int64List}}, rows); err != nil {
		t.Fatal(err)
	}
	return p
}

// readRows reads an output file back as the prompt-completion dataset it is.
func readRows(t *testing.T, path string) []data.Example {
	t.Helper()
	l, err := encode.LoadSequences(path, encode.DataOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return l.Examples
}

// TestGenerateFile: without cobra, GenerateFile skips the empty prompt (with a warning),
// writes NumReturnSequences rows per prompt in prompt order with the completions that
// Generate gives the same prompts (seeded by their rows), and its summary counts them;
// with a tokenizer, the text columns hold the decoded prompt and completion.
func TestGenerateFile(t *testing.T) {
	prompts := [][]int64{{303, 25, 262}, {}, {5, 9, 11, 40, 41}, {7}}
	in := writeIDPrompts(t, prompts...)
	out := filepath.Join(t.TempDir(), "gen.jsonl")
	so := SampleOptions{Temperature: 0.8, MaxNewTokens: 5, NumReturnSequences: 2, Seed: 3, EOS: []int64{262}}
	var warn bytes.Buffer
	inits := 0
	sum, err := GenerateFile(context.Background(), FileConfig{
		Prompts: in, Out: out, Data: encode.DataOptions{Warn: &warn}, Model: genModelPath("llama_opset17"),
		Generator:   GeneratorOptions{Threads: 1, Notice: func(s string) { t.Log(s) }},
		InitRuntime: func() error { inits++; return nil }, Sample: so, BatchSize: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	if inits != 1 || !strings.Contains(warn.String(), "row 1") {
		t.Errorf("runtime initialised %d times; warnings %q (want row 1 skipped)", inits, warn.String())
	}
	rows := readRows(t, out)
	gen := loadGen(t, "llama_opset17", CacheAuto, 1)
	var want []Completion
	for _, row := range []int{0, 2, 3} {
		want = append(want, generate(t, gen, []Prompt{{IDs: prompts[row], Index: row}}, so)...)
	}
	if len(rows) != len(want) {
		t.Fatalf("%d rows, want %d", len(rows), len(want))
	}
	tokens, finished := 0, 0
	for i, r := range rows {
		w := want[i]
		if !slices.Equal(r.PromptIDs, prompts[[]int{0, 2, 3}[i/2]]) || !slices.Equal(r.CompletionIDs, w.IDs) {
			t.Errorf("row %d: prompt %v completion %v, want prompt %v completion %v", i, r.PromptIDs, r.CompletionIDs, prompts[[]int{0, 2, 3}[i/2]], w.IDs)
		}
		tokens += len(w.IDs)
		if w.FinishReason == FinishEOS {
			finished++
		}
	}
	if sum.Prompts != 3 || sum.Completions != 6 || sum.Skipped != 1 || sum.Tokens != tokens || sum.Finished[FinishEOS] != finished ||
		sum.Finished[FinishEOS]+sum.Finished[FinishLength] != 6 || sum.Layout != data.TokenizedPromptOnly || sum.CacheMode != gen.CacheMode() {
		t.Errorf("summary %+v; want 3 prompts, 6 completions, 1 skipped, %d tokens, %d eos", sum, tokens, finished)
	}

	// With a tokenizer: text columns, the prompt decoded with its special tokens.
	tok, err := tokenize.Load(genTok)
	if err != nil {
		t.Fatal(err)
	}
	out2 := filepath.Join(t.TempDir(), "gen.jsonl")
	if _, err := GenerateFile(context.Background(), FileConfig{Prompts: in, Out: out2, Data: encode.DataOptions{Tokenizer: tok},
		Model: genModelPath("llama_opset17"), Generator: GeneratorOptions{Threads: 1}, Sample: so, BatchSize: 8}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out2)
	if err != nil {
		t.Fatal(err)
	}
	var first map[string]any
	if err := json.Unmarshal([]byte(strings.SplitN(string(b), "\n", 2)[0]), &first); err != nil {
		t.Fatal(err)
	}
	text, _ := tok.Decode([]int{303, 25, 262}, false)
	so.Decode = decoder(tok, true)
	completion := generate(t, gen, []Prompt{{IDs: prompts[0], Index: 0}}, so)[0].Text
	if first["prompt"] != text || first["completion"] != completion || completion == "" {
		t.Errorf("first row %v; want prompt %q and completion %q", first, text, completion)
	}
}

// TestGenerateFileErrors: data errors come before ONNX Runtime is asked for; a runtime
// that fails stops the run before the model; a cancelled run writes nothing.
func TestGenerateFileErrors(t *testing.T) {
	dir := t.TempDir()
	text := filepath.Join(dir, "text.jsonl")
	if err := data.WriteFile(text, []data.Column{{Name: "prompt", Kind: data.String}}, [][]any{{"hello"}}); err != nil {
		t.Fatal(err)
	}
	ids := writeIDPrompts(t, []int64{1, 2})
	failInit := errors.New("no runtime here")
	for _, c := range []struct {
		name, prompts, out string
		batch              int
		init               error
		want               string
	}{
		{"text without tokenizer", text, "g.jsonl", 1, failInit, "tokenizer is needed"},
		{"missing file", filepath.Join(dir, "none.parquet"), "g.jsonl", 1, failInit, "none.parquet"},
		{"batch size", ids, "g.jsonl", 0, failInit, "batch size"},
		{"runtime", ids, "g.jsonl", 1, failInit, failInit.Error()},
		{"model", ids, "g.jsonl", 1, nil, "nonexistent.onnx"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), c.out)
			model := genModelPath("nonexistent")
			inits := 0
			_, err := GenerateFile(context.Background(), FileConfig{Prompts: c.prompts, Out: out, Model: model,
				InitRuntime: func() error { inits++; return c.init }, Sample: SampleOptions{MaxNewTokens: 2}, BatchSize: c.batch})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
			if wantInits := map[bool]int{true: 1, false: 0}[c.name == "runtime" || c.name == "model"]; inits != wantInits {
				t.Errorf("runtime initialised %d times, want %d", inits, wantInits)
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Errorf("output written: %v", err)
			}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	out := filepath.Join(t.TempDir(), "g.jsonl")
	_, err := GenerateFile(ctx, FileConfig{Prompts: ids, Out: out, Model: genModelPath("llama_opset17"),
		Generator: GeneratorOptions{Threads: 1}, Sample: SampleOptions{MaxNewTokens: 2}, BatchSize: 1})
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "interrupted after 0 of 1 prompts") {
		t.Fatalf("cancelled: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(out)); len(entries) != 0 {
		t.Errorf("cancelled run left %v", entries)
	}
}

// TestGenerateFileSlots: with a cache written in place, GenerateFile decodes the whole
// file in --batch-size × NumReturnSequences slots; the file is the same at every batch
// size (and as the batched path writes it), and the progress counts every prompt.
func TestGenerateFileSlots(t *testing.T) {
	var prompts [][]int64
	for i := range 7 {
		p := make([]int64, 1+(i*5)%9)
		for k := range p {
			p[k] = int64((i*31 + k*7) % 500)
		}
		prompts = append(prompts, p)
	}
	in := writeIDPrompts(t, prompts...)
	so := SampleOptions{Temperature: 0.9, MaxNewTokens: 6, NumReturnSequences: 2, Seed: 11, EOS: []int64{262}}
	run := func(cache CacheMode, batch int) (string, []data.Example, string) {
		out := filepath.Join(t.TempDir(), "gen.jsonl")
		var prog bytes.Buffer
		sum, err := GenerateFile(context.Background(), FileConfig{
			Prompts: in, Out: out, Model: genModelPath("llama_opset17"), Sample: so, BatchSize: batch,
			Generator: GeneratorOptions{Threads: 1, Cache: cache}, Progress: &prog,
		})
		if err != nil {
			t.Fatal(err)
		}
		if cache == CacheAuto && sum.CacheMode != "derived" {
			t.Fatalf("cache mode %q, want derived (written in place)", sum.CacheMode)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		return string(b), readRows(t, out), prog.String()
	}
	gen := loadGen(t, "llama_opset17", CacheAuto, 1)
	if !gen.inPlace {
		t.Fatal("llama_opset17's derived cache is not written in place: the slots are not exercised")
	}
	// Without a cache: consecutive batches; the tokens are the same, the log-probs equal
	// to float rounding.
	_, want, _ := run(CacheOff, 3)
	first := ""
	for _, batch := range []int{1, 2, 8} {
		file, rows, prog := run(CacheAuto, batch)
		if first == "" {
			first = file
		} else if file != first {
			t.Errorf("batch size %d: another file than at batch size 1", batch)
		}
		if len(rows) != len(want) {
			t.Fatalf("batch size %d: %d rows, want %d", batch, len(rows), len(want))
		}
		for i := range rows {
			if !slices.Equal(rows[i].PromptIDs, want[i].PromptIDs) || !slices.Equal(rows[i].CompletionIDs, want[i].CompletionIDs) {
				t.Errorf("batch size %d row %d: prompt %v completion %v; without a cache %v %v", batch, i,
					rows[i].PromptIDs, rows[i].CompletionIDs, want[i].PromptIDs, want[i].CompletionIDs)
			}
		}
		if !strings.Contains(prog, "7/7") {
			t.Errorf("batch size %d: progress %q never reached 7/7 prompts", batch, prog)
		}
	}
}
