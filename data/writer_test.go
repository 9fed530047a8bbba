package data

import (
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"
)

// scoreColumns is the output schema of the scoring command.
var scoreColumns = []Column{
	{"prompt", String}, {"chosen", String}, {"rejected", String},
	{"chosen_logps", Float64}, {"rejected_logps", Float64},
	{"chosen_tokens", Int64}, {"rejected_tokens", Int64},
	{"ref_chosen_logps", Float64}, {"ref_rejected_logps", Float64},
	{"rewards_chosen", Float64}, {"rewards_rejected", Float64}, {"margin", Float64},
}

func scoreRows(n int) [][]any {
	rows := make([][]any, n)
	for i := range rows {
		x := float64(i)
		var margin any = 0.1 * x
		if i%4 == 3 {
			margin = nil
		}
		chosen := "c" + strings.Repeat("é", i)
		if i == 5 {
			chosen = longText(5)
		}
		rows[i] = []any{"p" + string(rune('a'+i%26)), chosen, "",
			-x, -2 * x, int64(i), i + 1, // int accepted for Int64
			-x / 3, float32(-x / 7), 0.5 * x, (*float64)(nil), margin}
	}
	return rows
}

func TestWriteParquetReadBack(t *testing.T) {
	p := filepath.Join(t.TempDir(), "scores.parquet")
	const n = rowGroupRows + 100 // two row groups
	rows := scoreRows(n)
	if err := WriteFile(p, scoreColumns, rows); err != nil {
		t.Fatal(err)
	}
	assertNoTemp(t, filepath.Dir(p))

	// The column order is kept.
	f, _ := os.Open(p)
	st, _ := f.Stat()
	pf, err := parquet.OpenFile(f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range pf.Schema().Fields() {
		names = append(names, c.Name())
	}
	f.Close()
	var wantNames []string
	for _, c := range scoreColumns {
		wantNames = append(wantNames, c.Name)
	}
	if !reflect.DeepEqual(names, wantNames) {
		t.Errorf("columns %v, want %v", names, wantNames)
	}

	d, err := Open(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Layout != Standard || d.NumRows != n || d.NumRowGroups() != 2 || !d.HasField(FieldRefChosenLogps) {
		t.Fatalf("layout %v rows %d groups %d", d.Layout, d.NumRows, d.NumRowGroups())
	}
	exs, skipped, err := d.ReadAll()
	if err != nil || len(skipped) != 0 || len(exs) != n {
		t.Fatalf("%d examples, %d skipped, %v", len(exs), len(skipped), err)
	}
	for i, e := range exs {
		r := rows[i]
		x := float64(i)
		if e.Row != int64(i) || e.Prompt != r[0] || e.Chosen != r[1] || e.Rejected != "" ||
			*e.RefChosenLogps != -x/3 || *e.RefRejectedLogps != float64(float32(-x/7)) ||
			(i%4 == 3) != (e.Margin == nil) || (e.Margin != nil && *e.Margin != 0.1*x) {
			t.Fatalf("row %d: %+v", i, trunc(e))
		}
	}
}

func TestWriteListsReadBack(t *testing.T) {
	dir := t.TempDir()
	cols := []Column{{"prompt", Messages}, {"chosen", Messages}, {"rejected", Messages}, {"ids", Int64List}}
	u := Message{"user", "hi"}
	rows := [][]any{
		{[]Message{u}, []Message{{"assistant", "good"}}, []Message{{"assistant", "bad"}}, []int64{1, 2, 3}},
		{[]Message{u, {"assistant", "a"}, {"user", "b"}}, []Message{{"assistant", "g"}}, []Message{{"assistant", ""}}, []int64{}},
		{[]Message{}, []Message{u, {"assistant", "g"}}, []Message{u, {"assistant", "b"}}, nil},
		{nil, []Message{{"assistant", "x"}}, nil, []int64{math.MaxInt64}},
	}
	for _, ext := range []string{".parquet", ".jsonl"} {
		p := filepath.Join(dir, "conv"+ext)
		if err := WriteFile(p, cols, rows); err != nil {
			t.Fatal(err)
		}
		d, err := Open(p, Options{})
		if err != nil {
			t.Fatal(err)
		}
		exs, skipped, err := d.ReadAll()
		d.Close()
		if err != nil {
			t.Fatal(err)
		}
		if d.Layout != Conversational || len(exs) != 3 || !reflect.DeepEqual(skipped, []SkippedRow{{Row: 3, Column: "prompt", Reason: ReasonNull}}) {
			t.Fatalf("%s: layout %v, %d examples, skipped %v", ext, d.Layout, len(exs), skipped)
		}
		want := []Example{
			{Row: 0, PromptMessages: []Message{u}, ChosenMessages: []Message{{"assistant", "good"}}, RejectedMessages: []Message{{"assistant", "bad"}}},
			{Row: 1, PromptMessages: []Message{u, {"assistant", "a"}, {"user", "b"}}, ChosenMessages: []Message{{"assistant", "g"}}, RejectedMessages: []Message{{"assistant", ""}}},
			{Row: 2, PromptMessages: []Message{u}, ChosenMessages: []Message{{"assistant", "g"}}, RejectedMessages: []Message{{"assistant", "b"}}},
		}
		if !reflect.DeepEqual(exs, want) {
			t.Errorf("%s:\n got %+v\nwant %+v", ext, exs, want)
		}
	}

	// Token ids round trip, including an empty list and int64 extremes.
	p := filepath.Join(dir, "tok.parquet")
	tcols := []Column{{"prompt_input_ids", Int64List}, {"chosen_input_ids", Int64List}, {"rejected_input_ids", Int64List}}
	if err := WriteFile(p, tcols, [][]any{{[]int64{1}, []int64{}, []int64{math.MinInt64, math.MaxInt64}}, {[]int64{2}, nil, []int64{3}}}); err != nil {
		t.Fatal(err)
	}
	d, err := Open(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	exs, skipped, err := d.ReadAll()
	d.Close()
	if err != nil || d.Layout != Tokenized || len(exs) != 1 || len(skipped) != 1 || skipped[0] != (SkippedRow{Row: 1, Column: "chosen_input_ids", Reason: ReasonNull}) ||
		!reflect.DeepEqual(exs[0].RejectedIDs, []int64{math.MinInt64, math.MaxInt64}) || len(exs[0].ChosenIDs) != 0 {
		t.Fatalf("tokenized round trip: %+v %v %v", exs, skipped, err)
	}
}

func TestWriteJSONL(t *testing.T) {
	p := filepath.Join(t.TempDir(), "scores.jsonl")
	rows := scoreRows(20)
	rows[1][3] = math.Inf(-1)
	rows[2][4] = math.NaN()
	if err := WriteFile(p, scoreColumns, rows); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) != 20 {
		t.Fatalf("%d lines", len(lines))
	}
	const want0 = `{"prompt":"pa","chosen":"c","rejected":"","chosen_logps":-0,"rejected_logps":-0,"chosen_tokens":0,"rejected_tokens":1,"ref_chosen_logps":-0,"ref_rejected_logps":-0,"rewards_chosen":0,"rewards_rejected":null,"margin":0}`
	if lines[0] != want0 {
		t.Errorf("line 1 = %s\nwant     %s", lines[0], want0)
	}
	if !strings.Contains(lines[1], `"chosen_logps":null`) || !strings.Contains(lines[2], `"rejected_logps":null`) {
		t.Errorf("NaN/Inf not written as null: %s / %s", lines[1], lines[2])
	}
	d, err := Open(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	exs, _, err := d.ReadAll()
	if err != nil || len(exs) != 20 || exs[5].Chosen != longText(5) || *exs[7].RefChosenLogps != -7.0/3 {
		t.Fatalf("read back: %d examples, %v", len(exs), err)
	}
}

// TestWriteAtomic checks that a failed or aborted write leaves nothing.
func TestWriteAtomic(t *testing.T) {
	for _, ext := range []string{".parquet", ".jsonl"} {
		dir := t.TempDir()
		p := filepath.Join(dir, "out"+ext)

		// A wrong value type fails the writer and removes the temporary file.
		w, err := Create(p, scoreColumns)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Write(scoreRows(1)[0]...); err != nil {
			t.Fatal(err)
		}
		bad := scoreRows(2)[1]
		bad[5] = "seven"
		err = w.Write(bad...)
		if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), `"chosen_tokens"`) || !strings.Contains(err.Error(), "row 1") {
			t.Fatalf("%s: bad value: %v", ext, err)
		}
		if err := w.Close(); err == nil {
			t.Fatalf("%s: Close after a failed Write succeeded", ext)
		}
		assertEmpty(t, dir)

		// Wrong number of values.
		w, _ = Create(p, scoreColumns)
		if err := w.Write(1.0); err == nil {
			t.Fatal("short row accepted")
		}
		w.Abort()
		assertEmpty(t, dir)

		// Abort discards; a deferred Abort after Close keeps the file.
		w, _ = Create(p, scoreColumns)
		w.Write(scoreRows(1)[0]...)
		w.Abort()
		assertEmpty(t, dir)
		w, _ = Create(p, scoreColumns)
		w.Write(scoreRows(1)[0]...)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		w.Abort()
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s: output missing after Close: %v", ext, err)
		}
		assertNoTemp(t, dir)
	}
	if _, err := Create(filepath.Join(t.TempDir(), "x.csv"), scoreColumns); err == nil || !strings.Contains(err.Error(), ".parquet or .jsonl") {
		t.Errorf("csv output: %v", err)
	}
	if _, err := Create(filepath.Join(t.TempDir(), "no", "dir", "x.parquet"), scoreColumns); err == nil {
		t.Error("output in a missing directory accepted")
	}
}

func assertEmpty(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	if len(ents) != 0 {
		t.Fatalf("%s not empty: %v", dir, ents)
	}
}

func assertNoTemp(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Fatalf("temporary file left: %s", e.Name())
		}
	}
}
