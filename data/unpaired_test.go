package data

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"
)

func writeLines(t *testing.T, name string, lines ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func readUnpaired(t *testing.T, path string, cols map[string]string) (*Dataset, []Example, []SkippedRow) {
	t.Helper()
	ds, err := Open(path, Options{Use: UseUnpaired, Columns: cols})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ds.Close() })
	ex, sk, err := ds.ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	return ds, ex, sk
}

func labels(ex []Example) string {
	var b strings.Builder
	for _, e := range ex {
		switch {
		case e.Label == nil:
			b.WriteByte('?')
		case *e.Label:
			b.WriteByte('T')
		default:
			b.WriteByte('F')
		}
	}
	return b.String()
}

// TestReadUnpairedJSONL: text, conversational and pre-tokenized unpaired rows read into
// prompt-completion layouts with their labels; a null label skips the row (or is an
// error with Strict); the other columns are not read.
func TestReadUnpairedJSONL(t *testing.T) {
	text := writeLines(t, "u.jsonl",
		`{"prompt": "The sky is", "completion": " blue.", "label": true, "text": 3}`,
		`{"prompt": "The sky is", "completion": " green.", "label": false}`,
		`{"prompt": "Grass is", "completion": " green.", "label": null}`,
		`{"prompt": "Snow is", "completion": " white.", "label": true}`)
	ds, ex, sk := readUnpaired(t, text, nil)
	if ds.Layout != PromptCompletion || labels(ex) != "TFT" || ex[1].Completion != " green." || ex[2].Row != 3 {
		t.Fatalf("layout %s, labels %s, rows %+v", ds.Layout, labels(ex), ex)
	}
	if len(sk) != 1 || sk[0].Row != 2 || sk[0].Column != "label" || sk[0].Reason != ReasonNull {
		t.Fatalf("skipped %v", sk)
	}
	strict, err := Open(text, Options{Use: UseUnpaired, Strict: true})
	if err != nil {
		t.Fatal(err)
	}
	defer strict.Close()
	if _, _, err := strict.ReadAll(); !strings.Contains(fmt.Sprint(err), `line 3 (row 2): null in key "label"`) {
		t.Fatalf("strict: error %v", err)
	}

	conv := writeLines(t, "c.jsonl",
		`{"prompt": [{"role": "user", "content": "sky?"}], "completion": [{"role": "assistant", "content": "blue"}], "label": false}`)
	ds, ex, _ = readUnpaired(t, conv, nil)
	if ds.Layout != ConversationalPromptCompletion || labels(ex) != "F" || !reflect.DeepEqual(ex[0].CompletionMessages, []Message{asst("blue")}) {
		t.Fatalf("conversational: %s %+v", ds.Layout, ex)
	}

	ids := writeLines(t, "i.jsonl",
		`{"prompt_input_ids": [1, 2], "completion_input_ids": [3], "label": true, "prompt": "ignored"}`)
	ds, ex, _ = readUnpaired(t, ids, nil)
	if ds.Layout != TokenizedPromptCompletion || labels(ex) != "T" || !reflect.DeepEqual(ex[0].CompletionIDs, []int64{3}) || ex[0].Prompt != "" {
		t.Fatalf("pre-tokenized: %s %+v", ds.Layout, ex)
	}

	mapped := writeLines(t, "m.jsonl", `{"q": "a", "a": " b", "good": true}`)
	_, ex, _ = readUnpaired(t, mapped, map[string]string{"prompt": "q", "completion": "a", "label": "good"})
	if labels(ex) != "T" || ex[0].Prompt != "a" {
		t.Fatalf("mapped columns: %+v", ex)
	}
}

// TestReadUnpairedParquet: a Parquet BOOLEAN label (optional, with a null) reads as the
// rows' labels.
func TestReadUnpairedParquet(t *testing.T) {
	type row struct {
		Prompt     string `parquet:"prompt"`
		Completion string `parquet:"completion"`
		Label      *bool  `parquet:"label,optional"`
	}
	yes, no := true, false
	rows := []row{{"p0", " c0", &yes}, {"p1", " c1", &no}, {"p2", " c2", nil}, {"p3", " c3", &no}, {"p4", " c4", &yes}}
	p := filepath.Join(t.TempDir(), "u.parquet")
	if err := parquet.WriteFile(p, rows); err != nil {
		t.Fatal(err)
	}
	ds, ex, sk := readUnpaired(t, p, nil)
	if ds.Layout != PromptCompletion || labels(ex) != "TFFT" || ex[3].Completion != " c4" {
		t.Fatalf("layout %s labels %s %+v", ds.Layout, labels(ex), ex)
	}
	if len(sk) != 1 || sk[0].Row != 2 || sk[0].Column != "label" {
		t.Fatalf("skipped %v", sk)
	}
}

// TestUnpairPreference: a preference file read for unpaired rows keeps its preference
// layout and reads no other column; Unpair gives each block of 1000 pairs' chosen rows
// (true) then its rejected rows (false), as TRL's unpair_preference_dataset.
func TestUnpairPreference(t *testing.T) {
	ds, ex, _ := readUnpaired(t, "../testdata/data/train.jsonl", nil)
	if ds.Layout != Standard || !ds.HasField(FieldPrompt) || ds.HasField(FieldLabel) || len(ex) != 400 {
		t.Fatalf("layout %s, columns %v, %d rows", ds.Layout, ds.Columns, len(ex))
	}
	layout, rows := Unpair(ds.Layout, ex)
	if layout != PromptCompletion || len(rows) != 800 {
		t.Fatalf("unpaired: %s, %d rows", layout, len(rows))
	}
	if labels(rows) != strings.Repeat("T", 400)+strings.Repeat("F", 400) {
		t.Fatalf("labels %s", labels(rows))
	}
	for i, e := range ex {
		c, r := rows[i], rows[400+i]
		if c.Prompt != e.Prompt || c.Completion != e.Chosen || r.Prompt != e.Prompt || r.Completion != e.Rejected || c.Row != e.Row || r.Row != e.Row {
			t.Fatalf("pair %d: %+v -> %+v, %+v", i, e, c, r)
		}
	}

	// 2500 pre-tokenized pairs: blocks of 1000, 1000 and 500.
	var many []Example
	for i := range 2500 {
		many = append(many, Example{Row: int64(i), PromptIDs: []int64{1}, ChosenIDs: []int64{int64(i)}, RejectedIDs: []int64{-int64(i)}})
	}
	layout, rows = Unpair(Tokenized, many)
	want := strings.Repeat("T", 1000) + strings.Repeat("F", 1000) + strings.Repeat("T", 1000) + strings.Repeat("F", 1000) + strings.Repeat("T", 500) + strings.Repeat("F", 500)
	if layout != TokenizedPromptCompletion || labels(rows) != want {
		t.Fatalf("blocks: %s", layout)
	}
	if rows[2000].CompletionIDs[0] != 1000 || rows[3000].CompletionIDs[0] != -1000 || rows[4500].CompletionIDs[0] != -2000 {
		t.Fatalf("block order: %v %v %v", rows[2000], rows[3000], rows[4500])
	}

	conv := []Example{{Row: 4, PromptMessages: []Message{user("q")}, ChosenMessages: []Message{asst("a")}, RejectedMessages: []Message{asst("b")}}}
	layout, rows = Unpair(Conversational, conv)
	if layout != ConversationalPromptCompletion || labels(rows) != "TF" || rows[1].CompletionMessages[0].Content != "b" || rows[1].PromptMessages[0].Content != "q" {
		t.Fatalf("conversational: %s %+v", layout, rows)
	}
	if l, r := Unpair(PromptCompletion, conv); l != PromptCompletion || len(r) != 1 {
		t.Fatal("Unpair changed a layout that is not a preference one")
	}
}

// TestDetectUnpairedErrors: what an unpaired file lacks or mistypes is an error naming
// the column; a label column of another type does not bother the other uses.
func TestDetectUnpairedErrors(t *testing.T) {
	for _, c := range []struct{ line, want string }{
		{`{"prompt": "p", "completion": " c"}`, `missing column "label"`},
		{`{"prompt": "p", "completion": " c", "label": "yes"}`, `key "label" is a string (line 1), want boolean`},
		{`{"prompt": "p", "completion": " c", "label": 1}`, `key "label" is a number (line 1), want boolean`},
		{`{"completion": " c", "label": true}`, `missing column "prompt"`},
		{`{"prompt": [{"role": "user", "content": "q"}], "completion": " c", "label": true}`, `column "prompt" is a list of {role, content} messages, want a string`},
		{`{"text": "t"}`, "no unpaired preference columns"},
	} {
		_, err := Open(writeLines(t, "e.jsonl", c.line), Options{Use: UseUnpaired})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.line, err, c.want)
		}
		var miss *MissingColumnsError
		if strings.HasPrefix(c.want, "missing") && !errors.As(err, &miss) {
			t.Errorf("%s: %T is not a *MissingColumnsError", c.line, err)
		}
	}
	// A string label column is not read by the other uses.
	p := writeLines(t, "s.jsonl", `{"prompt": "p", "chosen": " a", "rejected": " b", "completion": " a", "label": "good"}`)
	for _, use := range []Use{UsePreference, UseSFT, UsePrompts} {
		if _, err := Open(p, Options{Use: use}); err != nil {
			t.Errorf("%s: %v", use, err)
		}
	}
	if UseUnpaired.String() != "unpaired preference rows" {
		t.Error(UseUnpaired.String())
	}
}
