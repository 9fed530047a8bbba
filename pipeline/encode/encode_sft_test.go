package encode

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"ortalign/data"
	"ortalign/pipeline/lm"
	"ortalign/tokenize"
)

// readUse reads a data/testdata file for a use.
func readUse(t *testing.T, name string, use data.Use) (string, data.Layout, []data.Example) {
	t.Helper()
	path := name
	if !strings.Contains(name, "/") {
		path = filepath.Join("../../data/testdata", name)
	}
	ds, err := data.Open(path, data.Options{Use: use})
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

func ids64(t *testing.T, tok *tokenize.Tokenizer, text string, special bool) []int64 {
	t.Helper()
	ids, err := tok.Encode(text, special)
	if err != nil {
		t.Fatal(err)
	}
	return toInt64(ids)
}

func decode(t *testing.T, tok *tokenize.Tokenizer, ids []int64) string {
	t.Helper()
	in := make([]int, len(ids))
	for i, id := range ids {
		in[i] = int(id)
	}
	s, err := tok.Decode(in, false)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func textTokenizer(t *testing.T) *tokenize.Tokenizer {
	t.Helper()
	tok, err := tokenize.Load("../../testdata/tokenizer/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func chatTokenizer(t *testing.T) *tokenize.Tokenizer {
	t.Helper()
	tok, err := tokenize.Load(chatTokenizerDir(t, chatmlTemplate))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// rowsOf returns the encoded rows' file rows.
func rowsOf(seqs []EncodedSequence) []int64 {
	var r []int64
	for _, s := range seqs {
		r = append(r, s.Row)
	}
	return r
}

func TestEncodeSequencesPromptCompletion(t *testing.T) {
	tok := textTokenizer(t)
	for _, file := range []string{"duckdb_sft_pc.parquet", "arrow_sft_pc.parquet", "duckdb_sft_pc.jsonl"} {
		t.Run(file, func(t *testing.T) {
			path, layout, examples := readUse(t, file, data.UseSFT)
			seqs, stats, err := EncodeSequences(path, layout, examples, tok, EncodeConfig{}, int64(tok.VocabSize()))
			if err != nil {
				t.Fatal(err)
			}
			// Row 7's completion is empty; the reader skipped the null rows.
			if want := []data.SkippedRow{{Row: 7, Column: "completion", Reason: data.ReasonEmptyCompletion}}; !reflect.DeepEqual(stats.Skipped, want) {
				t.Fatalf("skipped %v, want %v", stats.Skipped, want)
			}
			if len(seqs) != len(examples)-1 || stats.BoundaryMismatches != 0 || stats.Truncated != 0 {
				t.Fatalf("%d sequences from %d examples, stats %+v", len(seqs), len(examples), stats)
			}
			byRow := map[int64]data.Example{}
			for _, e := range examples {
				byRow[e.Row] = e
			}
			for i, s := range seqs {
				e := byRow[s.Row]
				want := ids64(t, tok, e.Prompt+e.Completion+"<|endoftext|>", true)
				start := len(ids64(t, tok, e.Prompt, true))
				if s.Index != i || !slices.Equal(s.IDs, want) || s.CompletionStart != start || s.Mask != nil {
					t.Fatalf("row %d: %+v\nwant ids %v start %d", s.Row, s, want, start)
				}
				if got := decode(t, tok, s.IDs[s.CompletionStart:]); got != e.Completion+"<|endoftext|>" {
					t.Errorf("row %d: completion %q", s.Row, got)
				}
				if s.IDs[len(s.IDs)-1] != 510 || s.CompletionTokens() != len(want)-start {
					t.Errorf("row %d: no EOS or %d completion tokens", s.Row, s.CompletionTokens())
				}
			}
		})
	}
}

func TestEncodeSequencesConversationalPromptCompletion(t *testing.T) {
	tok := chatTokenizer(t)
	for _, file := range []string{"duckdb_sft_conv_pc.parquet", "arrow_sft_conv_pc.parquet", "duckdb_sft_conv_pc.jsonl"} {
		t.Run(file, func(t *testing.T) {
			path, layout, examples := readUse(t, file, data.UseSFT)
			seqs, stats, err := EncodeSequences(path, layout, examples, tok, EncodeConfig{Columns: map[string]string{"completion": "answer"}}, int64(tok.VocabSize()))
			if err != nil {
				t.Fatal(err)
			}
			if want := []data.SkippedRow{{Row: 9, Column: "answer", Reason: data.ReasonEmptyList}}; !reflect.DeepEqual(stats.Skipped, want) {
				t.Fatalf("skipped %v, want %v", stats.Skipped, want)
			}
			if len(seqs) != len(examples)-1 || stats.BoundaryMismatches != 0 {
				t.Fatalf("%d sequences, stats %+v", len(seqs), stats)
			}
			multi := 0
			for k, s := range seqs {
				e := examples[slices.IndexFunc(examples, func(e data.Example) bool { return e.Row == s.Row })]
				if len(e.PromptMessages) > 1 {
					multi++
				}
				want := ids64(t, tok, chatmlRender(slices.Concat(e.PromptMessages, e.CompletionMessages), false), false)
				start := len(ids64(t, tok, chatmlRender(e.PromptMessages, true), false))
				if !slices.Equal(s.IDs, want) || s.CompletionStart != start || s.Index != k {
					t.Fatalf("row %d: %+v\nwant %v start %d", s.Row, s, want, start)
				}
				if got, w := decode(t, tok, s.IDs[start:]), e.CompletionMessages[0].Content+"<|im_end|>\n"; got != w {
					t.Errorf("row %d: completion %q, want %q (no EOS appended)", s.Row, got, w)
				}
			}
			if multi == 0 {
				t.Error("no multi-turn prompt checked")
			}
		})
	}
}

// wantMessageMask computes a ChatML conversation's ids and learnt tokens with Go's own
// rendering (not the template engine): each assistant turn's tokens run from the end of
// the conversation before it with the generation prompt to the end of the conversation
// through it.
func wantMessageMask(t *testing.T, tok *tokenize.Tokenizer, msgs []data.Message) ([]int64, []bool) {
	ids := ids64(t, tok, chatmlRender(msgs, false), false)
	mask := make([]bool, len(ids))
	for i, m := range msgs {
		if m.Role != "assistant" {
			continue
		}
		from := len(ids64(t, tok, chatmlRender(msgs[:i], true), false))
		to := len(ids64(t, tok, chatmlRender(msgs[:i+1], false), false))
		for k := from; k < to; k++ {
			mask[k] = true
		}
	}
	return ids, mask
}

// spans returns the decoded text of each run of learnt tokens.
func spans(t *testing.T, tok *tokenize.Tokenizer, s lm.Sequence) []string {
	var out []string
	for k := 0; k < len(s.IDs); {
		if !s.Mask[k] {
			k++
			continue
		}
		e := k
		for e < len(s.IDs) && s.Mask[e] {
			e++
		}
		out = append(out, decode(t, tok, s.IDs[k:e]))
		k = e
	}
	return out
}

func TestEncodeSequencesMessages(t *testing.T) {
	tok := chatTokenizer(t)
	for _, file := range []string{"duckdb_sft_messages.parquet", "arrow_sft_messages.parquet", "duckdb_sft_messages.jsonl"} {
		t.Run(file, func(t *testing.T) {
			path, layout, examples := readUse(t, file, data.UseSFT)
			seqs, stats, err := EncodeSequences(path, layout, examples, tok, EncodeConfig{}, int64(tok.VocabSize()))
			if err != nil {
				t.Fatal(err)
			}
			if want := []data.SkippedRow{{Row: 8, Column: "messages", Reason: data.ReasonNoAssistant}}; !reflect.DeepEqual(stats.Skipped, want) {
				t.Fatalf("skipped %v, want %v", stats.Skipped, want)
			}
			if len(seqs) != len(examples)-1 || stats.BoundaryMismatches != 0 {
				t.Fatalf("%d sequences, stats %+v", len(seqs), stats)
			}
			twoTurns := 0
			for _, s := range seqs {
				e := examples[slices.IndexFunc(examples, func(e data.Example) bool { return e.Row == s.Row })]
				ids, mask := wantMessageMask(t, tok, e.Messages)
				if !slices.Equal(s.IDs, ids) || !slices.Equal(s.Mask, mask) || s.CompletionStart != slices.Index(mask, true) {
					t.Fatalf("row %d: ids %v mask %v start %d\nwant %v %v", s.Row, s.IDs, s.Mask, s.CompletionStart, ids, mask)
				}
				// The learnt tokens are exactly each assistant content and its end of turn.
				var want []string
				for _, m := range e.Messages {
					if m.Role == "assistant" {
						want = append(want, m.Content+"<|im_end|>\n")
					}
				}
				if got := spans(t, tok, s.Sequence); !reflect.DeepEqual(got, want) {
					t.Errorf("row %d: learnt %q, want %q", s.Row, got, want)
				}
				n := 0
				for _, b := range mask {
					if b {
						n++
					}
				}
				if s.CompletionTokens() != n {
					t.Errorf("row %d: CompletionTokens %d, want %d", s.Row, s.CompletionTokens(), n)
				}
				if len(want) == 2 {
					twoTurns++
				}
				// A user-assistant conversation is its prompt-completion pair.
				if len(e.Messages) == 2 {
					pc, _, err := EncodeSequences(path, data.ConversationalPromptCompletion,
						[]data.Example{{PromptMessages: e.Messages[:1], CompletionMessages: e.Messages[1:]}}, tok, EncodeConfig{}, 0)
					if err != nil || !slices.Equal(pc[0].IDs, s.IDs) || pc[0].CompletionStart != s.CompletionStart ||
						pc[0].CompletionTokens() != s.CompletionTokens() {
						t.Errorf("row %d: messages %+v, prompt-completion %+v (%v)", s.Row, s.Sequence, pc, err)
					}
				}
			}
			if twoTurns == 0 {
				t.Error("no conversation with two assistant turns checked")
			}
		})
	}
}

func TestEncodeSequencesMessagesTruncation(t *testing.T) {
	tok := chatTokenizer(t)
	msgs := []data.Message{{Role: "system", Content: "sys"}, {Role: "user", Content: "q1"}, {Role: "assistant", Content: "a1"},
		{Role: "user", Content: "q2"}, {Role: "assistant", Content: "a2"}, {Role: "user", Content: "a long question that stays unanswered"}}
	ids, mask := wantMessageMask(t, tok, msgs)
	examples := []data.Example{{Row: 3, Messages: msgs}}
	lastLearnt := slices.Index(mask, true)
	for k := range mask {
		if mask[k] {
			lastLearnt = k
		}
	}
	for _, c := range []struct {
		trunc   string
		max     int
		from    int
		dropped bool
	}{
		{tokenize.KeepStart, slices.Index(mask, true) + 3, 0, false},
		{tokenize.KeepStart, slices.Index(mask, true), 0, true}, // only the prompt is left
		{tokenize.KeepEnd, len(ids) - lastLearnt + 2, lastLearnt - 2, false},
		{tokenize.KeepEnd, len(ids) - lastLearnt - 1, 0, true}, // only the open user turn is left
	} {
		t.Run(fmt.Sprintf("%s/%d", c.trunc, c.max), func(t *testing.T) {
			seqs, stats, err := EncodeSequences("x.jsonl", data.ConversationalLanguageModeling, examples, tok, EncodeConfig{MaxLength: c.max, Truncation: c.trunc}, 0)
			if err != nil {
				t.Fatal(err)
			}
			if c.dropped {
				if len(seqs) != 0 || stats.Dropped != 1 || !slices.Equal(stats.DroppedRows, []int64{3}) {
					t.Fatalf("%d sequences, stats %+v; want row 3 dropped", len(seqs), stats)
				}
				return
			}
			if len(seqs) != 1 || stats.Truncated != 1 {
				t.Fatalf("%d sequences, stats %+v", len(seqs), stats)
			}
			s := seqs[0]
			if !slices.Equal(s.IDs, ids[c.from:c.from+c.max]) || !slices.Equal(s.Mask, mask[c.from:c.from+c.max]) ||
				s.CompletionStart != slices.Index(s.Mask, true) {
				t.Errorf("got %+v", s.Sequence)
			}
		})
	}
}

func TestEncodeSequencesTokenizedAndText(t *testing.T) {
	t.Run("pre-tokenized", func(t *testing.T) {
		for _, file := range []string{"duckdb_sft_tokenized_int32.parquet", "arrow_sft_tokenized_int64.parquet", "duckdb_sft_tokenized.jsonl"} {
			path, layout, examples := readUse(t, file, data.UseSFT)
			seqs, stats, err := EncodeSequences(path, layout, examples, nil, EncodeConfig{}, 100)
			if err != nil {
				t.Fatal(err)
			}
			if want := []data.SkippedRow{{Row: 4, Column: "completion_input_ids", Reason: data.ReasonEmptyList}}; !reflect.DeepEqual(stats.Skipped, want) {
				t.Fatalf("%s: skipped %v", file, stats.Skipped)
			}
			for _, s := range seqs {
				x := s.Row
				if !slices.Equal(s.IDs, []int64{1, x, x + 1, 10 + x, 11 + x}) || s.CompletionStart != 3 {
					t.Fatalf("%s: row %d: %+v", file, x, s)
				}
			}
			// Ids are checked against the model's vocabulary.
			if _, _, err := EncodeSequences(path, layout, examples, nil, EncodeConfig{}, 20); err == nil || !strings.Contains(err.Error(), "outside the model's vocabulary [0, 20)") {
				t.Errorf("%s: vocab 20: %v", file, err)
			}
		}
	})
	t.Run("text", func(t *testing.T) {
		tok := textTokenizer(t)
		path, layout, examples := readUse(t, "duckdb_sft_text.parquet", data.UseSFT)
		seqs, stats, err := EncodeSequences(path, layout, examples, tok, EncodeConfig{}, 512)
		if err != nil {
			t.Fatal(err)
		}
		if want := []data.SkippedRow{{Row: 5, Column: "text", Reason: data.ReasonEmptyText}}; !reflect.DeepEqual(stats.Skipped, want) || len(seqs) != 8 {
			t.Fatalf("skipped %v, %d sequences", stats.Skipped, len(seqs))
		}
		for _, s := range seqs {
			text := fmt.Sprintf("Document %d says %d.", s.Row, 3*s.Row)
			want := ids64(t, tok, text+"<|endoftext|>", true)
			if !slices.Equal(s.IDs, want) || s.CompletionStart != 0 || s.CompletionTokens() != len(want)-1 {
				t.Fatalf("row %d: %+v, want %v", s.Row, s, want)
			}
		}
		// keep_end keeps the last ids, every one learnt but the first.
		seqs, stats, err = EncodeSequences(path, layout, examples, tok, EncodeConfig{MaxLength: 4, Truncation: tokenize.KeepEnd}, 512)
		if err != nil || stats.Truncated != len(seqs) || len(seqs[0].IDs) != 4 || seqs[0].IDs[3] != 510 || seqs[0].CompletionTokens() != 3 {
			t.Fatalf("keep_end: %v %+v %+v", err, stats, seqs[0])
		}
	})
}

// TestEncodeSequencesPreference: a preference dataset read for SFT gives the chosen
// sequences of EncodePairs.
func TestEncodeSequencesPreference(t *testing.T) {
	text, chat := textTokenizer(t), chatTokenizer(t)
	for _, c := range []struct {
		file string
		tok  *tokenize.Tokenizer
		max  int // some rows are cut, some dropped
	}{
		{"../../testdata/data/train.parquet", text, 30},
		{"duckdb_hh.parquet", text, 70},
		{"duckdb_ultrafeedback.parquet", chat, 110},
		{"arrow_conversational.parquet", chat, 80},
		{"arrow_tokenized_int64.parquet", nil, 4},
	} {
		t.Run(filepath.Base(c.file), func(t *testing.T) {
			path, layout, sft := readUse(t, c.file, data.UseSFT)
			_, playout, pref := readUse(t, c.file, data.UsePreference)
			if layout != playout {
				t.Fatalf("layout %v for SFT, %v for pairs", layout, playout)
			}
			seqs, sstats, err := EncodeSequences(path, layout, sft, c.tok, EncodeConfig{MaxLength: c.max}, 0)
			if err != nil {
				t.Fatal(err)
			}
			pairs, _, err := EncodePairs(path, layout, pref, c.tok, EncodeConfig{MaxLength: c.max}, 0)
			if err != nil {
				t.Fatal(err)
			}
			chosen := map[int64]lm.Sequence{}
			for _, p := range pairs {
				chosen[p.Row] = p.Chosen
			}
			matched := 0
			for _, s := range seqs {
				if p, ok := chosen[s.Row]; ok {
					matched++
					if !reflect.DeepEqual(p, s.Sequence) {
						t.Fatalf("row %d: SFT %+v, chosen %+v", s.Row, s.Sequence, p)
					}
				}
			}
			if matched < len(pairs)-len(sstats.Skipped) || matched == 0 {
				t.Errorf("%d of %d pairs matched", matched, len(pairs))
			}
			t.Logf("%d sequences (%d truncated, %d dropped), %d pairs", len(seqs), sstats.Truncated, sstats.Dropped, len(pairs))
		})
	}
}

func TestEncodeSequencesStrictAndErrors(t *testing.T) {
	tok := chatTokenizer(t)
	path, layout, examples := readUse(t, "duckdb_sft_messages.parquet", data.UseSFT)
	_, _, err := EncodeSequences(path, layout, examples, tok, EncodeConfig{Strict: true}, 0)
	var re *data.RowError
	if !errors.As(err, &re) || re.Row != 8 || re.Column != "messages" || re.Reason != data.ReasonNoAssistant || re.Path != path {
		t.Errorf("strict: %v", err)
	}
	if _, _, err := EncodeSequences(path, layout, examples, textTokenizer(t), EncodeConfig{}, 0); err == nil || !strings.Contains(err.Error(), "needs a chat template") {
		t.Errorf("no template: %v", err)
	}
	if _, _, err := EncodeSequences(path, data.PromptOnly, nil, tok, EncodeConfig{}, 0); err == nil || !strings.Contains(err.Error(), "no completion to learn") {
		t.Errorf("prompt-only: %v", err)
	}
	if _, _, err := EncodeSequences(path, layout, examples, tok, EncodeConfig{Truncation: "middle"}, 0); err == nil {
		t.Error("bad truncation accepted")
	}
}

func TestBatchInputsMask(t *testing.T) {
	rows := []lm.Sequence{
		{IDs: []int64{1, 2, 3, 4, 5, 6}, CompletionStart: 1, Mask: []bool{false, true, true, false, true, false}},
		{IDs: []int64{7, 8, 9}, CompletionStart: 1},
		{IDs: []int64{4, 4}, Mask: []bool{true, true}},
	}
	b := lm.BatchInputs(rows, 99)
	want := []float32{
		0, 1, 1, 0, 1, 0,
		0, 1, 1, 0, 0, 0,
		1, 1, 0, 0, 0, 0,
	}
	if !slices.Equal(b.CompletionMask.F32, want) || !slices.Equal(b.IDs.I64[6:12], []int64{7, 8, 9, 99, 99, 99}) ||
		!slices.Equal(b.AttentionMask.I64[12:], []int64{1, 1, 0, 0, 0, 0}) {
		t.Errorf("completion mask %v ids %v", b.CompletionMask.F32, b.IDs.I64)
	}
	// Token 0 is never learnt: nothing predicts it.
	for i, w := range []int{3, 2, 1} {
		if got := rows[i].CompletionTokens(); got != w {
			t.Errorf("row %d: CompletionTokens %d, want %d", i, got, w)
		}
	}
	if got := (lm.Sequence{IDs: []int64{1, 2, 3}}).CompletionTokens(); got != 2 {
		t.Errorf("CompletionStart 0: %d tokens, want 2", got)
	}
}

func TestEncodePrompts(t *testing.T) {
	text, chat := textTokenizer(t), chatTokenizer(t)
	t.Run("text", func(t *testing.T) {
		path, layout, examples := readUse(t, "duckdb_prompts.parquet", data.UsePrompts)
		ps, stats, err := EncodePrompts(path, layout, examples, text, EncodeConfig{}, 512)
		if err != nil || len(ps) != 9 || len(stats.Skipped) != 0 {
			t.Fatalf("%v, %d prompts, %+v", err, len(ps), stats)
		}
		for k, p := range ps {
			if want := ids64(t, text, fmt.Sprintf("Tell me about %d", p.Row), false); !slices.Equal(p.IDs, want) || p.Index != k {
				t.Fatalf("row %d: %v, want %v", p.Row, p.IDs, want)
			}
		}
		// keep_end keeps the end of a long prompt.
		ps, stats, err = EncodePrompts(path, layout, examples, text, EncodeConfig{MaxLength: 2, Truncation: tokenize.KeepEnd}, 512)
		full := ids64(t, text, "Tell me about 0", false)
		if err != nil || stats.Truncated != 9 || !slices.Equal(ps[0].IDs, full[len(full)-2:]) || !ps[0].Truncated {
			t.Fatalf("keep_end: %v %+v %v", err, stats, ps[0])
		}
	})
	t.Run("conversational", func(t *testing.T) {
		for _, file := range []string{"arrow_prompts_conv.parquet", "duckdb_prompts_conv.jsonl", "arrow_conversational.parquet", "duckdb_sft_conv_pc.parquet"} {
			path, layout, examples := readUse(t, file, data.UsePrompts)
			ps, _, err := EncodePrompts(path, layout, examples, chat, EncodeConfig{}, 512)
			if err != nil || len(ps) != len(examples) {
				t.Fatalf("%s: %v, %d prompts", file, err, len(ps))
			}
			for k, p := range ps {
				want := ids64(t, chat, chatmlRender(examples[k].PromptMessages, true), false)
				if !slices.Equal(p.IDs, want) {
					t.Fatalf("%s: row %d: %v, want %v", file, p.Row, p.IDs, want)
				}
			}
		}
		// A prompt that ends with an assistant message is continued, not answered.
		ps, _, err := EncodePrompts("x.jsonl", data.ConversationalPromptOnly, []data.Example{{PromptMessages: []data.Message{
			{Role: "user", Content: "hi"}, {Role: "assistant", Content: "Sure, the"}}}}, chat, EncodeConfig{}, 0)
		if err != nil || !strings.HasSuffix(decode(t, chat, ps[0].IDs), "assistant\nSure, the") {
			t.Errorf("continue final message: %v %q", err, decode(t, chat, ps[0].IDs))
		}
	})
	t.Run("pre-tokenized and skips", func(t *testing.T) {
		path, layout, examples := readUse(t, "duckdb_tokenized_int32.parquet", data.UsePrompts)
		ps, _, err := EncodePrompts(path, layout, examples, nil, EncodeConfig{}, 0)
		if err != nil || len(ps) != 30 || !slices.Equal(ps[5].IDs, []int64{1, 5, 6}) {
			t.Fatalf("%v %d", err, len(ps))
		}
		ex := []data.Example{{Row: 0, Prompt: "a"}, {Row: 1, Prompt: ""}, {Row: 2, Prompt: "b"}}
		ps, stats, err := EncodePrompts("p.parquet", data.PromptOnly, ex, text, EncodeConfig{Columns: map[string]string{"prompt": "q"}}, 0)
		if err != nil || len(ps) != 2 || !reflect.DeepEqual(stats.Skipped, []data.SkippedRow{{Row: 1, Column: "q", Reason: data.ReasonEmptyPrompt}}) {
			t.Fatalf("%v %d %v", err, len(ps), stats.Skipped)
		}
		_, _, err = EncodePrompts("p.parquet", data.PromptOnly, ex, text, EncodeConfig{Strict: true}, 0)
		var re *data.RowError
		if !errors.As(err, &re) || re.Row != 1 || re.Reason != data.ReasonEmptyPrompt {
			t.Errorf("strict: %v", err)
		}
		if _, _, err := EncodePrompts("p.parquet", data.ConversationalLanguageModeling, nil, chat, EncodeConfig{}, 0); err == nil {
			t.Error("messages layout accepted for prompts")
		}
	})
}

// TestEncodeSequencesBundledOracle encodes the bundled SFT dataset and compares every
// row with the ids HuggingFace's Rust tokenizer gives under TRL's SFTTrainer rules
// (testdata/gen_sft_dataset.mjs).
func TestEncodeSequencesBundledOracle(t *testing.T) {
	raw, err := os.ReadFile("../../testdata/expected/sft_ids.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	var want []struct {
		InputIDs        []int64 `json:"input_ids"`
		CompletionStart int     `json:"completion_start"`
	}
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var w struct {
			InputIDs        []int64 `json:"input_ids"`
			CompletionStart int     `json:"completion_start"`
		}
		if err := json.Unmarshal([]byte(line), &w); err != nil {
			t.Fatal(err)
		}
		want = append(want, w)
	}
	tok := textTokenizer(t)
	for _, file := range []string{"../../testdata/data/sft_train.parquet", "../../testdata/data/sft_train.jsonl"} {
		path, layout, examples := readUse(t, file, data.UseSFT)
		if layout != data.PromptCompletion || len(examples) != 400 || len(want) != 400 {
			t.Fatalf("%s: %v, %d rows, %d expected", file, layout, len(examples), len(want))
		}
		seqs, stats, err := EncodeSequences(path, layout, examples, tok, EncodeConfig{}, int64(tok.VocabSize()))
		if err != nil || len(seqs) != 400 || stats.BoundaryMismatches != 0 || len(stats.Skipped) != 0 {
			t.Fatalf("%s: %v, %d sequences, %+v", file, err, len(seqs), stats)
		}
		for i, s := range seqs {
			if !slices.Equal(s.IDs, want[i].InputIDs) || s.CompletionStart != want[i].CompletionStart {
				t.Fatalf("%s: row %d: %v start %d\nwant %v start %d", file, i, s.IDs, s.CompletionStart, want[i].InputIDs, want[i].CompletionStart)
			}
		}
	}
}
