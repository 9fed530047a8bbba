package data

import (
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"
)

// Message is one turn of a conversation.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// Example is one row of a dataset: a preference pair, a prompt and its
// completion, a conversation, a text or a prompt alone.
//
// Which fields are set depends on the dataset's [Layout] (and on
// [Options.Use]: a column the use does not need is not read):
//   - Standard and ImplicitPrompt: Prompt, Chosen and Rejected. Chosen and
//     Rejected hold only the completions (the prompt is split off for
//     ImplicitPrompt).
//   - Conversational: PromptMessages, ChosenMessages and RejectedMessages;
//     Prompt also holds the file's prompt when it was a plain string.
//   - Tokenized: PromptIDs, ChosenIDs and RejectedIDs.
//   - PromptCompletion: Prompt and Completion.
//   - ConversationalPromptCompletion: PromptMessages and CompletionMessages.
//   - TokenizedPromptCompletion: PromptIDs and CompletionIDs.
//   - LanguageModeling: Text.
//   - ConversationalLanguageModeling: Messages.
//   - PromptOnly: Prompt; ConversationalPromptOnly: PromptMessages;
//     TokenizedPromptOnly: PromptIDs.
//
// The pointer fields are nil when the column is absent or the value is null.
type Example struct {
	Row int64 // 0-based row index in the file (line index for JSONL)

	Prompt, Chosen, Rejected string

	PromptMessages, ChosenMessages, RejectedMessages []Message

	PromptIDs, ChosenIDs, RejectedIDs []int64

	Completion         string    // prompt-completion layouts
	CompletionMessages []Message // conversational prompt-completion
	CompletionIDs      []int64   // pre-tokenized prompt-completion
	Text               string    // language modeling
	Messages           []Message // conversational language modeling

	RefChosenLogps, RefRejectedLogps *float64
	Margin                           *float64

	// Label is an unpaired row's label (true: the completion is desirable), read with
	// [UseUnpaired]; nil otherwise.
	Label *bool
}

// Layout is the shape of a dataset.
type Layout int

// The layouts, with TRL's column names; see the package documentation. The
// first four are preference layouts.
const (
	Standard Layout = iota
	ImplicitPrompt
	Conversational
	Tokenized

	PromptCompletion               // prompt, completion: strings
	ConversationalPromptCompletion // prompt, completion: message lists
	TokenizedPromptCompletion      // prompt_input_ids, completion_input_ids
	LanguageModeling               // text: a string
	ConversationalLanguageModeling // messages: a message list
	PromptOnly                     // prompt: a string
	ConversationalPromptOnly       // prompt: a message list
	TokenizedPromptOnly            // prompt_input_ids
)

// IsPreference reports whether l is a preference layout (chosen and rejected).
func (l Layout) IsPreference() bool { return l <= Tokenized }

// IsConversational reports whether l holds messages, which a chat template
// renders.
func (l Layout) IsConversational() bool {
	switch l {
	case Conversational, ConversationalPromptCompletion, ConversationalLanguageModeling, ConversationalPromptOnly:
		return true
	}
	return false
}

// IsTokenized reports whether l holds token ids (no tokenizer is needed).
func (l Layout) IsTokenized() bool {
	return l == Tokenized || l == TokenizedPromptCompletion || l == TokenizedPromptOnly
}

// String returns the layout's name as used in messages.
func (l Layout) String() string {
	switch l {
	case Standard:
		return "standard"
	case ImplicitPrompt:
		return "implicit prompt"
	case Conversational:
		return "conversational"
	case Tokenized:
		return "pre-tokenized"
	case PromptCompletion:
		return "prompt-completion"
	case ConversationalPromptCompletion:
		return "conversational prompt-completion"
	case TokenizedPromptCompletion:
		return "pre-tokenized prompt-completion"
	case LanguageModeling:
		return "language modeling"
	case ConversationalLanguageModeling:
		return "conversational language modeling"
	case PromptOnly:
		return "prompt-only"
	case ConversationalPromptOnly:
		return "conversational prompt-only"
	case TokenizedPromptOnly:
		return "pre-tokenized prompt-only"
	}
	return fmt.Sprintf("Layout(%d)", int(l))
}

// Canonical field names (TRL's column names). They are the keys of
// [Options.Columns].
const (
	FieldPrompt           = "prompt"
	FieldChosen           = "chosen"
	FieldRejected         = "rejected"
	FieldPromptIDs        = "prompt_input_ids"
	FieldChosenIDs        = "chosen_input_ids"
	FieldRejectedIDs      = "rejected_input_ids"
	FieldMargin           = "margin"
	FieldRefChosenLogps   = "ref_chosen_logps"
	FieldRefRejectedLogps = "ref_rejected_logps"
	FieldCompletion       = "completion"
	FieldCompletionIDs    = "completion_input_ids"
	FieldText             = "text"
	FieldMessages         = "messages"
	FieldLabel            = "label"
)

// preferenceFields are the fields of the preference layouts, the only ones
// [UsePreference] looks at.
var preferenceFields = []string{
	FieldPrompt, FieldChosen, FieldRejected,
	FieldPromptIDs, FieldChosenIDs, FieldRejectedIDs,
	FieldMargin, FieldRefChosenLogps, FieldRefRejectedLogps,
}

var canonicalFields = append(preferenceFields[:len(preferenceFields):len(preferenceFields)],
	FieldCompletion, FieldCompletionIDs, FieldText, FieldMessages, FieldLabel)

// Use says what a caller reads a dataset for; it decides which layouts
// [Open] accepts and which columns it reads (see the package documentation).
type Use int

const (
	// UsePreference reads preference pairs (DPO, scoring): the Standard,
	// ImplicitPrompt, Conversational and Tokenized layouts. The zero value.
	UsePreference Use = iota
	// UseSFT reads one sequence a row for supervised fine-tuning: the
	// prompt-completion and language-modeling layouts, or a preference
	// dataset, whose chosen side is the completion (rejected is then read
	// when present but may be null or absent where the prompt does not
	// depend on it).
	UseSFT
	// UsePrompts reads prompts alone (generation): the prompt-only layouts,
	// or the prompt of any prompt-completion or preference dataset.
	UsePrompts
	// UseUnpaired reads unpaired preference rows (KTO): a prompt-completion
	// layout with a boolean label, or a preference dataset, which its reader
	// unpairs (see [Unpair]).
	UseUnpaired
)

// String names the use for messages.
func (u Use) String() string {
	switch u {
	case UsePreference:
		return "preference pairs"
	case UseSFT:
		return "supervised fine-tuning"
	case UsePrompts:
		return "prompts"
	case UseUnpaired:
		return "unpaired preference rows"
	}
	return fmt.Sprintf("Use(%d)", int(u))
}

// Options controls how a dataset is read.
type Options struct {
	// Columns maps canonical field names (prompt, chosen, rejected,
	// prompt_input_ids, chosen_input_ids, rejected_input_ids, margin,
	// ref_chosen_logps, ref_rejected_logps, completion,
	// completion_input_ids, text, messages) to the file's column names,
	// e.g. {"prompt": "question", "chosen": "good", "rejected": "bad"}.
	// Unmapped fields use their canonical name.
	Columns map[string]string

	// Use says what the dataset is read for; the zero value reads
	// preference pairs.
	Use Use

	// Strict makes a null required value (prompt, chosen, completion, ...)
	// an error (a [*RowError]) instead of a skipped row.
	Strict bool
}

// ParseColumns parses a column mapping of the form
// "prompt=question,chosen=good,rejected=bad" into an [Options.Columns] map.
// Its errors name no command-line flag; the caller adds its own.
func ParseColumns(s string) (map[string]string, error) {
	m := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return m, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" || v == "" {
			return nil, fmt.Errorf("%q is not FIELD=COLUMN", kv)
		}
		if !slices.Contains(canonicalFields, k) {
			return nil, fmt.Errorf("unknown field %q (fields: %s)", k, strings.Join(canonicalFields, ", "))
		}
		if _, dup := m[k]; dup {
			return nil, fmt.Errorf("field %q given twice", k)
		}
		m[k] = v
	}
	return m, nil
}

// resolveColumns returns canonical field -> column name, validating the keys.
func resolveColumns(o Options) (map[string]string, error) {
	names := make(map[string]string, len(canonicalFields))
	for _, f := range canonicalFields {
		names[f] = f
	}
	for k, v := range o.Columns {
		if !slices.Contains(canonicalFields, k) {
			return nil, fmt.Errorf("column mapping: unknown field %q (fields: %s)", k, strings.Join(canonicalFields, ", "))
		}
		if v == "" {
			return nil, fmt.Errorf("column mapping: empty column name for field %q", k)
		}
		names[k] = v
	}
	return names, nil
}

// Reasons a row is skipped, for [SkippedRow.Reason].
const (
	ReasonNull            = "null"                 // a required value is null (or holds a null message or id)
	ReasonEmptyList       = "empty list"           // a message or token id list is empty
	ReasonEmptyCompletion = "empty completion"     // a completion is the empty string
	ReasonNoTokens        = "no completion tokens" // the completion encodes to no token
	ReasonEmptyText       = "empty text"           // a language-modeling text is the empty string
	ReasonNoAssistant     = "no assistant message" // a conversation has no assistant turn to learn
	ReasonEmptyPrompt     = "empty prompt"         // a prompt to generate from has no token
)

// SkippedRow is a row left out because a required value cannot be used:
// this package reports null values (Reason [ReasonNull]); encoders report
// rows whose content cannot be encoded with the other reasons.
type SkippedRow struct {
	Row    int64  // 0-based row index in the file
	Column string // the file's column, with a message or list index when the null is inside a list, e.g. "chosen[1].content"
	Reason string // one of the Reason constants; empty reads as ReasonNull
}

func (s SkippedRow) reason() string {
	if s.Reason == "" {
		return ReasonNull
	}
	return s.Reason
}

// String formats the skipped row for a warning, e.g.
// `row 99: empty list in column "chosen"`.
func (s SkippedRow) String() string {
	return fmt.Sprintf("row %d: %s in column %q", s.Row, s.reason(), s.Column)
}

// RowError is the error for a row that would otherwise be skipped, returned
// (possibly wrapped) in strict mode ([Options.Strict] here, and by encoders
// that are asked not to skip). It names the file, row and column.
type RowError struct {
	Path string
	Line int // 1-based line of a JSON Lines record; 0 otherwise
	SkippedRow
}

func (e *RowError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s: line %d (row %d): %s in key %q", e.Path, e.Line, e.Row, e.reason(), e.Column)
	}
	return fmt.Sprintf("%s: %s", e.Path, e.SkippedRow)
}

// assistantMarker separates turns in Anthropic HH-RLHF transcripts.
const assistantMarker = "\n\nAssistant:"

// SplitImplicitPrompt splits the prompt off two completions that share it,
// returning the prompt and the remaining completions.
//
// The rule: let P be the longest common prefix of chosen and rejected (cut at
// a UTF-8 character boundary). If P contains "\n\nAssistant:" (the Anthropic
// HH-RLHF transcript format), the prompt is P up to and including the last
// such marker, so the completions start with the space after it. Otherwise
// the prompt is P, except that a space ending P is left to the completions
// (TRL's extract_prompt rule).
func SplitImplicitPrompt(chosen, rejected string) (prompt, chosenRest, rejectedRest string) {
	n := 0
	for n < len(chosen) && n < len(rejected) && chosen[n] == rejected[n] {
		n++
	}
	for n > 0 && n < len(chosen) && !utf8.RuneStart(chosen[n]) {
		n--
	}
	p := chosen[:n]
	if i := strings.LastIndex(p, assistantMarker); i >= 0 {
		n = i + len(assistantMarker)
	} else if strings.HasSuffix(p, " ") {
		n--
	}
	return chosen[:n], chosen[n:], rejected[n:]
}

// SplitConversation separates the prompt messages from chosen and rejected
// message lists.
//
//   - If promptMsgs is non-empty it is the prompt; when both chosen and
//     rejected repeat it as their leading messages, those are removed.
//   - Otherwise the prompt is the leading messages shared by chosen and
//     rejected (never their last message), and chosen and rejected keep the
//     rest; this is UltraFeedback-binarized, where chosen and rejected repeat
//     the user turn. If they share nothing and promptText is not empty, the
//     prompt is a single user message holding promptText.
func SplitConversation(promptText string, promptMsgs, chosen, rejected []Message) (prompt, chosenRest, rejectedRest []Message) {
	if len(promptMsgs) > 0 {
		n := len(promptMsgs)
		if len(chosen) > n && len(rejected) > n &&
			slices.Equal(chosen[:n], promptMsgs) && slices.Equal(rejected[:n], promptMsgs) {
			return promptMsgs, chosen[n:], rejected[n:]
		}
		return promptMsgs, chosen, rejected
	}
	n := 0
	for n < len(chosen)-1 && n < len(rejected)-1 && chosen[n] == rejected[n] {
		n++
	}
	if n == 0 && promptText != "" {
		return []Message{{Role: "user", Content: promptText}}, chosen, rejected
	}
	return chosen[:n:n], chosen[n:], rejected[n:]
}
