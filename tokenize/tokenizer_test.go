package tokenize

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// tinyJSON is a small byte-level BPE tokenizer: the 256 byte symbols, a few merges, and two
// special tokens; parts can be replaced by the tests.
func tinyJSON(t testing.TB, edit func(m map[string]any)) []byte {
	t.Helper()
	vocab := map[string]int{}
	for b := 0; b < 256; b++ {
		vocab[byteToStr[b]] = b
	}
	merges := []string{"h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d"}
	for _, m := range merges {
		a, b, _ := strings.Cut(m, " ")
		if _, ok := vocab[a+b]; !ok {
			vocab[a+b] = len(vocab)
		}
	}
	doc := map[string]any{
		"version": "1.0",
		"added_tokens": []any{
			map[string]any{"id": len(vocab), "content": "<|bos|>", "special": true},
			map[string]any{"id": len(vocab) + 1, "content": "<|eos|>", "special": true},
		},
		"normalizer":    nil,
		"pre_tokenizer": map[string]any{"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
		"post_processor": map[string]any{
			"type":   "TemplateProcessing",
			"single": []any{map[string]any{"SpecialToken": map[string]any{"id": "<|bos|>", "type_id": 0}}, map[string]any{"Sequence": map[string]any{"id": "A", "type_id": 0}}},
			"special_tokens": map[string]any{
				"<|bos|>": map[string]any{"id": "<|bos|>", "ids": []int{len(vocab)}, "tokens": []string{"<|bos|>"}},
			},
		},
		"decoder": map[string]any{"type": "ByteLevel"},
		"model":   map[string]any{"type": "BPE", "dropout": nil, "unk_token": nil, "vocab": vocab, "merges": merges},
	}
	if edit != nil {
		edit(doc)
	}
	data, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func tiny(t testing.TB) *Tokenizer {
	t.Helper()
	tk, err := LoadBytes(tinyJSON(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

func TestTinyEncodeDecode(t *testing.T) {
	tk := tiny(t)
	hello, _ := tk.TokenToID("hello")
	world, _ := tk.TokenToID("Ġworld")
	bos, ok := tk.BOS()
	if !ok || tk.BOSToken() != "<|bos|>" {
		t.Fatalf("BOS() = %d, %v, %q", bos, ok, tk.BOSToken())
	}
	eos, ok := tk.EOS()
	if !ok || tk.EOSToken() != "<|eos|>" {
		t.Fatalf("EOS() = %d, %v, %q", eos, ok, tk.EOSToken())
	}
	tests := []struct {
		text    string
		special bool
		want    []int
	}{
		{"hello world", false, []int{hello, world}},
		{"hello world", true, []int{bos, hello, world}},
		{"hello<|eos|>", false, []int{hello, eos}},
		{"", true, []int{bos}},
	}
	for _, tc := range tests {
		got, err := tk.Encode(tc.text, tc.special)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("Encode(%q, %v) = %v, %v; want %v", tc.text, tc.special, got, err, tc.want)
		}
	}
	if s, _ := tk.Decode([]int{bos, hello, world, eos}, true); s != "hello world" {
		t.Errorf("Decode(skip) = %q", s)
	}
	if s, _ := tk.Decode([]int{bos, hello, 1 << 30}, false); s != "<|bos|>hello" {
		t.Errorf("Decode = %q", s)
	}
	if got := tk.VocabSize(); got != eos+1 {
		t.Errorf("VocabSize() = %d, want %d", got, eos+1)
	}
	batch, err := tk.EncodeBatch([]string{"hello", "world", "hello world"}, false)
	if err != nil || len(batch) != 3 || !slices.Equal(batch[2], []int{hello, world}) {
		t.Errorf("EncodeBatch = %v, %v", batch, err)
	}
	// Invalid UTF-8 is read as U+FFFD and never panics.
	if _, err := tk.Encode("a\xffb\xc3", false); err != nil {
		t.Error(err)
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name string
		edit func(m map[string]any)
		raw  string
		want string
	}{
		{name: "malformed", raw: `{"model": {`, want: "tokenizer.json: malformed JSON"},
		{name: "not an object", raw: `[1, 2]`, want: "tokenizer.json: malformed JSON"},
		{name: "pre-tokenizer in sequence", edit: func(m map[string]any) {
			m["pre_tokenizer"] = map[string]any{"type": "Sequence", "pretokenizers": []any{
				map[string]any{"type": "Whitespace"}, map[string]any{"type": "Foo"}}}
		}, want: `tokenizer.json: pre_tokenizer.pretokenizers[1]: unsupported type "Foo"`},
		{name: "normalizer", edit: func(m map[string]any) { m["normalizer"] = map[string]any{"type": "Bar"} },
			want: `tokenizer.json: normalizer: unsupported type "Bar"`},
		{name: "decoder", edit: func(m map[string]any) {
			m["decoder"] = map[string]any{"type": "Sequence", "decoders": []any{map[string]any{"type": "Baz"}}}
		}, want: `tokenizer.json: decoder.decoders[0]: unsupported type "Baz"`},
		{name: "post-processor", edit: func(m map[string]any) { m["post_processor"] = map[string]any{"type": "Qux"} },
			want: `tokenizer.json: post_processor: unsupported type "Qux"`},
		{name: "model type", edit: func(m map[string]any) { m["model"].(map[string]any)["type"] = "Magic" },
			want: `tokenizer.json: model: unsupported type "Magic"`},
		{name: "merge with unknown token", edit: func(m map[string]any) {
			m["model"].(map[string]any)["merges"] = []string{"h e", "zz q"}
		}, want: `tokenizer.json: model.merges[1]: token "zz" is not in the vocabulary`},
		{name: "merge without space", edit: func(m map[string]any) { m["model"].(map[string]any)["merges"] = []string{"he"} },
			want: `tokenizer.json: model.merges[0]: "he" is not two tokens separated by a space`},
		{name: "dropout", edit: func(m map[string]any) { m["model"].(map[string]any)["dropout"] = 0.1 },
			want: `tokenizer.json: model.dropout: 0.1 is not supported`},
		{name: "unk not in vocab", edit: func(m map[string]any) { m["model"].(map[string]any)["unk_token"] = "<unk>" },
			want: `tokenizer.json: model.unk_token: "<unk>" is not in the vocabulary`},
		{name: "bad regex", edit: func(m map[string]any) {
			m["pre_tokenizer"] = map[string]any{"type": "Split", "pattern": map[string]any{"Regex": "(unclosed"}, "behavior": "Isolated"}
		}, want: `tokenizer.json: pre_tokenizer.pattern: bad regex "(unclosed"`},
		{name: "bad behavior", edit: func(m map[string]any) {
			m["pre_tokenizer"] = map[string]any{"type": "Split", "pattern": map[string]any{"String": " "}, "behavior": "Sideways"}
		}, want: `tokenizer.json: pre_tokenizer.behavior: unsupported "Sideways"`},
		{name: "template without special", edit: func(m map[string]any) {
			m["post_processor"].(map[string]any)["special_tokens"] = map[string]any{}
		}, want: `tokenizer.json: post_processor.single[0]: special token "<|bos|>" is missing from special_tokens`},
		{name: "wrong field type", edit: func(m map[string]any) { m["model"].(map[string]any)["byte_fallback"] = "yes" },
			want: `tokenizer.json: model.byte_fallback: json: cannot unmarshal string`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			data := []byte(tc.raw)
			if tc.raw == "" {
				data = tinyJSON(t, tc.edit)
			}
			_, err := LoadBytes(data)
			if err == nil {
				t.Fatalf("no error, want %q", tc.want)
			}
			if !strings.HasPrefix(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q, want one line starting with %q", err, tc.want)
			}
		})
	}
}

func TestLoadFileAndConfig(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), tinyJSON(t, nil), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := `{"bos_token": {"content": "<|eos|>", "special": true}, "eos_token": "<|bos|>", "pad_token": null}`
	if err := os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "special_tokens_map.json"), []byte(`{"pad_token": "<|eos|>"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	tk, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if tk.BOSToken() != "<|eos|>" || tk.EOSToken() != "<|bos|>" || tk.PADToken() != "<|eos|>" {
		t.Errorf("special tokens = %q %q %q", tk.BOSToken(), tk.EOSToken(), tk.PADToken())
	}
	_, err = Load(filepath.Join(dir, "missing.json"))
	if err == nil || !strings.Contains(err.Error(), "missing.json") {
		t.Errorf("Load(missing) error = %v", err)
	}
	bad := filepath.Join(dir, "bad")
	os.Mkdir(bad, 0o755)
	os.WriteFile(filepath.Join(bad, "tokenizer.json"), []byte(`{"model": 3`), 0o644)
	if _, err = Load(bad); err == nil || !strings.Contains(err.Error(), filepath.Join(bad, "tokenizer.json")+": malformed JSON") {
		t.Errorf("Load(bad) error = %v", err)
	}
}

func TestEncodeIDsPair(t *testing.T) {
	p := []int64{1, 2, 3}
	c := []int64{4, 5}
	tests := []struct {
		name      string
		o         PairOptions
		wantIDs   []int64
		wantStart int
		truncated bool
		err       error
	}{
		{"no limit", PairOptions{}, []int64{1, 2, 3, 4, 5}, 3, false, nil},
		{"fits", PairOptions{MaxLength: 5}, []int64{1, 2, 3, 4, 5}, 3, false, nil},
		{"keep start", PairOptions{MaxLength: 4, Truncation: KeepStart}, []int64{1, 2, 3, 4}, 3, true, nil},
		{"keep start default", PairOptions{MaxLength: 4}, []int64{1, 2, 3, 4}, 3, true, nil},
		{"keep end", PairOptions{MaxLength: 3, Truncation: KeepEnd}, []int64{3, 4, 5}, 1, true, nil},
		{"keep end into completion", PairOptions{MaxLength: 1, Truncation: KeepEnd}, []int64{5}, 0, true, nil},
		{"prompt fills", PairOptions{MaxLength: 3}, nil, 0, true, ErrPromptTooLong},
		{"bad side", PairOptions{Truncation: "middle"}, nil, 0, false, errors.New("")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, err := EncodeIDsPair(p, c, tc.o)
			if tc.err != nil {
				if err == nil || (errors.Is(tc.err, ErrPromptTooLong) && !errors.Is(err, ErrPromptTooLong)) {
					t.Fatalf("err = %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil || !slices.Equal(e.IDs, tc.wantIDs) || e.CompletionStart != tc.wantStart || e.Truncated != tc.truncated {
				t.Errorf("got %+v, %v; want ids %v start %d truncated %v", e, err, tc.wantIDs, tc.wantStart, tc.truncated)
			}
		})
	}
	if _, err := EncodeIDsPair(p, nil, PairOptions{}); !errors.Is(err, ErrEmptyCompletion) {
		t.Errorf("empty completion: err = %v", err)
	}
}

func TestEncodePromptCompletion(t *testing.T) {
	tk := tiny(t)
	id := func(s string) int64 {
		v, ok := tk.TokenToID(s)
		if !ok {
			t.Fatalf("no token %q", s)
		}
		return int64(v)
	}
	bos, eos := id("<|bos|>"), id("<|eos|>")
	tests := []struct {
		name, prompt, completion string
		o                        PairOptions
		want                     []int64
		start                    int
		mismatch                 bool
		err                      error
	}{
		{"plain", "hello", " world", PairOptions{}, []int64{id("hello"), id("Ġworld")}, 1, false, nil},
		{"eos and bos", "hello", " world", PairOptions{AppendEOS: true, AddSpecialTokens: true},
			[]int64{bos, id("hello"), id("Ġworld"), eos}, 2, false, nil},
		{"eos already there", "hello", " world<|eos|>", PairOptions{AppendEOS: true},
			[]int64{id("hello"), id("Ġworld"), eos}, 1, false, nil},
		// "hel"+"lo" is one token jointly: the prompt's ids are not a prefix.
		{"boundary", "hel", "lo", PairOptions{}, []int64{id("hello")}, 1, true, errors.New("")},
		{"too long", "hello", " world", PairOptions{MaxLength: 1, AddSpecialTokens: true}, nil, 0, false, ErrPromptTooLong},
		{"keep end", "hello", " world", PairOptions{MaxLength: 2, Truncation: KeepEnd, AddSpecialTokens: true, AppendEOS: true},
			[]int64{id("Ġworld"), eos}, 0, false, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, err := tk.EncodePromptCompletion(tc.prompt, tc.completion, tc.o)
			if tc.err != nil && tc.want == nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err = %v, want %v", err, tc.err)
				}
				return
			}
			if tc.mismatch {
				// The joint encoding is one token, so no completion token is left after the
				// prompt's length: flagged, and reported as an empty completion.
				if !e.BoundaryMismatch || !errors.Is(err, ErrEmptyCompletion) {
					t.Fatalf("got %+v, %v; want a boundary mismatch", e, err)
				}
				return
			}
			if err != nil || !slices.Equal(e.IDs, tc.want) || e.CompletionStart != tc.start || e.BoundaryMismatch != tc.mismatch {
				t.Errorf("got %+v, %v; want ids %v start %d", e, err, tc.want, tc.start)
			}
		})
	}
}

// TestScannersMatchRegex checks the hand-written split scanners against the regex engine on
// random text.
func TestScannersMatchRegex(t *testing.T) {
	pool := []string{"a", "B", "é", "É", "ǅ", "ʰ", "中", "ー", "\u0301", "\u0903", "1", "٣", "²", "Ⅻ", " ", "  ", "\t", "\n",
		"\r", "\u00a0", "\u3000", "\u2028", "'", "'s", "'S", "'ll", "'LL", "'re", "'Ve", "'d", "'m", "'t", ".", "/", "!", "😀",
		"\u200d", "-", "_", "x", "HTTP", "Server", "the", "The", "don", "'"}
	rng := rand.New(rand.NewPCG(1, 2))
	for pat, sc := range knownScanners {
		re, err := compileRegex(pat)
		if err != nil {
			t.Fatal(err)
		}
		for n := 0; n < 3000; n++ {
			var b strings.Builder
			for k := rng.IntN(12) + 1; k > 0; k-- {
				b.WriteString(pool[rng.IntN(len(pool))])
			}
			s := b.String()
			want := regexFindAll(re, s)
			got := scanMatcher(sc).findAll(nil, s)
			if !slices.Equal(got, want) {
				t.Fatalf("pattern %.30q on %q:\n got %v\nwant %v", pat, s, got, want)
			}
		}
	}
}
