package encode

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"ortalign/data"
	"ortalign/pipeline/lm"
	"ortalign/tokenize"
)

// TestLoadUnpairedFromPairs: a preference file read as unpaired rows gives each pair's
// chosen sequence (desirable) and rejected sequence (undesirable), exactly the sequences
// EncodePairs makes of the pair, so KTO and DPO see the same tokens.
func TestLoadUnpairedFromPairs(t *testing.T) {
	tok, err := tokenize.Load("../../testdata/tokenizer/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range []string{"train.jsonl", "train_tokenized.parquet"} {
		o := DataOptions{MaxLength: 40, Truncation: tokenize.KeepEnd, Tokenizer: tok}
		path := filepath.Join("../../testdata/data", file)
		pairs, err := LoadPairs(path, o)
		if err != nil {
			t.Fatal(err)
		}
		rows, err := LoadUnpaired(path, o)
		if err != nil {
			t.Fatal(err)
		}
		n := len(pairs.Items)
		if n != 400 || len(rows.Items) != 2*n {
			t.Fatalf("%s: %d pairs, %d unpaired rows", file, n, len(rows.Items))
		}
		truncated := 0
		for i, p := range pairs.Items {
			c, r := rows.Items[i], rows.Items[n+i]
			if !c.Desirable || r.Desirable || c.Row != p.Row || r.Row != p.Row || c.Index != i || r.Index != n+i {
				t.Fatalf("%s: pair %d: rows %+v, %+v", file, i, c, r)
			}
			if !slices.Equal(c.Seq.IDs, p.Chosen.IDs) || c.Seq.CompletionStart != p.Chosen.CompletionStart ||
				!slices.Equal(r.Seq.IDs, p.Rejected.IDs) || r.Seq.CompletionStart != p.Rejected.CompletionStart {
				t.Fatalf("%s: pair %d: unpaired sequences differ from the pair's", file, i)
			}
			if len(p.Chosen.IDs) == 40 || len(p.Rejected.IDs) == 40 {
				truncated++
			}
		}
		if truncated == 0 {
			t.Fatalf("%s: no sequence reached the maximum length: the test does not cover truncation", file)
		}
	}
}

// TestEncodeUnpairedSkips: an empty completion skips its row naming the file's column
// (completion, or rejected for a preference file, whose chosen row stays); a missing
// label is an error; Strict makes a skip an error.
func TestEncodeUnpairedSkips(t *testing.T) {
	tok, err := tokenize.Load("../../testdata/tokenizer/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	yes, no := true, false
	cfg := EncodeConfig{Truncation: tokenize.KeepEnd}
	rows, stats, err := EncodeUnpaired("u", data.PromptCompletion, []data.Example{
		{Row: 0, Prompt: "The sky is", Completion: " blue.", Label: &yes},
		{Row: 1, Prompt: "The sky is", Completion: "", Label: &no},
	}, tok, cfg, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || len(stats.Skipped) != 1 || stats.Skipped[0] != (data.SkippedRow{Row: 1, Column: "completion", Reason: data.ReasonEmptyCompletion}) {
		t.Fatalf("rows %+v, skipped %v", rows, stats.Skipped)
	}
	rows, stats, err = EncodeUnpaired("p", data.Standard, []data.Example{{Row: 5, Prompt: "Q", Chosen: " a", Rejected: ""}}, tok, cfg, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || !rows[0].Desirable || len(stats.Skipped) != 1 || stats.Skipped[0].Column != "rejected" {
		t.Fatalf("rows %+v, skipped %v", rows, stats.Skipped)
	}
	if _, _, err := EncodeUnpaired("u", data.PromptCompletion, []data.Example{{Row: 3, Prompt: "p", Completion: " c"}}, tok, cfg, 0); err == nil || !strings.Contains(err.Error(), "row 3 has no label") {
		t.Fatalf("missing label: %v", err)
	}
	cfg.Strict = true
	_, _, err = EncodeUnpaired("u", data.TokenizedPromptCompletion, []data.Example{{Row: 2, PromptIDs: []int64{1}, CompletionIDs: []int64{}, Label: &yes}}, nil, cfg, 0)
	var rowErr *data.RowError
	if !errors.As(err, &rowErr) || rowErr.Column != "completion_input_ids" || rowErr.Reason != data.ReasonEmptyList {
		t.Fatalf("strict: %v", err)
	}
}

// TestPairKL: in blocks of the batch size, each row's prompt is joined to the previous
// row's completion (the first row to the block's last), as TRL's _get_kl_dataset; the
// joined ids are cut to the maximum length.
func TestPairKL(t *testing.T) {
	var rows []EncodedUnpaired
	for i := range 7 {
		p, c := int64(100+i), int64(200+i)
		rows = append(rows, EncodedUnpaired{Row: int64(i), Seq: lm.Sequence{IDs: []int64{p, p, c, c, c}, CompletionStart: 2}})
	}
	if err := PairKL(rows, 3, 0, tokenize.KeepStart); err != nil {
		t.Fatal(err)
	}
	partner := []int{2, 0, 1, 5, 3, 4, 6}
	for i, r := range rows {
		p, c := int64(100+i), int64(200+partner[i])
		if want := []int64{p, p, c, c, c}; !slices.Equal(r.KL.IDs, want) || r.KL.CompletionStart != 2 {
			t.Errorf("row %d: KL %v (start %d), want %v", i, r.KL.IDs, r.KL.CompletionStart, want)
		}
		if r.Seq.IDs[2] != int64(200+i) {
			t.Fatalf("row %d: its own sequence changed", i)
		}
	}
	if err := PairKL(rows, 2, 4, tokenize.KeepEnd); err != nil {
		t.Fatal(err)
	}
	if want := []int64{100, 201, 201, 201}; !slices.Equal(rows[0].KL.IDs, want) || rows[0].KL.CompletionStart != 1 {
		t.Fatalf("keep_end to 4 ids: %v (start %d), want %v", rows[0].KL.IDs, rows[0].KL.CompletionStart, want)
	}
	if err := PairKL(rows, 0, 0, ""); err == nil {
		t.Fatal("block size 0 accepted")
	}
}

// TestLoadUnpairedJSONL: a labelled prompt-completion file keeps its labels and order.
func TestLoadUnpairedJSONL(t *testing.T) {
	tok, err := tokenize.Load("../../testdata/tokenizer/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "u.jsonl")
	lines := `{"prompt": "The sky is", "completion": " blue.", "label": true}
{"prompt": "The sky is", "completion": " green.", "label": false}
{"prompt": "Snow is", "completion": " white.", "label": true}
`
	if err := os.WriteFile(p, []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := LoadUnpaired(p, DataOptions{Tokenizer: tok, Truncation: tokenize.KeepStart})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Items) != 3 || !l.Items[0].Desirable || l.Items[1].Desirable || !l.Items[2].Desirable || l.Layout != data.PromptCompletion {
		t.Fatalf("%s %+v", l.Layout, l.Items)
	}
	want, err := tok.EncodePromptCompletion("The sky is", " green.", tokenize.PairOptions{AppendEOS: true})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(l.Items[1].Seq.IDs, want.IDs) || l.Items[1].Seq.CompletionStart != want.CompletionStart {
		t.Fatalf("row 1: %v, want %v", l.Items[1].Seq, want)
	}
}
