package tokenize

import (
	"bufio"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// chatCase is one line of testdata/chat/expected.jsonl (see gen_chat_reference.py).
type chatCase struct {
	Template            string            `json:"template"`
	Source              string            `json:"source"` // feature templates carry their source
	Messages            []Message         `json:"messages"`
	AddGenerationPrompt bool              `json:"add_generation_prompt"`
	SpecialTokens       map[string]string `json:"special_tokens"`
	Rendered            *string           `json:"rendered"`
	Error               *string           `json:"error"`

	Strftime string `json:"strftime"`
	Time     string `json:"time"`
}

func readChatCases(t *testing.T) []chatCase {
	t.Helper()
	f, err := os.Open("testdata/chat/expected.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var cases []chatCase
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var c chatCase
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			t.Fatalf("expected.jsonl: %v", err)
		}
		cases = append(cases, c)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return cases
}

// chatFixtureDir writes a tokenizer directory: the tiny test tokenizer.json and a
// tokenizer_config.json with the given entries.
func chatFixtureDir(t *testing.T, config map[string]any) string {
	t.Helper()
	dir := t.TempDir()
	data, err := os.ReadFile("../testdata/tokenizer/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if config != nil {
		b, err := json.Marshal(config)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// featureGaps are the feature templates (not from models) on which the Jinja engine is
// known to differ from Python's Jinja2; none of the model templates uses these constructs.
// The test fails if any other case differs, and reports a gap that has closed.
var featureGaps = map[string]string{
	"feature_whitespace":     "{%+ (keep the whitespace before a block) is not supported",
	"feature_string_methods": "str.endswith with a tuple of suffixes",
	"feature_string_ops":     "none joined with ~ gives \"\" instead of \"None\"",
	"feature_arith":          "float literals with an exponent (1e3) do not parse",
	"feature_compare_logic":  "{{ none }} prints \"\" instead of \"None\"",
	"feature_print_values":   "{{ none }}, {{ 1.0 }} and tuples print differently from Python",
	"feature_tests":          "a test argument without parentheses (is sameas 1)",
	"feature_filters_str":    "no format filter",
	"feature_filters_seq":    "map('join') panics in the engine (an error here, not a crash)",
	"feature_filters_dict":   "spaces between an expression and a block tag are stripped when no text precedes them in the template",
	"feature_tojson":         "tojson with indent sorts keys, sort_keys is ignored, 1e20 and -0.0 differ",
	"feature_cycler_joiner":  "spaces between an expression and a block tag are stripped when no text precedes them in the template",
}

func TestChatTemplateReference(t *testing.T) {
	special := map[string]map[string]string{}
	b, err := os.ReadFile("testdata/chat/special_tokens.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &special); err != nil {
		t.Fatal(err)
	}
	toks := map[string]*Tokenizer{}
	tokenizerFor := func(c chatCase) *Tokenizer {
		if tk := toks[c.Template]; tk != nil {
			return tk
		}
		cfg := map[string]any{}
		if c.Source != "" {
			cfg["chat_template"] = c.Source
			for k, v := range c.SpecialTokens {
				cfg[k] = v
			}
		} else {
			src, err := os.ReadFile(filepath.Join("testdata/chat", c.Template+".jinja"))
			if err != nil {
				t.Fatal(err)
			}
			cfg["chat_template"] = string(src)
			for k, v := range special[c.Template] {
				cfg[k] = v
			}
		}
		tk, err := Load(chatFixtureDir(t, cfg))
		if err != nil {
			t.Fatal(err)
		}
		// Tokens the config leaves unset must stay undefined in the template, not be
		// inferred from the test tokenizer.json.
		tk.bos, tk.eos, tk.pad, tk.unk = str(cfg["bos_token"]), str(cfg["eos_token"]), str(cfg["pad_token"]), str(cfg["unk_token"])
		toks[c.Template] = tk
		return tk
	}

	type tally struct{ ok, n int }
	per := map[string]*tally{}
	var order []string
	failedFeature := map[string]bool{}
	for i, c := range readChatCases(t) {
		if c.Strftime != "" {
			continue // TestStrftime
		}
		if per[c.Template] == nil {
			per[c.Template] = &tally{}
			order = append(order, c.Template)
		}
		per[c.Template].n++
		got, err := tokenizerFor(c).ApplyChatTemplate(c.Messages, c.AddGenerationPrompt)
		var problem string
		switch {
		case c.Error != nil:
			var te *TemplateError
			if !errors.As(err, &te) {
				problem = "want raise_exception(" + *c.Error + "), got " + errString(err)
			} else if te.Message != *c.Error {
				problem = "raise_exception message " + te.Message + ", want " + *c.Error
			}
		case err != nil:
			problem = "error: " + err.Error()
		case got != *c.Rendered:
			problem = "rendered\n" + jsonString(got) + "\nwant\n" + jsonString(*c.Rendered)
		}
		if problem == "" {
			per[c.Template].ok++
			continue
		}
		if why, gap := featureGaps[c.Template]; gap {
			failedFeature[c.Template] = true
			t.Logf("known gap %s (%s): %s", c.Template, why, problem)
			continue
		}
		t.Errorf("case %d (%s, add_generation_prompt=%v, roles %v): %s", i, c.Template, c.AddGenerationPrompt, roles(c.Messages), problem)
	}
	models, modelOK, features, featureOK := 0, 0, 0, 0
	for _, name := range order {
		s := per[name]
		t.Logf("%-28s %d/%d exact", name, s.ok, s.n)
		if strings.HasPrefix(name, "feature_") {
			features += s.n
			featureOK += s.ok
		} else {
			models += s.n
			modelOK += s.ok
		}
	}
	t.Logf("model templates: %d/%d cases exact; feature templates: %d/%d", modelOK, models, featureOK, features)
	for name, why := range featureGaps {
		if !failedFeature[name] && per[name] != nil {
			t.Logf("%s now matches Jinja2: remove it from featureGaps (%s)", name, why)
		}
	}
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

func errString(err error) string {
	if err == nil {
		return "no error"
	}
	return err.Error()
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func roles(msgs []Message) []string {
	var r []string
	for _, m := range msgs {
		r = append(r, m.Role)
	}
	return r
}

func TestStrftime(t *testing.T) {
	for _, c := range readChatCases(t) {
		if c.Strftime == "" {
			continue
		}
		tm, err := time.Parse("2006-01-02T15:04:05.999999", c.Time)
		if err != nil {
			t.Fatal(err)
		}
		if got := strftime(tm, c.Strftime); got != *c.Rendered {
			t.Errorf("strftime(%q) = %q, want %q", c.Strftime, got, *c.Rendered)
		}
	}
	old := strftimeClock
	strftimeClock = func() time.Time { return time.Date(2024, 7, 6, 9, 5, 3, 0, time.UTC) }
	defer func() { strftimeClock = old }()
	tk, err := Load(chatFixtureDir(t, map[string]any{"chat_template": `Today: {{ strftime_now("%d %b %Y") }}`}))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := tk.ApplyChatTemplate(nil, false); err != nil || got != "Today: 06 Jul 2024" {
		t.Errorf("strftime_now in a template: %q, %v", got, err)
	}
}

func TestChatTemplateSources(t *testing.T) {
	hello := []Message{{Role: "user", Content: "hi"}}
	t.Run("string", func(t *testing.T) {
		tk, err := Load(chatFixtureDir(t, map[string]any{"chat_template": "S:{{ messages[0].content }}"}))
		if err != nil {
			t.Fatal(err)
		}
		got, err := tk.ApplyChatTemplate(hello, false)
		if !tk.HasChatTemplate() || err != nil || got != "S:hi" {
			t.Errorf("got %q, %v", got, err)
		}
	})
	t.Run("named list", func(t *testing.T) {
		tk, err := Load(chatFixtureDir(t, map[string]any{"chat_template": []map[string]string{
			{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D:{{ messages | length }}"},
		}}))
		if err != nil {
			t.Fatal(err)
		}
		got, err := tk.ApplyChatTemplate(hello, false)
		if err != nil || got != "D:1" {
			t.Errorf("got %q, %v", got, err)
		}
	})
	t.Run("named list without default", func(t *testing.T) {
		tk, err := Load(chatFixtureDir(t, map[string]any{"chat_template": []map[string]string{{"name": "rag", "template": "R"}}}))
		if err != nil {
			t.Fatal(err)
		}
		_, err = tk.ApplyChatTemplate(hello, false)
		if tk.HasChatTemplate() || err == nil || !strings.Contains(err.Error(), `"default"`) || !strings.Contains(err.Error(), "rag") {
			t.Errorf("HasChatTemplate %v, err %v", tk.HasChatTemplate(), err)
		}
	})
	t.Run("jinja file wins", func(t *testing.T) {
		dir := chatFixtureDir(t, map[string]any{"chat_template": "config"})
		if err := os.WriteFile(filepath.Join(dir, "chat_template.jinja"), []byte("file:{{ messages[0].role }}\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		tk, err := Load(dir)
		if err != nil {
			t.Fatal(err)
		}
		got, err := tk.ApplyChatTemplate(hello, false)
		if err != nil || got != "file:user\n" {
			t.Errorf("got %q, %v", got, err)
		}
	})
	t.Run("none", func(t *testing.T) {
		for _, cfg := range []map[string]any{nil, {"eos_token": "<|endoftext|>"}, {"chat_template": nil}} {
			tk, err := Load(chatFixtureDir(t, cfg))
			if err != nil {
				t.Fatal(err)
			}
			_, err = tk.ApplyChatTemplate(hello, false)
			if tk.HasChatTemplate() || err == nil || !strings.Contains(err.Error(), "no chat template") {
				t.Errorf("config %v: HasChatTemplate %v, err %v", cfg, tk.HasChatTemplate(), err)
			}
		}
	})
	t.Run("malformed", func(t *testing.T) {
		for _, v := range []any{42, []any{"x"}, []map[string]any{{"name": "default"}}} {
			_, err := Load(chatFixtureDir(t, map[string]any{"chat_template": v}))
			if err == nil || !strings.Contains(err.Error(), "tokenizer_config.json") || !strings.Contains(err.Error(), "chat_template") {
				t.Errorf("chat_template %v: err %v", v, err)
			}
		}
	})
	t.Run("bad template", func(t *testing.T) {
		tk, err := Load(chatFixtureDir(t, map[string]any{"chat_template": "{% for m in messages %}never closed"}))
		if err != nil {
			t.Fatalf("a template that does not compile must not fail Load: %v", err)
		}
		_, err = tk.ApplyChatTemplate(hello, false)
		if err == nil || !strings.Contains(err.Error(), "tokenizer_config.json (chat_template)") {
			t.Errorf("err %v", err)
		}
	})
	t.Run("raise_exception", func(t *testing.T) {
		src, err := os.ReadFile("testdata/chat/gemma3.jinja")
		if err != nil {
			t.Fatal(err)
		}
		tk, err := Load(chatFixtureDir(t, map[string]any{"chat_template": string(src), "bos_token": "<bos>"}))
		if err != nil {
			t.Fatal(err)
		}
		_, err = tk.ApplyChatTemplate([]Message{{"user", "a"}, {"user", "b"}}, true)
		var te *TemplateError
		if !errors.As(err, &te) || te.Message != "Conversation roles must alternate user/assistant/user/assistant/..." ||
			!strings.Contains(err.Error(), "tokenizer_config.json") {
			t.Errorf("err %v", err)
		}
	})
	t.Run("with chat template", func(t *testing.T) {
		base, err := Load(chatFixtureDir(t, map[string]any{"bos_token": "<|endoftext|>"}))
		if err != nil {
			t.Fatal(err)
		}
		tk := base.WithChatTemplate("{{ bos_token }}{{ messages[0].content }}")
		got, err := tk.ApplyChatTemplate(hello, false)
		if base.HasChatTemplate() || !tk.HasChatTemplate() || err != nil || got != "<|endoftext|>hi" {
			t.Errorf("got %q, %v", got, err)
		}
	})
}

// chatml is a ChatML template (Qwen's without tools) and chatmlText renders it in Go.
const chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}" +
	"{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"

func chatmlText(msgs []Message, gen bool) string {
	var b strings.Builder
	for _, m := range msgs {
		b.WriteString("<|im_start|>" + m.Role + "\n" + m.Content + "<|im_end|>\n")
	}
	if gen {
		b.WriteString("<|im_start|>assistant\n")
	}
	return b.String()
}

func TestEncodeConversation(t *testing.T) {
	base, err := Load(chatFixtureDir(t, map[string]any{"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}))
	if err != nil {
		t.Fatal(err)
	}
	prompt := []Message{{"system", "Be brief."}, {"user", "hello world"}}
	completion := []Message{{"assistant", "hi there"}}
	t.Run("chatml", func(t *testing.T) {
		tk := base.WithChatTemplate(chatml)
		e, err := tk.EncodeConversation(prompt, completion, PairOptions{AppendEOS: true, AddSpecialTokens: true})
		if err != nil {
			t.Fatal(err)
		}
		promptIDs, _ := tk.Encode(chatmlText(prompt, true), false)
		joint, _ := tk.Encode(chatmlText(append(slices.Clone(prompt), completion...), false), false)
		if e.CompletionStart != len(promptIDs) || !slices.Equal(e.IDs, toInt64(joint)) || e.BoundaryMismatch || e.Truncated {
			t.Fatalf("got %+v\nwant start %d ids %v", e, len(promptIDs), joint)
		}
		// No EOS appended, no special tokens added: the completion is exactly the template's.
		text, _ := tk.Decode(toInt(e.IDs[e.CompletionStart:]), false)
		if text != "hi there<|im_end|>\n" {
			t.Errorf("completion decodes to %q", text)
		}
	})
	t.Run("bos from the template only", func(t *testing.T) {
		tk := base.WithChatTemplate("{{ bos_token }}" + chatml)
		bos, _ := tk.BOS()
		e, err := tk.EncodeConversation(prompt, completion, PairOptions{AddSpecialTokens: true})
		if err != nil {
			t.Fatal(err)
		}
		if e.IDs[0] != int64(bos) || e.IDs[1] == int64(bos) {
			t.Errorf("ids start %v, want one BOS %d", e.IDs[:2], bos)
		}
	})
	t.Run("prompt rendered differently", func(t *testing.T) {
		// DeepSeek-R1 style: the generation prompt opens a think block that the rendering
		// of a finished assistant turn does not have.
		tk := base.WithChatTemplate(chatml[:len(chatml)-len("{% endif %}")-len("<|im_start|>assistant\n")] + "<|im_start|>assistant\n<think>\n{% endif %}")
		e, err := tk.EncodeConversation(prompt, completion, PairOptions{})
		if err != nil {
			t.Fatal(err)
		}
		promptIDs, _ := tk.Encode(chatmlText(prompt, true)+"<think>\n", false)
		if !e.BoundaryMismatch || e.CompletionStart != len(promptIDs) {
			t.Errorf("got mismatch %v start %d, want true %d", e.BoundaryMismatch, e.CompletionStart, len(promptIDs))
		}
		p, c, err := tk.RenderConversation(prompt, completion)
		if err != nil || p != chatmlText(prompt, true) || c != "hi there<|im_end|>\n" {
			t.Errorf("RenderConversation: %q %q %v", p, c, err)
		}
	})
	t.Run("truncation", func(t *testing.T) {
		tk := base.WithChatTemplate(chatml)
		full, _ := tk.EncodeConversation(prompt, completion, PairOptions{})
		e, err := tk.EncodeConversation(prompt, completion, PairOptions{MaxLength: full.CompletionStart + 1})
		if err != nil || !e.Truncated || len(e.IDs) != full.CompletionStart+1 {
			t.Errorf("got %+v, %v", e, err)
		}
		_, err = tk.EncodeConversation(prompt, completion, PairOptions{MaxLength: 3})
		if !errors.Is(err, ErrPromptTooLong) {
			t.Errorf("err %v, want ErrPromptTooLong", err)
		}
	})
	t.Run("errors", func(t *testing.T) {
		if _, err := base.EncodeConversation(prompt, completion, PairOptions{}); err == nil || !strings.Contains(err.Error(), "no chat template") {
			t.Errorf("no template: %v", err)
		}
		tk := base.WithChatTemplate(chatml)
		if _, err := tk.EncodeConversation(prompt, nil, PairOptions{}); !errors.Is(err, ErrEmptyCompletion) {
			t.Errorf("no completion: %v", err)
		}
	})
}

func TestRenderConversation(t *testing.T) {
	base, err := Load(chatFixtureDir(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	tk := base.WithChatTemplate(chatml)
	p, c, err := tk.RenderConversation([]Message{{"user", "q"}}, []Message{{"assistant", "a"}})
	if err != nil || p != "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n" || c != "a<|im_end|>\n" {
		t.Errorf("user prompt: %q %q %v", p, c, err)
	}
	// A prompt ending with an assistant message is continued (continue_final_message).
	p, c, err = tk.RenderConversation([]Message{{"user", "q"}, {"assistant", "The answer is "}}, []Message{{"assistant", "x"}})
	if err != nil || p != "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\nThe answer is " {
		t.Errorf("assistant prompt: %q %q %v", p, c, err)
	}
	if _, _, err := tk.RenderConversation([]Message{{"system", "s"}}, []Message{{"assistant", "x"}}); err == nil {
		t.Error("a prompt ending with a system message must be an error")
	}
	// Common prefix in code points: a multi-byte character that differs is not split.
	if n := commonPrefixLen("aé", "aè"); n != 1 {
		t.Errorf("commonPrefixLen = %d, want 1", n)
	}
}

func toInt64(ids []int) []int64 {
	out := make([]int64, len(ids))
	for i, id := range ids {
		out[i] = int64(id)
	}
	return out
}

func toInt(ids []int64) []int {
	out := make([]int, len(ids))
	for i, id := range ids {
		out[i] = int(id)
	}
	return out
}
