package tokenize

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/ardanlabs/jinja"
)

// Message is one turn of a conversation given to a chat template.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// TemplateError is returned (wrapped) when a chat template calls raise_exception, as
// templates do to refuse a conversation (e.g. Gemma's "Conversation roles must
// alternate user/assistant/user/assistant/...").
type TemplateError struct {
	// Template names where the template came from (a file, or "chat template").
	Template string
	// Message is the text the template passed to raise_exception.
	Message string
}

func (e *TemplateError) Error() string {
	return fmt.Sprintf("%s: the chat template refused the conversation: %s", e.Template, e.Message)
}

// chatTemplate is a tokenizer's chat template, compiled on first use so that a template
// the engine cannot parse only fails the callers that need it. It renders in the sandbox
// (sandbox.go): what is compiled is the source with the sandbox's guards.
type chatTemplate struct {
	source string // the Jinja source; "" when err says why there is none to use
	origin string // where the source came from, for messages
	err    error  // a configuration error found while loading (e.g. no "default" template)

	once   sync.Once
	tmpl   *jinja.Template
	guards map[string]bool // the sandbox's guards that tmpl calls
	cerr   error
}

func (c *chatTemplate) compiled() (*jinja.Template, error) {
	c.once.Do(func() {
		if c.err != nil {
			c.cerr = c.err
			return
		}
		defer func() {
			if r := recover(); r != nil { // defensive: an engine bug must not crash the caller
				c.tmpl, c.cerr = nil, fmt.Errorf("%s: chat template: internal error in the template engine while compiling: %v", c.origin, r)
			}
		}()
		if err := preflightTemplate(c.source); err != nil {
			c.cerr = fmt.Errorf("%s: %w: %v", c.origin, ErrTemplateLimit, err)
			return
		}
		if _, err := jinja.Compile(c.source); err != nil {
			c.cerr = fmt.Errorf("%s: chat template: %w", c.origin, err)
			return
		}
		src, err := instrumentTemplate(c.source)
		if err != nil {
			c.cerr = fmt.Errorf("%s: %w: %v", c.origin, ErrTemplateLimit, err)
			return
		}
		t, err := jinja.Compile(src)
		if err != nil { // the rewriter and the engine disagree: refuse rather than run unguarded
			c.cerr = fmt.Errorf("%s: %w: the template cannot be instrumented (%v)", c.origin, ErrTemplateLimit, err)
			return
		}
		c.tmpl, c.guards = t, guardsUsed(src)
	})
	return c.tmpl, c.cerr
}

// chatTemplateFile is the separate template file that newer HuggingFace repositories ship
// beside tokenizer_config.json; like transformers, it takes priority over the config's
// chat_template entry.
const chatTemplateFile = "chat_template.jinja"

// readChatTemplate finds the chat template in dir: chat_template.jinja, else the
// chat_template entry of tokenizer_config.json (a string, or a list of {name, template}
// of which "default" is used, as transformers does when no tools are passed).
func (t *Tokenizer) readChatTemplate(dir string) error {
	p := filepath.Join(dir, chatTemplateFile)
	switch data, err := os.ReadFile(p); {
	case err == nil:
		t.chat = &chatTemplate{source: string(data), origin: p}
		return nil
	case !os.IsNotExist(err):
		return fmt.Errorf("tokenize: %w", err)
	}
	p = filepath.Join(dir, "tokenizer_config.json")
	data, err := os.ReadFile(p)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("tokenize: %w", err)
	}
	var cfg struct {
		ChatTemplate json.RawMessage `json:"chat_template"`
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		return fmt.Errorf("%s: malformed JSON: %s", p, jsonErr(err))
	}
	c, err := parseChatTemplateField(cfg.ChatTemplate, p)
	if err != nil {
		return err
	}
	t.chat = c
	return nil
}

// parseChatTemplateField reads tokenizer_config.json's chat_template: absent or null (no
// template), a string, or a list of {"name", "template"} objects.
func parseChatTemplateField(raw json.RawMessage, path string) (*chatTemplate, error) {
	if len(raw) == 0 || isNull(raw) {
		return nil, nil
	}
	origin := path + " (chat_template)"
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return &chatTemplate{source: s, origin: origin}, nil
	}
	var named []struct {
		Name     *string `json:"name"`
		Template *string `json:"template"`
	}
	if err := json.Unmarshal(raw, &named); err != nil {
		return nil, fmt.Errorf("%s: chat_template: want a string or a list of {\"name\", \"template\"} objects", path)
	}
	var names []string
	for i, n := range named {
		if n.Name == nil || n.Template == nil {
			return nil, fmt.Errorf("%s: chat_template[%d]: want an object with string \"name\" and \"template\"", path, i)
		}
		if *n.Name == "default" {
			return &chatTemplate{source: *n.Template, origin: path + " (chat_template \"default\")"}, nil
		}
		names = append(names, *n.Name)
	}
	return &chatTemplate{origin: origin, err: fmt.Errorf(
		"%s: chat_template holds the named templates %q but none is named \"default\", the one used without tools", path, names)}, nil
}

// HasChatTemplate tells whether the tokenizer has a chat template to apply: a
// chat_template.jinja file or a chat_template entry in tokenizer_config.json beside
// tokenizer.json, or one given with WithChatTemplate.
func (t *Tokenizer) HasChatTemplate() bool { return t.chat != nil && t.chat.err == nil }

// Path returns the tokenizer.json file the tokenizer was loaded from ("tokenizer.json"
// for LoadBytes).
func (t *Tokenizer) Path() string { return t.name }

// WithChatTemplate returns a copy of the tokenizer that uses source as its chat template
// (Jinja, as in tokenizer_config.json). The template is compiled on first use.
func (t *Tokenizer) WithChatTemplate(source string) *Tokenizer {
	c := *t
	c.chat = &chatTemplate{source: source, origin: "chat template"}
	return &c
}

// strftimeClock is the clock of the templates' strftime_now; tests replace it.
var strftimeClock = time.Now

// ApplyChatTemplate renders a conversation with the tokenizer's chat template, as
// transformers' apply_chat_template(messages, tokenize=False, add_generation_prompt=...)
// does: the Jinja environment has trim_blocks and lstrip_blocks, loop controls,
// transformers' tojson filter, raise_exception and strftime_now; the template sees
// messages (a list of {"role", "content"}), add_generation_prompt, tools and documents
// (none), and bos_token, eos_token, pad_token and unk_token where the tokenizer has them
// (undefined where it has not).
//
// A template that calls raise_exception gives an error wrapping a *TemplateError.
// Rendering uses github.com/ardanlabs/jinja; see chat_test.go for what is held to
// Python's Jinja2 and the few constructs known to differ. Templates are untrusted and
// render in a sandbox: one that goes past its limits (MaxTemplateRange,
// MaxTemplateOutput, MaxTemplateSteps, MaxTemplateTime) gives an error wrapping
// ErrTemplateLimit.
func (t *Tokenizer) ApplyChatTemplate(msgs []Message, addGenerationPrompt bool) (string, error) {
	return t.ApplyChatTemplateContext(context.Background(), msgs, addGenerationPrompt)
}

// ApplyChatTemplateContext is ApplyChatTemplate that stops, with an error wrapping
// ctx.Err(), when ctx is done.
func (t *Tokenizer) ApplyChatTemplateContext(ctx context.Context, msgs []Message, addGenerationPrompt bool) (string, error) {
	if t.chat == nil {
		return "", fmt.Errorf("%s: no chat template (tokenizer_config.json beside it has no chat_template and there is no %s)", t.name, chatTemplateFile)
	}
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("%s: chat template: %w", t.chat.origin, err)
	}
	tmpl, err := t.chat.compiled()
	if err != nil {
		return "", err
	}
	return t.chat.render(ctx, tmpl, t.chatVars(msgs, addGenerationPrompt))
}

// chatVars builds the variables transformers passes to a chat template.
func (t *Tokenizer) chatVars(msgs []Message, addGenerationPrompt bool) map[string]jinja.Value {
	list := make([]jinja.Value, len(msgs))
	for i, m := range msgs {
		d := jinja.NewDict()
		d.AsDict().Set("role", jinja.NewString(m.Role)) // insertion order, as the Python dicts
		d.AsDict().Set("content", jinja.NewString(m.Content))
		list[i] = d
	}
	vars := map[string]jinja.Value{
		"messages":              jinja.NewList(list),
		"add_generation_prompt": jinja.NewBool(addGenerationPrompt),
		"tools":                 jinja.None(),
		"documents":             jinja.None(),
	}
	for _, s := range []struct{ name, tok string }{
		{"bos_token", t.bos}, {"eos_token", t.eos}, {"pad_token", t.pad}, {"unk_token", t.unk},
	} {
		if s.tok != "" {
			vars[s.name] = jinja.NewString(s.tok)
		}
	}
	return vars
}

// render runs a compiled template with the given variables plus the globals that
// transformers adds, in the sandbox, turning raise_exception, the sandbox's limits and
// engine panics into errors.
func (c *chatTemplate) render(ctx context.Context, tmpl *jinja.Template, vars map[string]jinja.Value) (out string, err error) {
	var raised *TemplateError
	vars["raise_exception"] = jinja.NewCallable("raise_exception", func(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
		msg := ""
		if len(args) > 0 {
			msg = printed(args[0])
		}
		raised = &TemplateError{Template: c.origin, Message: msg}
		return jinja.Undefined(), raised
	})
	vars["strftime_now"] = jinja.NewCallable("strftime_now", func(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
		if len(args) != 1 || !args[0].IsString() {
			return jinja.Undefined(), errors.New("strftime_now: want one format string")
		}
		return jinja.NewString(strftime(strftimeClock(), args[0].AsString())), nil
	})
	sb := newSandbox(ctx, vars)
	sb.install(vars, c.guards)
	defer func() {
		if r := recover(); r != nil { // defensive: an engine bug must not crash the caller
			out, err = "", fmt.Errorf("%s: chat template: internal error in the template engine: %v", c.origin, r)
		}
	}()
	out, err = tmpl.RenderValues(vars)
	switch {
	case sb.err != nil && errors.Is(sb.err, ErrTemplateLimit):
		return "", fmt.Errorf("%s: %w", c.origin, sb.err)
	case sb.err != nil:
		return "", fmt.Errorf("%s: chat template: %w", c.origin, sb.err)
	case raised != nil:
		return "", raised
	case err != nil:
		return "", fmt.Errorf("%s: chat template: %w", c.origin, err)
	case int64(len(out)) > sb.limit:
		return "", fmt.Errorf("%s: %w: writes %d bytes; the limit is %d", c.origin, ErrTemplateLimit, len(out), sb.limit)
	}
	return out, nil
}

// printed is a value as {{ v }} prints it (String gives a string's repr).
func printed(v jinja.Value) string {
	if v.IsString() {
		return v.AsString()
	}
	return v.String()
}

// strftime formats tm with a Python strftime format (the directives of C89 plus glibc's
// "-" flag for no padding, which Llama 3.x templates use).
func strftime(tm time.Time, format string) string {
	var b strings.Builder
	for i := 0; i < len(format); i++ {
		c := format[i]
		if c != '%' || i+1 == len(format) {
			b.WriteByte(c)
			continue
		}
		i++
		pad := true
		if format[i] == '-' && i+1 < len(format) {
			pad = false
			i++
		}
		num := func(n, width int) {
			if pad {
				fmt.Fprintf(&b, "%0*d", width, n)
			} else {
				fmt.Fprintf(&b, "%d", n)
			}
		}
		switch format[i] {
		case 'Y':
			num(tm.Year(), 4)
		case 'y':
			num(tm.Year()%100, 2)
		case 'm':
			num(int(tm.Month()), 2)
		case 'd':
			num(tm.Day(), 2)
		case 'e':
			fmt.Fprintf(&b, "%2d", tm.Day())
		case 'j':
			num(tm.YearDay(), 3)
		case 'H':
			num(tm.Hour(), 2)
		case 'I':
			num((tm.Hour()+11)%12+1, 2)
		case 'M':
			num(tm.Minute(), 2)
		case 'S':
			num(tm.Second(), 2)
		case 'f':
			fmt.Fprintf(&b, "%06d", tm.Nanosecond()/1000)
		case 'p':
			b.WriteString(tm.Format("PM"))
		case 'B':
			b.WriteString(tm.Month().String())
		case 'b', 'h':
			b.WriteString(tm.Month().String()[:3])
		case 'A':
			b.WriteString(tm.Weekday().String())
		case 'a':
			b.WriteString(tm.Weekday().String()[:3])
		case 'w':
			num(int(tm.Weekday()), 1)
		case 'Z':
			b.WriteString(tm.Format("MST"))
		case 'z':
			b.WriteString(tm.Format("-0700"))
		case 'F':
			b.WriteString(tm.Format("2006-01-02"))
		case 'T':
			b.WriteString(tm.Format("15:04:05"))
		case '%':
			b.WriteByte('%')
		default:
			b.WriteByte('%')
			if !pad {
				b.WriteByte('-')
			}
			b.WriteByte(format[i])
		}
	}
	return b.String()
}

// RenderConversation renders a (prompt, completion) conversation to text the way TRL's
// data_utils.apply_chat_template does for prompt-completion and preference examples:
//
//   - the prompt is rendered alone, with the generation prompt when its last message is
//     from "user" or "tool", or continuing its final message (transformers'
//     continue_final_message) when that is from "assistant"; another last role is an
//     error;
//   - prompt and completion are rendered together, without the generation prompt;
//   - the prompt text becomes the longest common prefix (in code points) of the two, and
//     the completion text is the rest of the joint rendering. For most templates the
//     prompt is a prefix already; templates whose generation prompt differs from what
//     they render before an assistant turn (DeepSeek-R1's "<think>\n") lose that part
//     from the prompt, as in TRL.
//
// For a preference pair TRL narrows the prompt by chosen first and then by rejected, and
// cuts rejected after the twice-narrowed prompt, so its rejected text can start earlier
// than RenderConversation(prompt, rejected)'s when the two narrowings differ; for
// templates that render the prompt as a prefix of both (nearly all) they agree.
//
// Training and scoring use EncodeConversation, which follows TRL's DPOTrainer instead
// (token ids, no common-prefix step).
func (t *Tokenizer) RenderConversation(prompt, completion []Message) (promptText, completionText string, err error) {
	if len(prompt) == 0 {
		return "", "", errors.New("tokenize: conversation has no prompt messages")
	}
	var p string
	switch last := prompt[len(prompt)-1].Role; last {
	case "user", "tool":
		p, err = t.ApplyChatTemplate(prompt, true)
	case "assistant":
		p, err = t.continueFinalMessage(context.Background(), prompt)
	default:
		return "", "", fmt.Errorf("tokenize: the prompt's last message has role %q; want user, tool or assistant", last)
	}
	if err != nil {
		return "", "", err
	}
	joint, err := t.ApplyChatTemplate(slices.Concat(prompt, completion), false)
	if err != nil {
		return "", "", err
	}
	n := commonPrefixLen(p, joint)
	return joint[:n], joint[n:], nil
}

// RenderPrompt renders prompt messages for generation as TRL's maybe_apply_chat_template
// does for a prompt-only example: with the generation prompt when the last message is
// from "user" or "tool", continuing the final message (transformers'
// continue_final_message) when it is from "assistant"; another last role is an error.
func (t *Tokenizer) RenderPrompt(prompt []Message) (string, error) {
	return t.RenderPromptContext(context.Background(), prompt)
}

// RenderPromptContext is RenderPrompt that stops, with an error wrapping ctx.Err(), when
// ctx is done.
func (t *Tokenizer) RenderPromptContext(ctx context.Context, prompt []Message) (string, error) {
	if len(prompt) == 0 {
		return "", errors.New("tokenize: conversation has no prompt messages")
	}
	switch last := prompt[len(prompt)-1].Role; last {
	case "user", "tool":
		return t.ApplyChatTemplateContext(ctx, prompt, true)
	case "assistant":
		return t.continueFinalMessage(ctx, prompt)
	default:
		return "", fmt.Errorf("tokenize: the prompt's last message has role %q; want user, tool or assistant", last)
	}
}

// continueFinalMessage renders msgs without the generation prompt and cuts the text after
// the final message's content, as transformers' continue_final_message=True.
func (t *Tokenizer) continueFinalMessage(ctx context.Context, msgs []Message) (string, error) {
	s, err := t.ApplyChatTemplateContext(ctx, msgs, false)
	if err != nil {
		return "", err
	}
	final := msgs[len(msgs)-1].Content
	trimmed := strings.TrimFunc(final, unicode.IsSpace)
	loc := strings.LastIndex(s, trimmed)
	if loc < 0 {
		return "", fmt.Errorf("%s: continuing the final message: its content does not appear in the rendered chat (the template changes it)", t.chat.origin)
	}
	lead := strings.TrimLeftFunc(final, unicode.IsSpace)
	if end := loc + len(lead); end <= len(s) && s[loc:end] == final {
		return s[:end], nil
	}
	return s[:loc+len(trimmed)], nil
}

// commonPrefixLen is the byte length of the longest common prefix of a and b that ends on
// a code point boundary (Python compares strings by code point).
func commonPrefixLen(a, b string) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	if n == len(a) || n == len(b) {
		return n
	}
	for n > 0 && !isRuneStart(a[n]) { // a[n] differs; back off to the start of its code point
		n--
	}
	return n
}

func isRuneStart(c byte) bool { return c&0xC0 != 0x80 }

// EncodeConversation encodes a conversational (prompt, completion) pair as TRL v1.x's
// DPOTrainer does for conversational data:
//
//   - the prompt ids are the tokenized rendering of the prompt messages with the
//     generation prompt;
//   - the joint ids are the tokenized rendering of prompt+completion messages without it;
//   - both renderings are tokenized without adding special tokens (transformers'
//     apply_chat_template(tokenize=True) passes add_special_tokens=False: the template
//     writes BOS itself where the model wants it), and no EOS is appended (the template
//     ends the assistant turn);
//   - the completion is the joint ids after the first len(prompt ids); when the prompt ids
//     are not a prefix of the joint ids (the template renders the prompt differently
//     before an assistant turn, or a token spans the boundary) Encoded.BoundaryMismatch is
//     set and the boundary stays at len(prompt ids), as TRL does (it only warns).
//
// o.AppendEOS and o.AddSpecialTokens are not used; MaxLength and Truncation apply as in
// EncodePromptCompletion.
func (t *Tokenizer) EncodeConversation(prompt, completion []Message, o PairOptions) (Encoded, error) {
	return t.EncodeConversationContext(context.Background(), prompt, completion, o)
}

// EncodeConversationContext is EncodeConversation that stops, with an error wrapping
// ctx.Err(), when ctx is done.
func (t *Tokenizer) EncodeConversationContext(ctx context.Context, prompt, completion []Message, o PairOptions) (Encoded, error) {
	if err := o.check(); err != nil {
		return Encoded{}, err
	}
	if len(completion) == 0 {
		return Encoded{}, fmt.Errorf("%w (conversation has no completion messages)", ErrEmptyCompletion)
	}
	promptText, err := t.ApplyChatTemplateContext(ctx, prompt, true)
	if err != nil {
		return Encoded{}, err
	}
	jointText, err := t.ApplyChatTemplateContext(ctx, slices.Concat(prompt, completion), false)
	if err != nil {
		return Encoded{}, err
	}
	promptIDs, err := t.Encode(promptText, false)
	if err != nil {
		return Encoded{}, err
	}
	joint, err := t.Encode(jointText, false)
	if err != nil {
		return Encoded{}, err
	}
	e := Encoded{CompletionStart: len(promptIDs)}
	if len(joint) < len(promptIDs) || !slices.Equal(joint[:len(promptIDs)], promptIDs) {
		e.BoundaryMismatch = true
	}
	e.CompletionStart = min(e.CompletionStart, len(joint))
	e.IDs = make([]int64, len(joint))
	for i, id := range joint {
		e.IDs[i] = int64(id)
	}
	return e.truncate(o)
}
