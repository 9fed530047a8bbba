package data

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// The formulas below mirror testdata/gen.mjs, which wrote the files with
// DuckDB and arrow-rs (parquet-wasm); keep the two in step.

const alpha = "abcdefghijklmnopqrstuvwxyzé—ü "

// longText is gen.mjs's 20000-character text.
func longText(i int) string {
	a := []rune(alpha)
	var b strings.Builder
	for k := range 20000 {
		b.WriteRune(a[(k*7+i)%len(a)])
	}
	return b.String()
}

const longRow = 42

func f64(x float64) *float64 { return &x }

// want is the expected outcome of reading a file.
type want struct {
	examples []Example
	skipped  []SkippedRow
}

func (w *want) add(row int, ex Example, nullCol string) {
	if nullCol != "" {
		w.skipped = append(w.skipped, SkippedRow{Row: int64(row), Column: nullCol, Reason: ReasonNull})
		return
	}
	ex.Row = int64(row)
	w.examples = append(w.examples, ex)
}

func wantStandard(n int) want {
	var w want
	for i := range n {
		prompt := fmt.Sprintf("Question %d: what is %d + %d?", i, i, i)
		if i%101 == 7 {
			prompt = ""
		}
		chosen := fmt.Sprintf("The answer is %d.", 2*i)
		if i == longRow {
			chosen = longText(i)
		}
		rejected := fmt.Sprintf("The answer is %d.", 2*i+1)
		if i%103 == 9 {
			rejected = ""
		}
		null := ""
		switch {
		case i%97 == 5:
			null = "prompt"
		case i%89 == 3:
			null = "chosen"
		case i%83 == 11:
			null = "rejected"
		}
		ex := Example{Prompt: prompt, Chosen: chosen, Rejected: rejected,
			RefChosenLogps:   f64(-float64(i) / 100),
			RefRejectedLogps: f64(float64(float32(-float64(i) / 50)))}
		if i%7 != 0 {
			ex.Margin = f64(float64(i) / 10)
		}
		w.add(i, ex, null)
	}
	return w
}

func wantHH(n int) want {
	var w want
	for i := range n {
		if i%10 == 9 {
			w.add(i, Example{Prompt: fmt.Sprintf("plain text %d shared start", i), Chosen: " good", Rejected: " bad"}, "")
			continue
		}
		p := fmt.Sprintf("\n\nHuman: Question %d?\n\nAssistant: Answer %d.\n\nHuman: And more %d?\n\nAssistant:", i, i, i)
		null := ""
		if i == 13 {
			null = "chosen"
		}
		w.add(i, Example{Prompt: p, Chosen: fmt.Sprintf(" Sure, good reply %d.", i), Rejected: fmt.Sprintf(" Sure, bad reply %d.", i)}, null)
	}
	return w
}

func wantUltraFeedback(n int) want {
	var w want
	for i := range n {
		prompt := fmt.Sprintf("Write poem %d", i)
		pm := []Message{{"user", prompt}}
		if i%5 == 4 {
			pm = append(pm, Message{"assistant", fmt.Sprintf("draft %d", i)}, Message{"user", fmt.Sprintf("again %d", i)})
		}
		null := ""
		if i == 17 {
			null = "rejected"
		}
		w.add(i, Example{Prompt: prompt, PromptMessages: pm,
			ChosenMessages:   []Message{{"assistant", fmt.Sprintf("good poem %d", i)}},
			RejectedMessages: []Message{{"assistant", fmt.Sprintf("bad poem %d", i)}}}, null)
	}
	return w
}

func wantConversational(n int) want {
	var w want
	for i := range n {
		null := ""
		if i == 3 {
			null = "chosen[0].content"
		}
		w.add(i, Example{
			PromptMessages:   []Message{{"system", fmt.Sprintf("be brief %d", i)}, {"user", fmt.Sprintf("hi %d", i)}},
			ChosenMessages:   []Message{{"assistant", fmt.Sprintf("hello %d", i)}},
			RejectedMessages: []Message{{"assistant", fmt.Sprintf("go away %d", i)}}}, null)
	}
	return w
}

func wantTokenized(n int) want {
	var w want
	for i := range n {
		x := int64(i)
		chosen := []int64{10 + x, 11 + x}
		if i%11 == 4 {
			chosen = []int64{}
		}
		null := ""
		if i == 6 {
			null = "rejected_input_ids"
		}
		w.add(i, Example{PromptIDs: []int64{1, x, x + 1}, ChosenIDs: chosen, RejectedIDs: []int64{20 + x},
			RefChosenLogps: f64(-float64(i) / 4), RefRejectedLogps: f64(-float64(i) / 8)}, null)
	}
	return w
}

// sameFloat compares optional floats; float32-sized values written as text
// (JSON) are compared at float32 precision.
func sameFloat(a, b *float64) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b || float32(*a) == float32(*b)
}

func checkExamples(t *testing.T, got []Example, gotSkipped []SkippedRow, w want) {
	t.Helper()
	if !reflect.DeepEqual(gotSkipped, w.skipped) {
		t.Errorf("skipped = %v\nwant      %v", gotSkipped, w.skipped)
	}
	if len(got) != len(w.examples) {
		t.Fatalf("got %d examples, want %d", len(got), len(w.examples))
	}
	for i := range got {
		g, e := got[i], w.examples[i]
		if !sameFloat(g.Margin, e.Margin) || !sameFloat(g.RefChosenLogps, e.RefChosenLogps) || !sameFloat(g.RefRejectedLogps, e.RefRejectedLogps) {
			t.Fatalf("row %d: floats margin %v ref %v %v, want %v %v %v", g.Row,
				ptrStr(g.Margin), ptrStr(g.RefChosenLogps), ptrStr(g.RefRejectedLogps),
				ptrStr(e.Margin), ptrStr(e.RefChosenLogps), ptrStr(e.RefRejectedLogps))
		}
		g.Margin, g.RefChosenLogps, g.RefRejectedLogps = nil, nil, nil
		e.Margin, e.RefChosenLogps, e.RefRejectedLogps = nil, nil, nil
		if !reflect.DeepEqual(g, e) {
			t.Fatalf("example %d:\n got %#v\nwant %#v", i, trunc(g), trunc(e))
		}
	}
}

func ptrStr(p *float64) string {
	if p == nil {
		return "nil"
	}
	return fmt.Sprint(*p)
}

func trunc(e Example) Example {
	cut := func(s string) string {
		if len(s) > 80 {
			return s[:80] + fmt.Sprintf("...(%d bytes)", len(s))
		}
		return s
	}
	e.Prompt, e.Chosen, e.Rejected = cut(e.Prompt), cut(e.Chosen), cut(e.Rejected)
	return e
}

// TestReadIndependentWriters reads every good file written by DuckDB and
// arrow-rs and compares every row with the generator's formulas.
func TestReadIndependentWriters(t *testing.T) {
	tests := []struct {
		file      string
		opts      Options
		layout    Layout
		rows      int64
		rowGroups int
		want      want
	}{
		// DuckDB: list elements "element"; v1 pages; several row groups.
		{"duckdb_standard_snappy.parquet", Options{}, Standard, 5000, 3, wantStandard(5000)},
		{"duckdb_standard_zstd_v2enc.parquet", Options{}, Standard, 5000, 3, wantStandard(5000)},
		{"duckdb_hh.parquet", Options{}, ImplicitPrompt, 50, 1, wantHH(50)},
		{"duckdb_ultrafeedback.parquet", Options{}, Conversational, 40, 1, wantUltraFeedback(40)},
		{"duckdb_tokenized_int32.parquet", Options{}, Tokenized, 30, 1, wantTokenized(30)},
		// arrow-rs: list elements "item"; data page v2 with the v2 writer.
		{"arrow_standard_zstd_v2_nodict.parquet", Options{}, Standard, 300, 5, wantStandard(300)},
		{"arrow_standard_snappy_dict.parquet", Options{}, Standard, 300, 3, wantStandard(300)},
		{"arrow_standard_uncompressed.parquet", Options{}, Standard, 120, 3, wantStandard(120)},
		{"arrow_hh.parquet", Options{}, ImplicitPrompt, 50, 3, wantHH(50)},
		{"arrow_ultrafeedback.parquet", Options{}, Conversational, 40, 3, wantUltraFeedback(40)},
		{"arrow_conversational.parquet", Options{}, Conversational, 12, 3, wantConversational(12)},
		{"arrow_tokenized_int64.parquet", Options{}, Tokenized, 30, 4, wantTokenized(30)},
		// DuckDB JSON Lines.
		{"duckdb_standard.jsonl", Options{}, Standard, 200, 1, wantStandard(200)},
		{"duckdb_ultrafeedback.jsonl", Options{}, Conversational, 40, 1, wantUltraFeedback(40)},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			d, err := Open("testdata/"+tt.file, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if d.Layout != tt.layout || d.NumRows != tt.rows || d.NumRowGroups() != tt.rowGroups {
				t.Fatalf("layout %v, %d rows, %d row groups; want %v, %d, %d", d.Layout, d.NumRows, d.NumRowGroups(), tt.layout, tt.rows, tt.rowGroups)
			}
			got, skipped, err := d.ReadAll()
			if err != nil {
				t.Fatal(err)
			}
			checkExamples(t, got, skipped, tt.want)
		})
	}
}

// TestLongText checks the 20000-character text survives every writer.
func TestLongText(t *testing.T) {
	for _, f := range []string{"duckdb_standard_snappy.parquet", "duckdb_standard_zstd_v2enc.parquet",
		"arrow_standard_zstd_v2_nodict.parquet", "arrow_standard_snappy_dict.parquet", "duckdb_standard.jsonl"} {
		d, err := Open("testdata/"+f, Options{})
		if err != nil {
			t.Fatal(err)
		}
		exs, _, err := d.ReadAll()
		d.Close()
		if err != nil {
			t.Fatal(err)
		}
		var long *Example
		for i := range exs {
			if exs[i].Row == longRow {
				long = &exs[i]
			}
		}
		if long == nil {
			t.Fatalf("%s: row %d missing", f, longRow)
		}
		if n := utf8.RuneCountInString(long.Chosen); n != 20000 || long.Chosen != longText(longRow) {
			t.Errorf("%s: row %d chosen has %d characters or differs", f, longRow, n)
		}
	}
}

func TestStrictNull(t *testing.T) {
	for _, f := range []string{"testdata/duckdb_standard_snappy.parquet", "testdata/duckdb_standard.jsonl"} {
		d, err := Open(f, Options{Strict: true})
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = d.ReadAll()
		d.Close()
		if err == nil {
			t.Fatalf("%s: strict read of a file with nulls succeeded", f)
		}
		for _, s := range []string{f, "row 3", `"chosen"`} {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("error %q does not mention %s", err, s)
			}
		}
		var re *RowError
		if !errors.As(err, &re) || re.Path != f || re.Row != 3 || re.Column != "chosen" || re.Reason != ReasonNull || strings.Contains(err.Error(), "--") {
			t.Errorf("%s: error %q: want a *RowError for row 3, column chosen, naming no flag", f, err)
		}
	}
}

func TestColumnMapping(t *testing.T) {
	m, err := ParseColumns("prompt=question, chosen=good,rejected=bad,margin=score")
	if err != nil {
		t.Fatal(err)
	}
	d, err := Open("testdata/duckdb_mapped.parquet", Options{Columns: m})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	exs, skipped, err := d.ReadAll()
	if err != nil || len(skipped) != 0 || len(exs) != 10 {
		t.Fatalf("%d examples, %v skipped, err %v", len(exs), skipped, err)
	}
	if e := exs[7]; e.Prompt != "q7" || e.Chosen != "g7" || e.Rejected != "b7" || e.Row != 7 || e.Margin == nil || *e.Margin != 1.75 {
		t.Errorf("row 7 = %+v", e)
	}
	if d.Layout != Standard || d.Columns["prompt"] != "question" {
		t.Errorf("layout %v, columns %v", d.Layout, d.Columns)
	}

	for _, bad := range []string{"prompt", "foo=bar", "prompt=a,prompt=b", "=x"} {
		// The library names no flag: the command adds "--columns: " once.
		if _, err := ParseColumns(bad); err == nil || strings.Contains(err.Error(), "--") {
			t.Errorf("ParseColumns(%q) = %v, want an error that names no flag", bad, err)
		}
	}
	_, err = Open("testdata/duckdb_mapped.parquet", Options{Columns: map[string]string{"prompt": "question", "chosen": "good", "rejected": "nope"}})
	if err == nil || !strings.Contains(err.Error(), `"nope"`) || !strings.Contains(err.Error(), "question, good, bad") {
		t.Errorf("mapping to a missing column: %v", err)
	}
}

func TestSplitImplicitPrompt(t *testing.T) {
	tests := []struct{ chosen, rejected, prompt, c, r string }{
		{"\n\nHuman: hi\n\nAssistant: yes good", "\n\nHuman: hi\n\nAssistant: yes bad",
			"\n\nHuman: hi\n\nAssistant:", " yes good", " yes bad"},
		{"\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: X", "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: Y",
			"\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:", " X", " Y"},
		{"same start good", "same start bad", "same start", " good", " bad"},
		{"abcX", "abcY", "abc", "X", "Y"},
		{"héllo", "hèllo", "h", "éllo", "èllo"}, // split at a character boundary
		{"", "x", "", "", "x"},
		{"same", "same", "same", "", ""},
	}
	for _, tt := range tests {
		p, c, r := SplitImplicitPrompt(tt.chosen, tt.rejected)
		if p != tt.prompt || c != tt.c || r != tt.r {
			t.Errorf("SplitImplicitPrompt(%q, %q) = %q, %q, %q; want %q, %q, %q", tt.chosen, tt.rejected, p, c, r, tt.prompt, tt.c, tt.r)
		}
	}
}

func TestSplitConversation(t *testing.T) {
	u, a1, a2 := Message{"user", "q"}, Message{"assistant", "good"}, Message{"assistant", "bad"}
	sys := Message{"system", "s"}
	tests := []struct {
		name       string
		text       string
		prompt     []Message
		chosen     []Message
		rejected   []Message
		wp, wc, wr []Message
	}{
		{"ultrafeedback", "q", nil, []Message{u, a1}, []Message{u, a2}, []Message{u}, []Message{a1}, []Message{a2}},
		{"trl implicit", "", nil, []Message{sys, u, a1}, []Message{sys, u, a2}, []Message{sys, u}, []Message{a1}, []Message{a2}},
		{"string prompt, bare completions", "q", nil, []Message{a1}, []Message{a2}, []Message{u}, []Message{a1}, []Message{a2}},
		{"list prompt", "", []Message{u}, []Message{a1}, []Message{a2}, []Message{u}, []Message{a1}, []Message{a2}},
		{"list prompt repeated", "", []Message{u}, []Message{u, a1}, []Message{u, a2}, []Message{u}, []Message{a1}, []Message{a2}},
		{"identical", "", nil, []Message{u, a1}, []Message{u, a1}, []Message{u}, []Message{a1}, []Message{a1}},
	}
	for _, tt := range tests {
		p, c, r := SplitConversation(tt.text, tt.prompt, tt.chosen, tt.rejected)
		if !reflect.DeepEqual(p, tt.wp) || !reflect.DeepEqual(c, tt.wc) || !reflect.DeepEqual(r, tt.wr) {
			t.Errorf("%s: got %v %v %v, want %v %v %v", tt.name, p, c, r, tt.wp, tt.wc, tt.wr)
		}
	}
}

// TestReadEmptyLists reads UltraFeedback-style files (DuckDB: list elements
// "element"; arrow-rs: "item") whose chosen or rejected is an empty list, not
// a null: the reader keeps those rows (encoders skip them), and reads every
// other row as the formulas say.
func TestReadEmptyLists(t *testing.T) {
	const n = 120
	full := wantUltraFeedback(n)
	for _, f := range []string{"duckdb_ultrafeedback_empty.parquet", "arrow_ultrafeedback_empty.parquet"} {
		t.Run(f, func(t *testing.T) {
			d, err := Open("testdata/"+f, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if d.Layout != Conversational || d.NumRows != n {
				t.Fatalf("layout %v, %d rows", d.Layout, d.NumRows)
			}
			got, skipped, err := d.ReadAll()
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(skipped, full.skipped) || len(got) != len(full.examples) {
				t.Fatalf("%d examples, skipped %v; want %d, %v", len(got), skipped, len(full.examples), full.skipped)
			}
			for i, g := range got {
				e := full.examples[i]
				switch g.Row {
				case 99:
					if len(g.ChosenMessages) != 0 || len(g.RejectedMessages) != 4 || g.PromptMessages[0].Content != "Write poem 99" {
						t.Errorf("row 99: %+v", g)
					}
				case 103:
					if len(g.ChosenMessages) != 2 || len(g.RejectedMessages) != 0 {
						t.Errorf("row 103: %+v", g)
					}
				case 110:
					if len(g.ChosenMessages) != 0 || len(g.RejectedMessages) != 0 || g.Prompt != "Write poem 110" {
						t.Errorf("row 110: %+v", g)
					}
				default:
					if !reflect.DeepEqual(g, e) {
						t.Fatalf("row %d:\n got %+v\nwant %+v", g.Row, g, e)
					}
				}
			}
		})
	}
}
