package data

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// The formulas below mirror testdata/gen_sft.mjs, which wrote the files with
// DuckDB and arrow-rs (parquet-wasm); keep the two in step.

func user(c string) Message { return Message{"user", c} }
func asst(c string) Message { return Message{"assistant", c} }
func sysm(c string) Message { return Message{"system", c} }

func wantPC(n int) want {
	var w want
	for i := range n {
		completion := fmt.Sprintf(" It is %d.", 2*i)
		if i == 7 {
			completion = ""
		}
		null := ""
		switch {
		case i == 11:
			null = "prompt"
		case i%13 == 5:
			null = "completion"
		}
		w.add(i, Example{Prompt: fmt.Sprintf("Question %d: what is %d times two?", i, i), Completion: completion}, null)
	}
	return w
}

func wantConvPC(n int) want {
	var w want
	for i := range n {
		prompt := []Message{user(fmt.Sprintf("ask %d", i))}
		if i%4 == 3 {
			prompt = []Message{sysm(fmt.Sprintf("be brief %d", i)), user(fmt.Sprintf("first %d", i)), asst(fmt.Sprintf("ok %d", i)), user(fmt.Sprintf("then %d", i))}
		}
		completion := []Message{asst(fmt.Sprintf("reply %d", i))}
		null := ""
		switch i {
		case 6:
			null = "completion[0].content"
		case 9:
			completion = nil
		}
		w.add(i, Example{PromptMessages: prompt, CompletionMessages: completion}, null)
	}
	return w
}

func wantMessages(n int) want {
	var w want
	for i := range n {
		var m []Message
		switch i % 3 {
		case 0:
			m = []Message{user(fmt.Sprintf("hi %d", i)), asst(fmt.Sprintf("hello %d", i))}
		case 1:
			m = []Message{sysm(fmt.Sprintf("sys %d", i)), user(fmt.Sprintf("q1 %d", i)), asst(fmt.Sprintf("a1 %d", i)), user(fmt.Sprintf("q2 %d", i)), asst(fmt.Sprintf("a2 %d", i))}
		default:
			m = []Message{user(fmt.Sprintf("u %d", i)), asst(fmt.Sprintf("a %d", i)), user(fmt.Sprintf("left open %d", i))}
		}
		if i == 8 {
			m = []Message{user(fmt.Sprintf("alone %d", i))}
		}
		null := ""
		if i == 10 {
			null = "messages"
		}
		w.add(i, Example{Messages: m}, null)
	}
	return w
}

func wantTokPC(n int) want {
	var w want
	for i := range n {
		x := int64(i)
		c := []int64{10 + x, 11 + x}
		null := ""
		switch i {
		case 4:
			c = nil
		case 6:
			null = "completion_input_ids"
		}
		w.add(i, Example{PromptIDs: []int64{1, x, x + 1}, CompletionIDs: c}, null)
	}
	return w
}

func wantText(n int) want {
	var w want
	for i := range n {
		text := fmt.Sprintf("Document %d says %d.", i, i*3)
		null := ""
		switch i {
		case 2:
			null = "text"
		case 5:
			text = ""
		}
		w.add(i, Example{Text: text}, null)
	}
	return w
}

func wantPrompts(n int) want {
	var w want
	for i := range n {
		null := ""
		if i == 3 {
			null = "prompt"
		}
		w.add(i, Example{Prompt: fmt.Sprintf("Tell me about %d", i)}, null)
	}
	return w
}

func wantConvPrompts(n int) want {
	var w want
	for i := range n {
		p := []Message{user(fmt.Sprintf("tell %d", i))}
		if i%2 == 1 {
			p = []Message{sysm(fmt.Sprintf("short %d", i)), user(fmt.Sprintf("tell %d", i))}
		}
		w.add(i, Example{PromptMessages: p}, "")
	}
	return w
}

// project keeps the fields a use reads from the preference formulas: for
// prompts the prompt alone (with every field needed to derive it), for SFT
// the prompt and chosen (rejected where the file has it and it is not
// null). Rows skipped for a value the use does not need come back.
func project(n int, keep func(i int) (Example, string)) want {
	var out want
	for i := range n {
		e, null := keep(i)
		out.add(i, e, null)
	}
	return out
}

// byRow returns a preference formula's example (or skip column) by row.
func byRow(w want) (func(int) Example, func(int) string) {
	ex := map[int64]Example{}
	sk := map[int64]string{}
	for _, e := range w.examples {
		ex[e.Row] = e
	}
	for _, s := range w.skipped {
		sk[s.Row] = s.Column
	}
	return func(i int) Example { return ex[int64(i)] }, func(i int) string { return sk[int64(i)] }
}

// normLists makes empty lists nil, so that files (empty, non-nil lists) and
// formulas compare equal.
func normLists(exs []Example) []Example {
	out := make([]Example, len(exs))
	for i, e := range exs {
		for _, p := range []*[]Message{&e.PromptMessages, &e.ChosenMessages, &e.RejectedMessages, &e.CompletionMessages, &e.Messages} {
			if len(*p) == 0 {
				*p = nil
			}
		}
		for _, p := range []*[]int64{&e.PromptIDs, &e.ChosenIDs, &e.RejectedIDs, &e.CompletionIDs} {
			if len(*p) == 0 {
				*p = nil
			}
		}
		out[i] = e
	}
	return out
}

// TestReadSFTAndPrompts opens every new file (and the preference files) for
// each use, checks the detected layout and compares every row with the
// generator's formulas.
func TestReadSFTAndPrompts(t *testing.T) {
	std, stdSkip := byRow(wantStandard(5000))
	uf, ufSkip := byRow(wantUltraFeedback(40))
	conv, convSkip := byRow(wantConversational(12))
	hh, hhSkip := byRow(wantHH(50))
	_, _ = byRow(wantTokenized(30))

	// Standard for SFT: prompt and chosen required, rejected read (null
	// reads as empty), margin and reference log-probs not read.
	stdSFT := func(i int) (Example, string) {
		if c := stdSkip(i); c == "prompt" || c == "chosen" {
			return Example{}, c
		}
		e := std(i)
		if stdSkip(i) == "rejected" {
			e = Example{Prompt: fmt.Sprintf("Question %d: what is %d + %d?", i, i, i), Chosen: fmt.Sprintf("The answer is %d.", 2*i)}
			if i%101 == 7 {
				e.Prompt = ""
			}
			if i == longRow {
				e.Chosen = longText(i)
			}
		}
		e.Margin, e.RefChosenLogps, e.RefRejectedLogps = nil, nil, nil
		return e, ""
	}
	stdPrompts := func(i int) (Example, string) {
		if stdSkip(i) == "prompt" {
			return Example{}, "prompt"
		}
		p := fmt.Sprintf("Question %d: what is %d + %d?", i, i, i)
		if i%101 == 7 {
			p = ""
		}
		return Example{Prompt: p}, ""
	}
	same := func(get func(int) Example, skip func(int) string) func(int) (Example, string) {
		return func(i int) (Example, string) {
			if c := skip(i); c != "" {
				return Example{}, c
			}
			e := get(i)
			e.Margin, e.RefChosenLogps, e.RefRejectedLogps = nil, nil, nil
			return e, ""
		}
	}
	convPrompts := func(i int) (Example, string) {
		return Example{PromptMessages: []Message{{"system", fmt.Sprintf("be brief %d", i)}, {"user", fmt.Sprintf("hi %d", i)}}}, ""
	}
	convSFT := func(i int) (Example, string) {
		if c := convSkip(i); c != "" {
			return Example{}, c
		}
		return conv(i), ""
	}
	tokSFT := func(i int) (Example, string) {
		x := int64(i)
		e := Example{PromptIDs: []int64{1, x, x + 1}, ChosenIDs: []int64{10 + x, 11 + x}, RejectedIDs: []int64{20 + x}}
		if i%11 == 4 {
			e.ChosenIDs = nil
		}
		if i == 6 {
			e.RejectedIDs = nil // null: read as empty, not required for SFT
		}
		return e, ""
	}
	tokPrompts := func(i int) (Example, string) {
		x := int64(i)
		return Example{PromptIDs: []int64{1, x, x + 1}}, ""
	}

	tests := []struct {
		file   string
		use    Use
		layout Layout
		want   want
	}{
		// New layouts, for SFT.
		{"duckdb_sft_pc.parquet", UseSFT, PromptCompletion, wantPC(30)},
		{"arrow_sft_pc.parquet", UseSFT, PromptCompletion, wantPC(30)},
		{"duckdb_sft_pc.jsonl", UseSFT, PromptCompletion, wantPC(30)},
		{"duckdb_sft_conv_pc.parquet", UseSFT, ConversationalPromptCompletion, wantConvPC(16)},
		{"arrow_sft_conv_pc.parquet", UseSFT, ConversationalPromptCompletion, wantConvPC(16)},
		{"duckdb_sft_conv_pc.jsonl", UseSFT, ConversationalPromptCompletion, wantConvPC(16)},
		{"duckdb_sft_messages.parquet", UseSFT, ConversationalLanguageModeling, wantMessages(15)},
		{"arrow_sft_messages.parquet", UseSFT, ConversationalLanguageModeling, wantMessages(15)},
		{"duckdb_sft_messages.jsonl", UseSFT, ConversationalLanguageModeling, wantMessages(15)},
		{"duckdb_sft_tokenized_int32.parquet", UseSFT, TokenizedPromptCompletion, wantTokPC(12)},
		{"arrow_sft_tokenized_int64.parquet", UseSFT, TokenizedPromptCompletion, wantTokPC(12)},
		{"duckdb_sft_tokenized.jsonl", UseSFT, TokenizedPromptCompletion, wantTokPC(12)},
		{"duckdb_sft_text.parquet", UseSFT, LanguageModeling, wantText(10)},
		// Preference files for SFT: the chosen side.
		{"duckdb_standard_snappy.parquet", UseSFT, Standard, project(5000, stdSFT)},
		{"duckdb_standard.jsonl", UseSFT, Standard, project(200, stdSFT)},
		{"duckdb_hh.parquet", UseSFT, ImplicitPrompt, project(50, same(hh, hhSkip))},
		{"duckdb_ultrafeedback.parquet", UseSFT, Conversational, project(40, same(uf, ufSkip))},
		{"arrow_conversational.parquet", UseSFT, Conversational, project(12, convSFT)},
		{"duckdb_tokenized_int32.parquet", UseSFT, Tokenized, project(30, tokSFT)},
		// Prompts.
		{"duckdb_prompts.parquet", UsePrompts, PromptOnly, wantPrompts(10)},
		{"arrow_prompts_conv.parquet", UsePrompts, ConversationalPromptOnly, wantConvPrompts(6)},
		{"duckdb_prompts_conv.jsonl", UsePrompts, ConversationalPromptOnly, wantConvPrompts(6)},
		{"duckdb_standard_snappy.parquet", UsePrompts, Standard, project(5000, stdPrompts)},
		{"arrow_conversational.parquet", UsePrompts, Conversational, project(12, convPrompts)},
		{"duckdb_ultrafeedback.parquet", UsePrompts, Conversational, project(40, func(i int) (Example, string) {
			if c := ufSkip(i); c != "" {
				return Example{}, c
			}
			return uf(i), "" // chosen and rejected are read to find the prompt
		})},
		{"duckdb_hh.parquet", UsePrompts, ImplicitPrompt, project(50, func(i int) (Example, string) {
			if c := hhSkip(i); c != "" {
				return Example{}, c
			}
			return hh(i), "" // chosen and rejected are read to find the prompt
		})},
		{"duckdb_tokenized_int32.parquet", UsePrompts, Tokenized, project(30, tokPrompts)},
		{"arrow_tokenized_int64.parquet", UsePrompts, Tokenized, project(30, tokPrompts)},
		{"duckdb_sft_tokenized_int32.parquet", UsePrompts, TokenizedPromptCompletion, project(12, func(i int) (Example, string) {
			x := int64(i)
			return Example{PromptIDs: []int64{1, x, x + 1}}, ""
		})},
		{"arrow_sft_pc.parquet", UsePrompts, PromptCompletion, project(30, func(i int) (Example, string) {
			if i == 11 {
				return Example{}, "prompt"
			}
			return Example{Prompt: fmt.Sprintf("Question %d: what is %d times two?", i, i)}, ""
		})},
		{"duckdb_sft_conv_pc.jsonl", UsePrompts, ConversationalPromptCompletion, project(16, func(i int) (Example, string) {
			e := wantConvPC(16)
			for _, x := range e.examples {
				if x.Row == int64(i) {
					return Example{PromptMessages: x.PromptMessages}, ""
				}
			}
			// Row 6: only its completion holds a null; the prompt is read.
			return Example{PromptMessages: []Message{user(fmt.Sprintf("ask %d", i))}}, ""
		})},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%v", tt.file, tt.use), func(t *testing.T) {
			d, err := Open("testdata/"+tt.file, Options{Use: tt.use})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if d.Layout != tt.layout || d.Use != tt.use {
				t.Fatalf("layout %v (use %v), want %v", d.Layout, d.Use, tt.layout)
			}
			got, skipped, err := d.ReadAll()
			if err != nil {
				t.Fatal(err)
			}
			w := tt.want
			w.examples = normLists(w.examples)
			checkExamples(t, normLists(got), skipped, w)
		})
	}
}

// TestDetectSFTErrors: files with none of the columns a use reads, or with
// a column of the wrong type, give one-line errors naming the columns
// expected and the file's columns (and no flag).
func TestDetectSFTErrors(t *testing.T) {
	dir := t.TempDir()
	jsonl := func(name, line string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(line+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name    string
		path    string
		use     Use
		mention []string
		fields  []string // the *MissingColumnsError's Fields, when one is wanted
	}{
		{"prompt-only for SFT", "testdata/duckdb_prompts.parquet", UseSFT,
			[]string{"no columns for supervised fine-tuning", "prompt and completion", "messages", "completion_input_ids", "(columns: prompt)"}, []string{"completion"}},
		{"nothing for SFT", jsonl("x.jsonl", `{"question":"q","answer":"a"}`), UseSFT,
			[]string{"no columns for supervised fine-tuning", "(columns: answer, question)"}, []string{"prompt", "completion"}},
		{"prompt ids alone for SFT", jsonl("ids.jsonl", `{"prompt_input_ids":[1,2]}`), UseSFT,
			[]string{"completion_input_ids"}, []string{"completion_input_ids"}},
		{"completion without prompt", jsonl("c.jsonl", `{"completion":"a"}`), UseSFT,
			[]string{`missing column "prompt"`, "(columns: completion)"}, []string{"prompt"}},
		{"completion ids without prompt ids", jsonl("ci.jsonl", `{"completion_input_ids":[1]}`), UseSFT,
			[]string{`missing column "prompt_input_ids"`}, []string{"prompt_input_ids"}},
		{"mixed prompt-completion kinds", jsonl("mix.jsonl", `{"prompt":"p","completion":[{"role":"assistant","content":"a"}]}`), UseSFT,
			[]string{`column "prompt" is a string, want a list of {role, content} messages`, `as column "completion"`}, nil},
		{"messages of strings", jsonl("ms.jsonl", `{"messages":"hello"}`), UseSFT,
			[]string{`key "messages" is a string`, "want list<struct<role: string, content: string>>"}, nil},
		{"messages for prompts", "testdata/duckdb_sft_messages.parquet", UsePrompts,
			[]string{"no prompts: want prompt", "prompt_input_ids", "(columns: messages)"}, []string{"prompt"}},
		{"SFT file for preference", "testdata/duckdb_sft_pc.parquet", UsePreference,
			[]string{`missing columns "chosen", "rejected"`}, []string{"chosen", "rejected"}},
		{"chosen without rejected or prompt", jsonl("cr.jsonl", `{"chosen":"c"}`), UseSFT,
			[]string{`missing column "rejected"`}, []string{"rejected"}},
		{"text of the wrong type", jsonl("tw.jsonl", `{"text":[1,2]}`), UseSFT,
			[]string{`key "text" is a list of integers`, "want string"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := Open(tt.path, Options{Use: tt.use})
			if err == nil {
				d.Close()
				t.Fatalf("opened as %v", d.Layout)
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") || strings.Contains(msg, "--") || !strings.Contains(msg, filepath.Base(tt.path)) {
				t.Errorf("error %q: want one line naming the file and no flag", msg)
			}
			for _, s := range tt.mention {
				if !strings.Contains(msg, s) {
					t.Errorf("error %q does not mention %q", msg, s)
				}
			}
			var mc *MissingColumnsError
			if tt.fields != nil && (!errors.As(err, &mc) || !reflect.DeepEqual(mc.Fields, tt.fields)) {
				t.Errorf("error %q: want a *MissingColumnsError for %v", msg, tt.fields)
			}
		})
	}

	// A bad column the chosen layout does not read is no error.
	p := jsonl("extra.jsonl", `{"prompt":"p","completion":" c","text":5,"messages_old":1}`)
	d, err := Open(p, Options{Use: UseSFT})
	if err != nil || d.Layout != PromptCompletion {
		t.Fatalf("unread bad column: %v", err)
	}
}

// TestColumnMappingSFT maps the new fields onto other column names, in one
// DuckDB file holding a prompt-completion pair, a conversation and token ids.
func TestColumnMappingSFT(t *testing.T) {
	tests := []struct {
		cols   string
		use    Use
		layout Layout
		check  func(e Example) bool
	}{
		{"prompt=question,completion=answer", UseSFT, PromptCompletion, func(e Example) bool { return e.Prompt == "q4" && e.Completion == " a4" }},
		{"messages=dialog", UseSFT, ConversationalLanguageModeling, func(e Example) bool {
			return reflect.DeepEqual(e.Messages, []Message{user("u4"), asst("a4")})
		}},
		{"prompt_input_ids=q_ids,completion_input_ids=a_ids", UseSFT, TokenizedPromptCompletion, func(e Example) bool {
			return reflect.DeepEqual(e.PromptIDs, []int64{4, 5}) && reflect.DeepEqual(e.CompletionIDs, []int64{104})
		}},
		{"prompt=question", UsePrompts, PromptOnly, func(e Example) bool { return e.Prompt == "q4" }},
		{"prompt=dialog", UsePrompts, ConversationalPromptOnly, func(e Example) bool { return len(e.PromptMessages) == 2 }},
		{"text=question", UseSFT, LanguageModeling, func(e Example) bool { return e.Text == "q4" }},
	}
	for _, tt := range tests {
		t.Run(tt.cols, func(t *testing.T) {
			m, err := ParseColumns(tt.cols)
			if err != nil {
				t.Fatal(err)
			}
			d, err := Open("testdata/duckdb_sft_mapped.parquet", Options{Columns: m, Use: tt.use})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			exs, skipped, err := d.ReadAll()
			if err != nil || len(skipped) != 0 || len(exs) != 6 {
				t.Fatalf("%d examples, %v skipped, err %v", len(exs), skipped, err)
			}
			if d.Layout != tt.layout || !tt.check(exs[4]) {
				t.Errorf("layout %v, row 4 = %+v", d.Layout, exs[4])
			}
			for f, c := range m {
				if d.Columns[f] != c {
					t.Errorf("Columns = %v, want %s=%s", d.Columns, f, c)
				}
			}
		})
	}
	// A mapping to a missing column is an error, whatever the use reads.
	for _, use := range []Use{UsePreference, UseSFT, UsePrompts} {
		_, err := Open("testdata/duckdb_sft_mapped.parquet", Options{Use: use, Columns: map[string]string{"completion": "nope"}})
		if err == nil || !strings.Contains(err.Error(), `completion=nope: no column "nope"`) {
			t.Errorf("%v: mapping to a missing column: %v", use, err)
		}
	}
}

// TestStrictSFT: with Strict a null required value of the new layouts is a
// *RowError naming the file, row (and JSONL line) and column.
func TestStrictSFT(t *testing.T) {
	tests := []struct {
		file   string
		row    int64
		line   int
		column string
	}{
		{"duckdb_sft_pc.parquet", 5, 0, "completion"},
		{"duckdb_sft_pc.jsonl", 5, 6, "completion"},
		{"arrow_sft_conv_pc.parquet", 6, 0, "completion[0].content"},
		{"arrow_sft_messages.parquet", 10, 0, "messages"},
		{"duckdb_sft_messages.jsonl", 10, 11, "messages"},
		{"arrow_sft_tokenized_int64.parquet", 6, 0, "completion_input_ids"},
		{"duckdb_sft_text.parquet", 2, 0, "text"},
	}
	for _, tt := range tests {
		d, err := Open("testdata/"+tt.file, Options{Use: UseSFT, Strict: true})
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = d.ReadAll()
		d.Close()
		var re *RowError
		if !errors.As(err, &re) || re.Row != tt.row || re.Line != tt.line || re.Column != tt.column || re.Reason != ReasonNull {
			t.Errorf("%s: err %v, want a *RowError for row %d column %s", tt.file, err, tt.row, tt.column)
		}
	}
}

func TestLayoutNames(t *testing.T) {
	for l := Standard; l <= TokenizedPromptOnly; l++ {
		if strings.HasPrefix(l.String(), "Layout(") {
			t.Errorf("layout %d has no name", int(l))
		}
		if l.IsPreference() != (l <= Tokenized) {
			t.Errorf("%v.IsPreference() = %v", l, l.IsPreference())
		}
	}
	if !ConversationalLanguageModeling.IsConversational() || PromptCompletion.IsConversational() ||
		!TokenizedPromptOnly.IsTokenized() || Conversational.IsTokenized() {
		t.Error("layout predicates")
	}
}
