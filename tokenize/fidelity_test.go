package tokenize

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"unicode/utf8"
)

// referenceNames are the tokenizers with expected outputs in testdata/expected.
var referenceNames = []string{"gpt2", "llama3", "qwen3", "gpt4o", "llama2", "gemma3", "bert", "t5"}

type expectedLine struct {
	IDs         []int  `json:"ids"`
	IDsSpecial  []int  `json:"ids_special"`
	Decoded     string `json:"decoded"`
	DecodedSkip string `json:"decoded_skip"`
}

func readJSONL[T any](t testing.TB, path string) []T {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []T
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<26)
	for sc.Scan() {
		var v T
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Fatalf("%s:%d: %v", path, len(out)+1, err)
		}
		out = append(out, v)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func corpus(t testing.TB) []string {
	t.Helper()
	var out []string
	for _, l := range readJSONL[struct {
		Text string `json:"text"`
	}](t, filepath.Join("testdata", "corpus.jsonl")) {
		out = append(out, l.Text)
	}
	return out
}

// TestFidelity compares ids and decoded text with HuggingFace's tokenizers (the reference
// outputs in testdata/expected, written by testdata/gen_reference.mjs) on every corpus string.
func TestFidelity(t *testing.T) {
	texts := corpus(t)
	for _, name := range referenceNames {
		t.Run(name, func(t *testing.T) {
			exp := readJSONL[expectedLine](t, filepath.Join("testdata", "expected", name+".jsonl"))
			if len(exp) != len(texts) {
				t.Fatalf("expected/%s.jsonl has %d lines, corpus has %d", name, len(exp), len(texts))
			}
			tk := loadNamed(t, name)
			bad := map[string]int{}
			for i, text := range texts {
				e := exp[i]
				check := func(what string, got, want any) {
					if fmt.Sprint(got) == fmt.Sprint(want) {
						return
					}
					bad[what]++
					if bad[what] <= 3 {
						t.Errorf("string %d %q: %s:\n got %v\nwant %v", i, clip(text), what, got, want)
					}
				}
				ids, err := tk.Encode(text, false)
				if err != nil {
					t.Fatalf("string %d: %v", i, err)
				}
				check("ids", ids, e.IDs)
				ids2, _ := tk.Encode(text, true)
				check("ids_special", ids2, e.IDsSpecial)
				d, _ := tk.Decode(e.IDs, false)
				check("decoded", fmt.Sprintf("%q", d), fmt.Sprintf("%q", e.Decoded))
				d2, _ := tk.Decode(e.IDsSpecial, true)
				check("decoded_skip", fmt.Sprintf("%q", d2), fmt.Sprintf("%q", e.DecodedSkip))
			}
			if len(bad) > 0 {
				t.Errorf("%s: mismatches on %d strings: %v", name, len(texts), bad)
			} else {
				t.Logf("%s: %d strings, ids (with and without special tokens) and decodes all equal", name, len(texts))
			}
		})
	}
}

func clip(s string) string {
	if utf8.RuneCountInString(s) > 60 {
		return string([]rune(s)[:60]) + "…"
	}
	return s
}

// TestRoundTrip checks decode(encode(s)) == s for the byte-level tokenizers that do not
// normalize.
func TestRoundTrip(t *testing.T) {
	texts := corpus(t)
	for _, name := range []string{"gpt2", "llama3", "gpt4o"} {
		t.Run(name, func(t *testing.T) {
			tk := loadNamed(t, name)
			for i, s := range texts {
				ids, _ := tk.Encode(s, false)
				got, _ := tk.Decode(ids, false)
				if got != s {
					t.Errorf("string %d: decode(encode(%q)) = %q", i, clip(s), clip(got))
				}
			}
		})
	}
}
