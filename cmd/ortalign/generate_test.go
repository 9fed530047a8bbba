package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"ortalign/data"
	"ortalign/pipeline/generate"
	"ortalign/tokenize"
)

func genOpts(prompts, out string) *generateOptions {
	return &generateOptions{
		globalOptions: &globalOptions{threads: 1},
		model:         tinyModel, prompts: prompts, out: out, tokenizer: tinyTok,
		temperature: 1, topP: 1, repetitionPenalty: 1, maxNewTokens: 12, numReturn: 2, seed: 42,
		batchSize: 8, paddingSide: "left",
	}
}

func writePromptFile(t *testing.T, name string, cols []data.Column, rows [][]any) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := data.WriteFile(p, cols, rows); err != nil {
		t.Fatal(err)
	}
	return p
}

var genTextPrompts = []string{"Review: fine.\nSentiment:", "Review: the concert changed the menu as promised.\nVerdict:", "Review: ok", "Review: a long and winding review of a jacket that started at seven.\nSentiment:"}

// TestGenerateCommandText: text prompts with a tokenizer give num-return-sequences rows per
// prompt in prompt order, whose text is the decoded ids, with finish reasons; the output
// does not depend on --batch-size and reads back as a prompt-completion dataset.
func TestGenerateCommandText(t *testing.T) {
	var rows [][]any
	for _, p := range genTextPrompts {
		rows = append(rows, []any{p})
	}
	in := writePromptFile(t, "prompts.jsonl", []data.Column{{Name: "prompt", Kind: data.String}}, rows)
	tok, err := tokenize.Load(tinyTok)
	if err != nil {
		t.Fatal(err)
	}
	var outs [][]byte
	for _, bs := range []int{8, 1, 3} {
		out := filepath.Join(t.TempDir(), "gen.jsonl")
		o := genOpts(in, out)
		o.batchSize = bs
		var stdout, stderr bytes.Buffer
		if err := runGenerate(context.Background(), o, &stdout, &stderr); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(stdout.String(), "generated 8 completions of 4 prompts") || !strings.Contains(stdout.String(), "KV cache: derived") {
			t.Errorf("summary: %s", stdout.String())
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		outs = append(outs, b)
		if bs != 8 {
			continue
		}
		d, err := data.Open(out, data.Options{Use: data.UseSFT})
		if err != nil {
			t.Fatal(err)
		}
		ex, _, err := d.ReadAll()
		d.Close()
		if err != nil {
			t.Fatal(err)
		}
		if len(ex) != 8 {
			t.Fatalf("%d rows, want 8", len(ex))
		}
		for i, e := range ex {
			p := genTextPrompts[i/2]
			wantIDs, _ := tok.Encode(p, false)
			if !slices.Equal(intIDs(e.PromptIDs), wantIDs) {
				t.Errorf("row %d: prompt ids %v, want %v", i, e.PromptIDs, wantIDs)
			}
			if len(e.CompletionIDs) == 0 || len(e.CompletionIDs) > 12 {
				t.Errorf("row %d: %d completion ids", i, len(e.CompletionIDs))
			}
		}
	}
	// Same rows whatever the batch: tokens, text and finish reasons exactly, log-probs
	// within float32 noise (a batch's padding changes the matmul shapes).
	for k := 1; k < len(outs); k++ {
		a, b := genLines(t, outs[0]), genLines(t, outs[k])
		for i := range a {
			la, lb := a[i]["completion_logps"].(float64), b[i]["completion_logps"].(float64)
			delete(a[i], "completion_logps")
			delete(b[i], "completion_logps")
			if !reflect.DeepEqual(a[i], b[i]) || math.Abs(la-lb) > 1e-4 {
				t.Errorf("batch size run %d row %d: %v (%g) vs %v (%g)", k, i, b[i], lb, a[i], la)
			}
		}
	}
	// Text and finish reasons, from the JSON lines.
	for i, line := range strings.Split(strings.TrimSpace(string(outs[0])), "\n") {
		if !strings.Contains(line, `"prompt":`) || !strings.Contains(line, `"completion":`) || !strings.Contains(line, `"completion_logps":-`) {
			t.Errorf("line %d: %s", i, line)
		}
		if !strings.Contains(line, `"finish_reason":"length"`) && !strings.Contains(line, `"finish_reason":"eos"`) {
			t.Errorf("line %d: finish reason: %s", i, line)
		}
	}
}

// TestGenerateCommandTokenizedStopAndEOS: pre-tokenized prompts need no tokenizer (no
// text columns); --eos-token-id ends rows; --stop needs a tokenizer; a greedy run stops at
// a stop string with the text cut before it.
func TestGenerateCommandTokenizedStopAndEOS(t *testing.T) {
	in := writePromptFile(t, "ids.parquet", []data.Column{{Name: "prompt_input_ids", Kind: data.Int64List}},
		[][]any{{[]int64{303, 25, 262}}, {[]int64{5}}, {[]int64{303, 25, 370, 220, 73, 325}}})
	out := filepath.Join(t.TempDir(), "gen.parquet")
	o := genOpts(in, out)
	o.tokenizer, o.temperature, o.numReturn, o.maxNewTokens = "", 0, 1, 20
	var stdout bytes.Buffer
	if err := runGenerate(context.Background(), o, &stdout, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	d, err := data.Open(out, data.Options{Use: data.UseSFT})
	if err != nil {
		t.Fatal(err)
	}
	ex, _, err := d.ReadAll()
	d.Close()
	if err != nil || len(ex) != 3 || d.HasField("completion") {
		t.Fatalf("read back: %v, %d rows, text column %v", err, len(ex), d.HasField("completion"))
	}
	// EOS at the third token of row 0's greedy completion.
	eos := ex[0].CompletionIDs[2]
	o.eos = []int{int(eos)}
	out2 := filepath.Join(t.TempDir(), "gen2.jsonl")
	o.out = out2
	if err := runGenerate(context.Background(), o, &stdout, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out2)
	first := strings.SplitN(string(b), "\n", 2)[0]
	if !strings.Contains(first, `"finish_reason":"eos"`) {
		t.Errorf("row 0 with --eos-token-id %d: %s", eos, first)
	}
	o.stop = []string{"x"}
	if err := runGenerate(context.Background(), o, &stdout, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "--tokenizer") {
		t.Errorf("--stop without --tokenizer: %v", err)
	}
	// With the tokenizer: stop at the text of row 0's 4th greedy token.
	tok, _ := tokenize.Load(tinyTok)
	full, _ := tok.Decode(intIDs(ex[0].CompletionIDs), true)
	upto, _ := tok.Decode(intIDs(ex[0].CompletionIDs[:3]), true)
	stop := strings.TrimSpace(full[len(upto):])
	if len(stop) > 3 {
		stop = stop[:3]
	}
	o.tokenizer, o.eos, o.stop = tinyTok, nil, []string{stop}
	out3 := filepath.Join(t.TempDir(), "gen3.jsonl")
	o.out = out3
	if err := runGenerate(context.Background(), o, &stdout, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(out3)
	first = strings.SplitN(string(b), "\n", 2)[0]
	if !strings.Contains(first, `"finish_reason":"stop"`) || strings.Contains(first, stop+`"`) {
		t.Errorf("stop %q: %s", stop, first)
	}
}

// TestGenerateCommandInterrupted: a cancelled run is an error and leaves no file.
func TestGenerateCommandInterrupted(t *testing.T) {
	in := writePromptFile(t, "prompts.jsonl", []data.Column{{Name: "prompt", Kind: data.String}}, [][]any{{"Review: fine."}})
	out := filepath.Join(t.TempDir(), "gen.jsonl")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := runGenerate(ctx, genOpts(in, out), &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("want an interrupted error, got %v", err)
	}
	assertNoFile(t, out)
}

func genLines(t *testing.T, b []byte) []map[string]any {
	t.Helper()
	var rows []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatal(err)
		}
		rows = append(rows, m)
	}
	return rows
}

// TestGenerateFlags: the command line fills the options (through runF, without running)
// and the sampling flags map to the library's options.
func TestGenerateFlags(t *testing.T) {
	o := parseFlags(t, newGenerateCmd, "--model", "m.onnx", "--prompts", "p.jsonl", "--out", "g.parquet", "--tokenizer", "tok.json",
		"--columns", "prompt=q", "--strict", "--temperature", "0.5", "--top-k", "7", "--top-p", "0.9", "--min-p", "0.05",
		"--repetition-penalty", "1.2", "--max-new-tokens", "9", "--num-return-sequences", "3", "--seed", "11",
		"--eos-token-id", "2", "--eos-token-id", "5", "--stop", "\n\n", "--batch-size", "4", "--padding-side", "right", "--no-kv-cache")
	if o.model != "m.onnx" || o.prompts != "p.jsonl" || o.out != "g.parquet" || o.tokenizer != "tok.json" || o.columns != "prompt=q" ||
		!o.strict || o.batchSize != 4 || !o.noCache || o.threads != 1 {
		t.Fatalf("options %+v", o)
	}
	so := o.sampleOptions()
	want := generate.SampleOptions{Temperature: 0.5, TopK: 7, TopP: 0.9, MinP: 0.05, RepetitionPenalty: 1.2, MaxNewTokens: 9,
		NumReturnSequences: 3, Seed: 11, EOS: []int64{2, 5}, Stop: []string{"\n\n"}, PaddingSide: "right"}
	if !reflect.DeepEqual(so, want) {
		t.Fatalf("sample options %+v, want %+v", so, want)
	}
	if err := o.validate(); err != nil {
		t.Fatal(err)
	}
	d := parseFlags(t, newGenerateCmd, "--model", "m.onnx", "--prompts", "p.jsonl", "--out", "g.jsonl")
	if d.temperature != 1 || d.topP != 1 || d.maxNewTokens != 64 || d.numReturn != 1 || d.seed != 42 || d.batchSize != 8 || d.paddingSide != "left" || d.noCache {
		t.Fatalf("defaults %+v", d)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--batch-size", "0"}, "--batch-size"},
		{[]string{"--num-return-sequences", "0"}, "--num-return-sequences"},
		{[]string{"--out", "g.csv"}, "--out"},
		{[]string{"--stop", "x"}, "--stop needs --tokenizer"},
		{[]string{"--eos-token-id", "-1"}, "--eos-token-id"},
		{[]string{"--columns", "prompt"}, "--columns"},
		{[]string{"--top-p", "1.5"}, "top-p"},
	} {
		o := parseFlags(t, newGenerateCmd, append([]string{"--model", "m.onnx", "--prompts", "p.jsonl", "--out", "g.jsonl"}, c.args...)...)
		if err := o.validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: got %v, want an error containing %q", c.args, err, c.want)
		}
	}
}
