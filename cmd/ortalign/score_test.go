package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"ortalign/data"
	"ortalign/pipeline/score"
)

const (
	tinyModel = "../../testdata/models/gpt2_opset17.onnx"
	tinyRef   = "../../testdata/models/llama_opset17.onnx"
	tinyTok   = "../../testdata/tokenizer/tokenizer.json"
	tinyData  = "../../testdata/data/test.parquet"
)

// TestMain lets a test run the real command in a subprocess (for process-wide failures
// such as a missing ONNX Runtime library): ORTALIGN_TEST_MAIN=1 runs main() instead.
func TestMain(m *testing.M) {
	if os.Getenv("ORTALIGN_TEST_MAIN") == "1" {
		os.Args = append([]string{"ortalign"}, strings.Fields(os.Getenv("ORTALIGN_TEST_ARGS"))...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func scoreOpts(dataPath, out string) *scoreOptions {
	return &scoreOptions{
		globalOptions: &globalOptions{threads: 1},
		model:         tinyModel, dataPath: dataPath, tokenizer: tinyTok, out: out,
		beta: 0.1, batchSize: 4, dataFlags: dataFlags{maxLength: 128, truncation: "keep_end"},
	}
}

// writePairs writes a standard-layout Parquet file; a nil string is a null.
func writePairs(t *testing.T, rows [][3]*string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pairs.parquet")
	cols := []data.Column{{Name: "prompt", Kind: data.String}, {Name: "chosen", Kind: data.String}, {Name: "rejected", Kind: data.String}}
	var vals [][]any
	for _, r := range rows {
		vals = append(vals, []any{r[0], r[1], r[2]})
	}
	if err := data.WriteFile(p, cols, vals); err != nil {
		t.Fatal(err)
	}
	return p
}

func s(v string) *string { return &v }

func TestScoreWritesOneRowPerInputInOrder(t *testing.T) {
	in := writePairs(t, [][3]*string{
		{s("Review: fine.\nSentiment:"), s(" good"), s(" bad")},
		{s("Review: null row.\nSentiment:"), nil, s(" bad")},
		{s("Review: long one here.\nSentiment:"), s(" amazing happy good"), s(" awful")},
	})
	out := filepath.Join(t.TempDir(), "scores.parquet")
	o := scoreOpts(in, out)
	o.ref = tinyRef
	var stdout, stderr bytes.Buffer
	if err := runScore(context.Background(), o, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout.String(), "skipped 1 rows") || !strings.Contains(stdout.String(), "reward accuracy") {
		t.Fatalf("summary: %s", stdout.String())
	}
	if !strings.Contains(stderr.String(), "row 1") {
		t.Fatalf("want a warning naming row 1, got %s", stderr.String())
	}
	// The output is a valid input: it reads back in the standard layout with ref columns.
	d, err := data.Open(out, data.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ex, skipped, err := d.ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if d.NumRows != 3 || len(ex) != 2 || len(skipped) != 1 || skipped[0].Row != 1 {
		t.Fatalf("rows %d, examples %d, skipped %v", d.NumRows, len(ex), skipped)
	}
	if ex[1].Row != 2 || ex[1].Chosen != " amazing happy good" || ex[1].RefChosenLogps == nil || *ex[1].RefChosenLogps >= 0 {
		t.Fatalf("row 2 read back wrong: %+v", ex[1])
	}
}

func TestScoreStrictFailsOnNull(t *testing.T) {
	in := writePairs(t, [][3]*string{{s("p"), s(" a"), nil}})
	out := filepath.Join(t.TempDir(), "scores.jsonl")
	o := scoreOpts(in, out)
	o.strict = true
	err := runScore(context.Background(), o, &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "rejected") || !strings.Contains(err.Error(), "row 0") || strings.Count(err.Error(), "--strict") != 1 {
		t.Fatalf("want an error naming row 0, column rejected and --strict once, got %v", err)
	}
	assertNoFile(t, out)
}

func assertNoFile(t *testing.T, path string) {
	t.Helper()
	entries, _ := os.ReadDir(filepath.Dir(path))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), filepath.Base(path)) || strings.Contains(e.Name(), ".tmp") {
			t.Fatalf("partial output left behind: %s", e.Name())
		}
	}
}

// TestScoreBadInput checks that each bad input is a one-line error naming the culprit,
// with no partial output.
func TestScoreBadInput(t *testing.T) {
	good, err := os.ReadFile(tinyData)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	corruptPage := append([]byte(nil), good...)
	for i := 4; i < 64; i++ { // the first page header follows the leading magic
		corruptPage[i] = 0xff
	}
	corruptFooter := append([]byte(nil), good...)
	for i := len(good) - 200; i < len(good)-8; i++ {
		corruptFooter[i] = 0x5a
	}
	noRejected := writeColumns(t, dir, "norejected.parquet")
	noLogits := filepath.Join(dir, "nologits.onnx")
	renameOutput(t, tinyModel, noLogits, "hidden_states")
	bigIDs := filepath.Join(dir, "bigids.parquet")
	if err := data.WriteFile(bigIDs, []data.Column{{Name: "prompt_input_ids", Kind: data.Int64List}, {Name: "chosen_input_ids", Kind: data.Int64List}, {Name: "rejected_input_ids", Kind: data.Int64List}},
		[][]any{{[]int64{1, 2}, []int64{3}, []int64{4}}, {[]int64{1, 2}, []int64{9000}, []int64{4}}}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, data, model string
		want              []string
	}{
		{"empty file", write("empty.parquet", nil), "", []string{"empty.parquet"}},
		{"not parquet", write("text.parquet", []byte("prompt,chosen,rejected\na,b,c\n")), "", []string{"text.parquet"}},
		{"truncated", write("trunc.parquet", good[:len(good)/2]), "", []string{"trunc.parquet"}},
		{"corrupt footer", write("footer.parquet", corruptFooter), "", []string{"footer.parquet"}},
		{"corrupt page", write("page.parquet", corruptPage), "", []string{"page.parquet"}},
		{"missing rejected", noRejected, "", []string{"norejected.parquet", "rejected", "--columns rejected=NAME"}},
		{"ids beyond vocabulary", bigIDs, "", []string{"bigids.parquet", "row 1", "9000"}},
		{"model without logits", tinyData, noLogits, []string{"nologits.onnx", "logits"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out.parquet")
			o := scoreOpts(c.data, out)
			if c.model != "" {
				o.model = c.model
			}
			err := runScore(context.Background(), o, &bytes.Buffer{}, &bytes.Buffer{})
			if err == nil {
				t.Fatal("want an error")
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Errorf("error is not one line: %q", msg)
			}
			for _, w := range c.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not mention %q", msg, w)
				}
			}
			assertNoFile(t, out)
		})
	}
}

func TestTokenizerLargerThanModelIsAnError(t *testing.T) {
	// A tokenizer with ids beyond the model's vocabulary cannot be used with it.
	dir := t.TempDir()
	b, err := os.ReadFile(tinyTok)
	if err != nil {
		t.Fatal(err)
	}
	big := strings.Replace(string(b), `"added_tokens": [`, `"added_tokens": [{"id": 9999, "content": "<|extra|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},`, 1)
	if big == string(b) {
		t.Fatal("could not add a token to the tokenizer fixture")
	}
	tok := filepath.Join(dir, "tokenizer.json")
	os.WriteFile(tok, []byte(big), 0o644)
	o := scoreOpts(tinyData, filepath.Join(dir, "out.parquet"))
	o.tokenizer = tok
	err = runScore(context.Background(), o, &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "does not fit") || !strings.Contains(err.Error(), "512") || !strings.Contains(err.Error(), tok) {
		t.Fatalf("want an error naming both sizes, got %v", err)
	}
}

func TestMissingORTLibrary(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out.parquet")
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "ORTALIGN_TEST_MAIN=1", "ORTALIGN_ORT_LIB=/nonexistent/libonnxruntime.so.1",
		"ORTALIGN_TEST_ARGS=score --model "+tinyModel+" --data "+tinyData+" --tokenizer "+tinyTok+" --out "+out)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if err == nil {
		t.Fatal("want a non-zero exit")
	}
	msg := strings.TrimSpace(stderr.String())
	if strings.Count(msg, "\n") != 0 || !strings.Contains(msg, "/nonexistent/libonnxruntime.so.1") || !strings.Contains(msg, "make setup") {
		t.Fatalf("want one line naming the library and how to get it, got %q", msg)
	}
	assertNoFile(t, out)
}

// chatTokenizer writes the test tokenizer with a chat template into a temporary directory
// and returns its tokenizer.json.
func chatTokenizer(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	tokJSON, err := os.ReadFile(tinyTok)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "tokenizer.json"), tokJSON, 0o644)
	cfg := `{"eos_token": "<|endoftext|>", "pad_token": "<|pad|>", "chat_template": "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|endoftext|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"}`
	os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), []byte(cfg), 0o644)
	return filepath.Join(dir, "tokenizer.json")
}

// TestScoreConversational scores UltraFeedback-style message lists through a chat
// template and writes them back as message lists, so the output is again a valid input.
func TestScoreConversational(t *testing.T) {
	out := filepath.Join(t.TempDir(), "scores.parquet")
	o := scoreOpts("../../data/testdata/arrow_conversational.parquet", out)
	o.tokenizer = chatTokenizer(t)
	o.maxLength = 0
	var stdout bytes.Buffer
	if err := runScore(context.Background(), o, &stdout, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	in, err := data.Open(o.dataPath, data.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	want, _, _ := in.ReadAll()
	back, err := data.Open(out, data.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	got, _, err := back.ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if back.Layout != data.Conversational || len(got) != len(want) || len(got) == 0 {
		t.Fatalf("read back %s layout, %d rows; want conversational, %d rows", back.Layout, len(got), len(want))
	}
	if fmt.Sprint(got[0].ChosenMessages) != fmt.Sprint(want[0].ChosenMessages) || got[0].RefChosenLogps != nil {
		t.Fatalf("row 0 read back as %+v, want the input's messages %+v", got[0], want[0])
	}
}

// TestScoreStreamsInWindowsAndShards: scoring a 5-row-group file window by window gives
// the same rows, in file order, as scoring it at once, and two shards cover it exactly.
func TestScoreStreamsInWindowsAndShards(t *testing.T) {
	const file = "../../data/testdata/arrow_standard_zstd_v2_nodict.parquet"
	run := func(window int, shard string) []data.Example {
		t.Helper()
		defer func(w int) { score.ScoreWindow = w }(score.ScoreWindow)
		score.ScoreWindow = window
		out := filepath.Join(t.TempDir(), "scores.parquet")
		o := scoreOpts(file, out)
		o.shard = shard
		if err := runScore(context.Background(), o, &bytes.Buffer{}, &bytes.Buffer{}); err != nil {
			t.Fatal(err)
		}
		d, err := data.Open(out, data.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		ex, _, err := d.ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		return ex
	}
	whole := run(1<<20, "")
	streamed := run(1, "")
	if len(whole) == 0 || len(whole) != len(streamed) {
		t.Fatalf("%d rows at once, %d streamed", len(whole), len(streamed))
	}
	for i := range whole {
		if whole[i].Chosen != streamed[i].Chosen || whole[i].Row != streamed[i].Row {
			t.Fatalf("row %d differs: %+v vs %+v", i, whole[i], streamed[i])
		}
	}
	a, b := run(1, "0/2"), run(1, "1/2")
	if len(a)+len(b) != len(whole) || len(a) == 0 || len(b) == 0 {
		t.Fatalf("shards have %d + %d rows, the file %d", len(a), len(b), len(whole))
	}
}

// writeConversation writes an UltraFeedback-style conversational Parquet file of n rows
// whose chosen list is empty (not null) at the rows in empty.
func writeConversation(t *testing.T, n int, empty ...int) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "conv.parquet")
	cols := []data.Column{{Name: "prompt", Kind: data.Messages}, {Name: "chosen", Kind: data.Messages}, {Name: "rejected", Kind: data.Messages}}
	var rows [][]any
	for i := range n {
		prompt := []data.Message{{Role: "user", Content: fmt.Sprintf("Write poem %d", i)}}
		chosen := []data.Message{{Role: "assistant", Content: fmt.Sprintf("good poem %d", i)}}
		for _, e := range empty {
			if i == e {
				chosen = []data.Message{}
			}
		}
		rows = append(rows, []any{prompt, chosen, []data.Message{{Role: "assistant", Content: fmt.Sprintf("bad %d", i)}}})
	}
	if err := data.WriteFile(p, cols, rows); err != nil {
		t.Fatal(err)
	}
	return p
}

// readJSONL reads score's JSONL output, one map a row.
func readJSONL(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rows []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		rows = append(rows, m)
	}
	return rows
}

// TestScoreSkipsEmptyLists: one row whose chosen is an empty list (row 99) does not stop
// the run: it is skipped with a warning naming the file, row and column, counted in the
// summary, and written with null scores (one output row per input row); with --strict it
// is an error naming the row and column. The files of other writers (DuckDB, arrow-rs)
// with empty lists and a null are scored the same way.
func TestScoreSkipsEmptyLists(t *testing.T) {
	tok := chatTokenizer(t)
	in := writeConversation(t, 120, 99)
	for _, ext := range []string{".jsonl", ".parquet"} {
		out := filepath.Join(t.TempDir(), "scores"+ext)
		o := scoreOpts(in, out)
		o.tokenizer = tok
		var stdout, stderr bytes.Buffer
		if err := runScore(context.Background(), o, &stdout, &stderr); err != nil {
			t.Fatalf("%s: %v", ext, err)
		}
		if !strings.Contains(stdout.String(), "scored 119 pairs") || !strings.Contains(stdout.String(), "skipped 1 rows") {
			t.Errorf("summary: %s", stdout.String())
		}
		if want := in + `: skipped row 99: empty list in column "chosen"`; !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr %q lacks %q", stderr.String(), want)
		}
		if ext == ".parquet" {
			d, err := data.Open(out, data.Options{})
			if err != nil {
				t.Fatal(err)
			}
			ex, skipped, err := d.ReadAll()
			d.Close()
			if err != nil || d.NumRows != 120 || len(ex) != 120 || len(skipped) != 0 || ex[99].Row != 99 || len(ex[99].ChosenMessages) != 0 {
				t.Fatalf("parquet output: %d rows, %d examples, skipped %v, err %v", d.NumRows, len(ex), skipped, err)
			}
			continue
		}
		rows := readJSONL(t, out)
		if len(rows) != 120 {
			t.Fatalf("%d output rows, want 120", len(rows))
		}
		for i, r := range rows {
			null := r["chosen_logps"] == nil || r["rejected_logps"] == nil || r["chosen_tokens"] == nil
			if null != (i == 99) {
				t.Errorf("row %d: chosen_logps %v rejected_logps %v (want null only at row 99)", i, r["chosen_logps"], r["rejected_logps"])
			}
		}
		if p, ok := rows[99]["prompt"].([]any); !ok || len(p) != 1 {
			t.Errorf("row 99 keeps its input: %v", rows[99])
		}
	}

	t.Run("strict", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "scores.parquet")
		o := scoreOpts(in, out)
		o.tokenizer, o.strict = tok, true
		err := runScore(context.Background(), o, &bytes.Buffer{}, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), in) || !strings.Contains(err.Error(), "row 99") || !strings.Contains(err.Error(), `"chosen"`) || strings.Count(err.Error(), "--strict") != 1 {
			t.Fatalf("want an error naming the file, row 99, column chosen and --strict, got %v", err)
		}
		assertNoFile(t, out)
	})

	for _, f := range []string{"duckdb_ultrafeedback_empty.parquet", "arrow_ultrafeedback_empty.parquet"} {
		t.Run(f, func(t *testing.T) {
			defer func(w int) { score.ScoreWindow = w }(score.ScoreWindow)
			score.ScoreWindow = 40 // several windows
			out := filepath.Join(t.TempDir(), "scores.jsonl")
			o := scoreOpts("../../data/testdata/"+f, out)
			o.tokenizer = tok
			var stdout, stderr bytes.Buffer
			if err := runScore(context.Background(), o, &stdout, &stderr); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(stdout.String(), "scored 116 pairs") || !strings.Contains(stdout.String(), "skipped 4 rows") {
				t.Errorf("summary: %s", stdout.String())
			}
			for _, w := range []string{`row 17: null in column "rejected"`, `row 99: empty list in column "chosen"`, `row 103: empty list in column "rejected"`, `row 110: empty list in column "chosen"`} {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr lacks %q", w)
				}
			}
			rows := readJSONL(t, out)
			if len(rows) != 120 {
				t.Fatalf("%d output rows, want 120", len(rows))
			}
			for i, r := range rows {
				if null := r["chosen_logps"] == nil; null != (i == 17 || i == 99 || i == 103 || i == 110) {
					t.Errorf("row %d: chosen_logps %v", i, r["chosen_logps"])
				}
			}
		})
	}
}

// TestScoreFlagErrorsComeFirst: bad flags, a bad --columns mapping and a text dataset
// without --tokenizer fail before ONNX Runtime or a model is loaded (the model here does
// not exist), and library errors get the flag name once.
func TestScoreFlagErrorsComeFirst(t *testing.T) {
	for _, c := range []struct {
		name string
		set  func(*scoreOptions)
		want string
	}{
		{"shard", func(o *scoreOptions) { o.shard = "3/2" }, "--shard"},
		{"columns syntax", func(o *scoreOptions) { o.columns = "prompt" }, "--columns: "},
		{"columns field", func(o *scoreOptions) { o.columns = "nope=x" }, "--columns: "},
		{"columns missing", func(o *scoreOptions) { o.columns = "rejected=nope" }, `"nope"`},
		{"out suffix", func(o *scoreOptions) { o.out = "scores.csv" }, "--out"},
		{"no tokenizer", func(o *scoreOptions) { o.tokenizer = "" }, "pass --tokenizer"},
		{"no chat template", func(o *scoreOptions) { o.dataPath = "../../data/testdata/arrow_conversational.parquet" }, "chat template"},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := scoreOpts(tinyData, filepath.Join(t.TempDir(), "out.parquet"))
			o.model = "/nonexistent/model.onnx"
			c.set(o)
			err := runScore(context.Background(), o, &bytes.Buffer{}, &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "model.onnx") {
				t.Fatalf("want an error mentioning %q before the model is loaded, got %v", c.want, err)
			}
			for _, flag := range []string{"--columns", "--tokenizer", "--strict"} {
				if strings.Count(err.Error(), flag) > 1 {
					t.Errorf("%s named twice: %v", flag, err)
				}
			}
		})
	}
}

// TestScoreFlags: the command line fills the options through runF (nothing runs), the
// shard is parsed by validate, and cobra refuses --model with --reward.
func TestScoreFlags(t *testing.T) {
	o := parseFlags(t, newScoreCmd, "--model", "p.onnx", "--ref", "r.onnx", "--data", "d.parquet", "--tokenizer", "tok.json",
		"--out", "s.jsonl", "--beta", "0.2", "--batch-size", "3", "--shard", "1/4", "--columns", "chosen=good", "--max-length", "64",
		"--truncation", "keep_end", "--strict")
	if o.model != "p.onnx" || o.ref != "r.onnx" || o.reward != "" || o.dataPath != "d.parquet" || o.tokenizer != "tok.json" || o.out != "s.jsonl" ||
		o.beta != 0.2 || o.batchSize != 3 || o.shard != "1/4" || o.columns != "chosen=good" || o.maxLength != 64 || o.truncation != "keep_end" || !o.strict {
		t.Fatalf("options %+v", o)
	}
	if err := o.validate(); err != nil || o.shardI != 1 || o.shards != 4 {
		t.Fatalf("validate: %v, shard %d/%d", err, o.shardI, o.shards)
	}
	r := parseFlags(t, newScoreCmd, "--reward", "rm.onnx", "--data", "d.jsonl", "--out", "s.parquet")
	if r.reward != "rm.onnx" || r.model != "" || r.beta != 0.1 || r.batchSize != 8 || r.maxLength != 1024 {
		t.Fatalf("reward options %+v", r)
	}
	cmd := newScoreCmd(&globalOptions{}, func(*scoreOptions) error { t.Fatal("ran with --model and --reward"); return nil })
	cmd.SetArgs([]string{"--model", "p.onnx", "--reward", "rm.onnx", "--data", "d", "--out", "s.jsonl"})
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "model") {
		t.Fatalf("--model with --reward: %v", err)
	}
}
