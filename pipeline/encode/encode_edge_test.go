package encode

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"ortalign/data"
	"ortalign/tokenize"
)

// TestEncodePairsSkipsUnusableRows: each kind of row whose content cannot be used is
// skipped and listed in EncodeStats.Skipped with its row, file column and reason, the
// rows around it are encoded, and with Strict it is a *data.RowError naming the file, row
// and column.
func TestEncodePairsSkipsUnusableRows(t *testing.T) {
	const path = "pairs.parquet"
	chat, err := tokenize.Load(chatTokenizerDir(t, chatmlTemplate))
	if err != nil {
		t.Fatal(err)
	}
	// A template that drops assistant turns: every completion renders to no token.
	mute, err := tokenize.Load(chatTokenizerDir(t, "{% for m in messages %}{% if m.role != 'assistant' %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"))
	if err != nil {
		t.Fatal(err)
	}
	text, err := tokenize.Load("../../testdata/tokenizer/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	user := []data.Message{{Role: "user", Content: "Write a poem"}}
	answer := func(s string) []data.Message { return []data.Message{{Role: "assistant", Content: s}} }
	goodConv := data.Example{PromptMessages: user, ChosenMessages: answer("a good poem"), RejectedMessages: answer("bad")}
	goodText := data.Example{Prompt: "Review: fine.\nSentiment:", Chosen: " good", Rejected: " bad"}
	goodIDs := data.Example{PromptIDs: []int64{1, 2, 3}, ChosenIDs: []int64{4, 5}, RejectedIDs: []int64{6}}

	cases := []struct {
		name    string
		layout  data.Layout
		tok     *tokenize.Tokenizer
		good    data.Example
		bad     func(*data.Example)
		columns map[string]string
		column  string // the file column the skip names
		reason  string
	}{
		{"empty chosen list", data.Conversational, chat, goodConv, func(e *data.Example) { e.ChosenMessages = []data.Message{} }, nil, "chosen", data.ReasonEmptyList},
		{"empty rejected list", data.Conversational, chat, goodConv, func(e *data.Example) { e.RejectedMessages = nil }, nil, "rejected", data.ReasonEmptyList},
		{"both lists empty, mapped column", data.Conversational, chat, goodConv, func(e *data.Example) { e.ChosenMessages, e.RejectedMessages = nil, nil },
			map[string]string{"chosen": "good", "rejected": "bad"}, "good", data.ReasonEmptyList},
		{"empty chosen string", data.Standard, text, goodText, func(e *data.Example) { e.Chosen = "" }, nil, "chosen", data.ReasonEmptyCompletion},
		{"empty rejected string", data.Standard, text, goodText, func(e *data.Example) { e.Rejected = "" }, nil, "rejected", data.ReasonEmptyCompletion},
		{"empty implicit-prompt completion", data.ImplicitPrompt, text, goodText, func(e *data.Example) { e.Rejected = "" }, map[string]string{"rejected": "bad"}, "bad", data.ReasonEmptyCompletion},
		{"empty chosen_input_ids", data.Tokenized, nil, goodIDs, func(e *data.Example) { e.ChosenIDs = []int64{} }, nil, "chosen_input_ids", data.ReasonEmptyList},
		{"empty rejected_input_ids, mapped", data.Tokenized, nil, goodIDs, func(e *data.Example) { e.RejectedIDs = nil },
			map[string]string{"rejected_input_ids": "rej"}, "rej", data.ReasonEmptyList},
		{"completion renders to no token", data.Conversational, mute, goodConv, func(e *data.Example) {}, nil, "chosen", data.ReasonNoTokens},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var examples []data.Example
			for _, row := range []int64{0, 7, 9} {
				ex := c.good
				ex.Row = row
				if row == 7 {
					c.bad(&ex)
				}
				examples = append(examples, ex)
			}
			if c.reason == data.ReasonNoTokens { // every row renders to nothing
				examples = examples[1:2]
			}
			cfg := EncodeConfig{Columns: c.columns}
			pairs, stats, err := EncodePairs(path, c.layout, examples, c.tok, cfg, 0)
			if err != nil {
				t.Fatalf("want a skip, got %v", err)
			}
			want := []data.SkippedRow{{Row: 7, Column: c.column, Reason: c.reason}}
			if !reflect.DeepEqual(stats.Skipped, want) || len(pairs) != len(examples)-1 || stats.Dropped != 0 {
				t.Fatalf("skipped %v, %d pairs, %d dropped; want %v, %d pairs", stats.Skipped, len(pairs), stats.Dropped, want, len(examples)-1)
			}
			for i, p := range pairs {
				if p.Index != i || p.Row == 7 {
					t.Errorf("pair %d: index %d row %d", i, p.Index, p.Row)
				}
			}
			// The warning a command prints names the file, row and column.
			msg := path + ": skipped " + stats.Skipped[0].String()
			for _, w := range []string{path, "row 7", `"` + c.column + `"`, c.reason} {
				if !strings.Contains(msg, w) {
					t.Errorf("warning %q does not mention %q", msg, w)
				}
			}

			cfg.Strict = true
			_, _, err = EncodePairs(path, c.layout, examples, c.tok, cfg, 0)
			var re *data.RowError
			if !errors.As(err, &re) || re.Row != 7 || re.Column != c.column || re.Reason != c.reason {
				t.Fatalf("strict: err %v, want a *data.RowError for row 7, column %s", err, c.column)
			}
			for _, w := range []string{path, "row 7", `"` + c.column + `"`} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("strict error %q does not mention %q", err, w)
				}
			}
		})
	}

	t.Run("prompt fills max length: dropped, not skipped", func(t *testing.T) {
		// Truncation that leaves the completion no token is reachable only with keep_start,
		// when the prompt alone fills MaxLength: such pairs are dropped (and counted), as TRL
		// drops them, even with Strict. keep_end always keeps the completion's last tokens.
		ex := goodIDs
		ex.Row = 3
		for _, strict := range []bool{false, true} {
			pairs, stats, err := EncodePairs(path, data.Tokenized, []data.Example{ex}, nil, EncodeConfig{MaxLength: 3, Truncation: tokenize.KeepStart, Strict: strict}, 0)
			if err != nil || len(pairs) != 0 || stats.Dropped != 1 || stats.DroppedRows[0] != 3 || len(stats.Skipped) != 0 {
				t.Fatalf("strict %v: %d pairs, stats %+v, err %v", strict, len(pairs), stats, err)
			}
			pairs, stats, err = EncodePairs(path, data.Tokenized, []data.Example{ex}, nil, EncodeConfig{MaxLength: 3, Truncation: tokenize.KeepEnd, Strict: strict}, 0)
			if err != nil || len(pairs) != 1 || pairs[0].Chosen.CompletionTokens() == 0 || len(stats.Skipped) != 0 {
				t.Fatalf("keep_end, strict %v: %d pairs, stats %+v, err %v", strict, len(pairs), stats, err)
			}
		}
	})

	t.Run("ids outside the vocabulary stay an error", func(t *testing.T) {
		// An id the model has no row for means the data was tokenized for another model: not
		// one bad row, so it is an error even without Strict.
		ex := goodIDs
		ex.Row = 5
		ex.ChosenIDs = []int64{4, 900}
		_, _, err := EncodePairs(path, data.Tokenized, []data.Example{goodIDs, ex}, nil, EncodeConfig{}, 512)
		if err == nil || !strings.Contains(err.Error(), "row 5") || !strings.Contains(err.Error(), "900") {
			t.Fatalf("err %v", err)
		}
	})

	t.Run("errors not about one row come first", func(t *testing.T) {
		rows := []data.Example{{Row: 0, ChosenMessages: nil, RejectedMessages: nil}}
		if _, _, err := EncodePairs(path, data.Standard, rows, nil, EncodeConfig{}, 0); err == nil || !strings.Contains(err.Error(), "tokenizer") || strings.Contains(err.Error(), "--") {
			t.Errorf("no tokenizer: %v (want an error that names no flag)", err)
		}
		noChat, err := tokenize.Load(chatTokenizerDir(t, ""))
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := EncodePairs(path, data.Conversational, rows, noChat, EncodeConfig{}, 0); err == nil || !strings.Contains(err.Error(), "chat template") {
			t.Errorf("no chat template: %v", err)
		}
	})
}

// TestEncodePairsForeignWriters encodes files written by DuckDB (list elements "element")
// and arrow-rs (list elements "item") that hold empty lists and empty strings: every such
// row is skipped with its row and column, the others are encoded, and Strict names the
// first one.
func TestEncodePairsForeignWriters(t *testing.T) {
	chat, err := tokenize.Load(chatTokenizerDir(t, chatmlTemplate))
	if err != nil {
		t.Fatal(err)
	}
	text, err := tokenize.Load("../../testdata/tokenizer/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	emptyLists := []data.SkippedRow{{Row: 99, Column: "chosen", Reason: data.ReasonEmptyList}, {Row: 103, Column: "rejected", Reason: data.ReasonEmptyList}, {Row: 110, Column: "chosen", Reason: data.ReasonEmptyList}}
	var emptyIDs []data.SkippedRow
	for _, r := range []int64{4, 15, 26} {
		emptyIDs = append(emptyIDs, data.SkippedRow{Row: r, Column: "chosen_input_ids", Reason: data.ReasonEmptyList})
	}
	emptyStrings := []data.SkippedRow{{Row: 9, Column: "rejected", Reason: data.ReasonEmptyCompletion}, {Row: 112, Column: "rejected", Reason: data.ReasonEmptyCompletion}, {Row: 215, Column: "rejected", Reason: data.ReasonEmptyCompletion}}
	for _, c := range []struct {
		file string
		tok  *tokenize.Tokenizer
		want []data.SkippedRow
	}{
		{"duckdb_ultrafeedback_empty.parquet", chat, emptyLists},
		{"arrow_ultrafeedback_empty.parquet", chat, emptyLists},
		{"duckdb_tokenized_int32.parquet", nil, emptyIDs},
		{"arrow_tokenized_int64.parquet", nil, emptyIDs},
		{"arrow_standard_snappy_dict.parquet", text, emptyStrings},
	} {
		t.Run(c.file, func(t *testing.T) {
			path, layout, examples := readExamples(t, c.file)
			pairs, stats, err := EncodePairs(path, layout, examples, c.tok, EncodeConfig{}, 0)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(stats.Skipped, c.want) || len(pairs) != len(examples)-len(c.want) {
				t.Fatalf("%d examples, %d pairs, skipped %v; want skipped %v", len(examples), len(pairs), stats.Skipped, c.want)
			}
			_, _, err = EncodePairs(path, layout, examples, c.tok, EncodeConfig{Strict: true}, 0)
			var re *data.RowError
			if !errors.As(err, &re) || re.SkippedRow != c.want[0] || !strings.Contains(err.Error(), path) {
				t.Fatalf("strict: %v, want a *data.RowError for %v", err, c.want[0])
			}
		})
	}
}
