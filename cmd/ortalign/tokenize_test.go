package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// TestTokenizeMatchesHuggingFace encodes the bundled tokenizer's reference strings (ids
// from HuggingFace's Rust library, testdata/tokenizer/expected_ids.jsonl) through the
// command and decodes them back.
func TestTokenizeMatchesHuggingFace(t *testing.T) {
	f, err := os.Open("../../testdata/tokenizer/expected_ids.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	type ref struct {
		Text    string `json:"text"`
		IDs     []int  `json:"ids"`
		Decoded string `json:"decoded"`
	}
	var refs []ref
	var in bytes.Buffer
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<24)
	for sc.Scan() {
		var r ref
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		refs = append(refs, r)
		line, _ := json.Marshal(map[string]string{"text": r.Text})
		in.Write(append(line, '\n'))
	}
	dir := t.TempDir()
	idsPath := filepath.Join(dir, "ids.jsonl")
	if err := runTokenize(&tokenizeOptions{tokenizer: tinyTok, output: idsPath}, &in, nil); err != nil {
		t.Fatal(err)
	}
	idsFile, _ := os.ReadFile(idsPath)
	lines := strings.Split(strings.TrimSpace(string(idsFile)), "\n")
	if len(lines) != len(refs) {
		t.Fatalf("%d output lines for %d inputs", len(lines), len(refs))
	}
	for i, l := range lines {
		var got struct{ IDs []int }
		json.Unmarshal([]byte(l), &got)
		if !equalInts(got.IDs, refs[i].IDs) {
			t.Errorf("%q: ids %v, HuggingFace %v", refs[i].Text, got.IDs, refs[i].IDs)
		}
	}
	var out bytes.Buffer
	if err := runTokenize(&tokenizeOptions{tokenizer: tinyTok, input: idsPath, decode: true}, nil, &out); err != nil {
		t.Fatal(err)
	}
	for i, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var got struct{ Text string }
		json.Unmarshal([]byte(l), &got)
		if got.Text != refs[i].Decoded {
			t.Errorf("decode %v: %q, HuggingFace %q", refs[i].IDs, got.Text, refs[i].Decoded)
		}
	}
}

func TestTokenizeBadLineNamesIt(t *testing.T) {
	out := filepath.Join(t.TempDir(), "ids.jsonl")
	err := runTokenize(&tokenizeOptions{tokenizer: tinyTok, output: out}, strings.NewReader("{\"text\": \"ok\"}\n{\"txt\": 1}\n"), nil)
	if err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("want an error naming line 2, got %v", err)
	}
	if _, err := os.Stat(out); err == nil {
		t.Fatal("partial output left behind")
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestTokenizeFlags: the command line fills the options through runF, without running.
func TestTokenizeFlags(t *testing.T) {
	newCmd := func(_ *globalOptions, runF func(*tokenizeOptions) error) *cobra.Command { return newTokenizeCmd(runF) }
	o := parseFlags(t, newCmd, "--tokenizer", "tok.json", "--input", "in.jsonl", "--output", "out.jsonl", "--add-special-tokens", "--decode", "--skip-special-tokens")
	want := tokenizeOptions{tokenizer: "tok.json", input: "in.jsonl", output: "out.jsonl", addSpecial: true, decode: true, skipSpecial: true}
	if *o != want {
		t.Fatalf("options %+v, want %+v", *o, want)
	}
	if d := parseFlags(t, newCmd, "--tokenizer", "tok.json"); *d != (tokenizeOptions{tokenizer: "tok.json"}) {
		t.Fatalf("defaults %+v", *d)
	}
}
