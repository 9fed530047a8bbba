package encode

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"ortalign/data"
	"ortalign/pipeline/lm"
	"ortalign/tokenize"
)

// EncodedSequence is one row ready for supervised fine-tuning: its token ids and the
// tokens whose log-probs are learnt (Sequence.CompletionStart, or Sequence.Mask for a
// conversation's assistant turns).
type EncodedSequence struct {
	Index int   // position among the encoded rows, i.e. output order
	Row   int64 // row in the source file
	lm.Sequence
}

// EncodedPrompt is one prompt ready for generation.
type EncodedPrompt struct {
	Index     int   // position among the encoded rows
	Row       int64 // row in the source file
	IDs       []int64
	Truncated bool // ids were dropped to fit MaxLength
}

// CheckSequencesEncodable returns the errors of EncodeSequences that are not about one
// row (see CheckEncodable, which it is, plus the layouts that hold no completion).
func CheckSequencesEncodable(path string, layout data.Layout, tok *tokenize.Tokenizer) error {
	switch layout {
	case data.PromptOnly, data.ConversationalPromptOnly, data.TokenizedPromptOnly:
		return fmt.Errorf("%s: the %s layout has no completion to learn (read it for supervised fine-tuning: data.UseSFT)", path, layout)
	}
	return CheckEncodable(path, layout, tok)
}

// CheckPromptsEncodable returns the errors of EncodePrompts that are not about one row: a
// text layout without a tokenizer, a conversational one whose tokenizer has no chat
// template, a layout without prompts.
func CheckPromptsEncodable(path string, layout data.Layout, tok *tokenize.Tokenizer) error {
	if layout == data.ConversationalLanguageModeling {
		return fmt.Errorf("%s: the %s layout has no prompt column (read it for prompts: data.UsePrompts)", path, layout)
	}
	if layout.IsTokenized() {
		return nil
	}
	if tok == nil {
		return fmt.Errorf("%s: the %s layout holds text: a tokenizer is needed", path, layout)
	}
	if layout.IsConversational() && !tok.HasChatTemplate() {
		return fmt.Errorf("conversational dataset %s needs a chat template: tokenizer_config.json next to %s has none; add one or pre-render the text", path, tok.Path())
	}
	return nil
}

// EncodeSequences turns dataset examples (read with data.UseSFT) into one token sequence
// a row for supervised fine-tuning, as TRL v1.x's SFTTrainer tokenizes them:
//
//   - PromptCompletion: the prompt and prompt+completion are tokenized with the
//     tokenizer's special tokens (TRL calls the tokenizer with its defaults), the EOS
//     token text is appended to the completion unless it ends with it, and the completion
//     is the joint ids after the prompt's (a prompt whose ids are not a prefix counts in
//     EncodeStats.BoundaryMismatches; the boundary stays at the prompt's length).
//   - ConversationalPromptCompletion: the prompt rendered by the chat template with the
//     generation prompt, and prompt+completion without it, both tokenized without special
//     tokens; no EOS is appended (the template ends the turn).
//   - TokenizedPromptCompletion: prompt_input_ids then completion_input_ids, as they are.
//   - LanguageModeling: the text with EOS appended, tokenized with special tokens; every
//     token is learnt (CompletionStart 0; the first token has no log-prob).
//   - ConversationalLanguageModeling: the messages rendered by the chat template (no
//     generation prompt) and tokenized without special tokens; Sequence.Mask marks the
//     tokens of each assistant turn: for the turn at i, from the length of the ids of
//     messages[:i] rendered with the generation prompt to the length of the ids of
//     messages[:i+1] rendered without it. The span holds the turn's content and what the
//     template writes after it up to the next turn (ChatML: "<|im_end|>\n"), so the model
//     learns to end its turn, and a two-message conversation gives the same ids and
//     learnt tokens as the prompt-completion pair of its messages. TRL learns the whole
//     conversation unless assistant_only_loss is set; with it, TRL takes the spans from
//     the template's {% generation %} blocks, which the templates TRL ships place around
//     the same text. A rendering whose ids are not a prefix of the whole conversation's
//     counts in BoundaryMismatches (the span is still taken by length).
//   - A preference layout: the prompt and the chosen completion, exactly as EncodePairs
//     encodes them (so an SFT then DPO run sees the same chosen sequences).
//
// Sequences longer than cfg.MaxLength are cut as TRL's collator does: keep_start keeps
// the first MaxLength ids, keep_end the last. A row left with no learnt token by the cut
// is dropped and counted (EncodeStats.Dropped). Rows whose content cannot be used are
// skipped and listed in EncodeStats.Skipped (one entry a row, naming the file's column),
// or are a *data.RowError with cfg.Strict: an empty completion string
// (data.ReasonEmptyCompletion), an empty message or id list (data.ReasonEmptyList), an
// empty text (data.ReasonEmptyText), a conversation without an assistant message
// (data.ReasonNoAssistant), a completion that encodes to no token (data.ReasonNoTokens).
// Ids are checked against vocab (the model's vocabulary size) when vocab > 0: an id
// outside it is an error. Other encoding errors (a chat template that refuses a
// conversation) are errors naming the row.
func EncodeSequences(path string, layout data.Layout, examples []data.Example, tok *tokenize.Tokenizer, cfg EncodeConfig, vocab int64) ([]EncodedSequence, EncodeStats, error) {
	return EncodeSequencesContext(context.Background(), path, layout, examples, tok, cfg, vocab)
}

// EncodeSequencesContext is EncodeSequences stopping, with ctx's error, when ctx is done:
// between rows and inside a chat template's rendering.
func EncodeSequencesContext(ctx context.Context, path string, layout data.Layout, examples []data.Example, tok *tokenize.Tokenizer, cfg EncodeConfig, vocab int64) ([]EncodedSequence, EncodeStats, error) {
	var stats EncodeStats
	if err := CheckSequencesEncodable(path, layout, tok); err != nil {
		return nil, stats, err
	}
	if err := CheckTokenizerFits(tok, vocab); err != nil {
		return nil, stats, err
	}
	if err := cfg.checkTruncation(); err != nil {
		return nil, stats, err
	}
	column := cfg.column
	field := sftField(layout)
	pairOpts := tokenize.PairOptions{MaxLength: cfg.MaxLength, Truncation: cfg.Truncation, AppendEOS: true}
	out := make([]EncodedSequence, 0, len(examples))
	for i := range examples {
		if err := ctx.Err(); err != nil {
			return nil, stats, err
		}
		ex := &examples[i]
		skip := func(reason string) error {
			s := data.SkippedRow{Row: ex.Row, Column: column(field), Reason: reason}
			if cfg.Strict {
				return &data.RowError{Path: path, SkippedRow: s}
			}
			stats.Skipped = append(stats.Skipped, s)
			return nil
		}
		if reason := unusableSFT(layout, ex); reason != "" {
			if err := skip(reason); err != nil {
				return nil, stats, err
			}
			continue
		}
		var seq lm.Sequence
		var enc tokenize.Encoded
		var err error
		switch layout {
		case data.ConversationalLanguageModeling:
			seq, err = encodeMessages(ctx, tok, ex.Messages, &stats)
		case data.LanguageModeling:
			seq, err = encodeText(tok, ex.Text)
		default:
			enc, err = encodeSFTPair(ctx, layout, ex, tok, pairOpts)
			seq = lm.Sequence{IDs: enc.IDs, CompletionStart: enc.CompletionStart}
			if enc.BoundaryMismatch {
				stats.BoundaryMismatches++
			}
		}
		if errors.Is(err, tokenize.ErrEmptyCompletion) {
			if err := skip(data.ReasonNoTokens); err != nil {
				return nil, stats, err
			}
			continue
		}
		if err != nil && !errors.Is(err, tokenize.ErrPromptTooLong) {
			if ctxErr := ctx.Err(); ctxErr != nil {
				return nil, stats, ctxErr
			}
			return nil, stats, fmt.Errorf("%s: row %d: column %q: %w", path, ex.Row, column(field), err)
		}
		truncated := enc.Truncated
		if seq.Mask != nil || layout == data.LanguageModeling {
			seq, truncated = cutSequence(seq, cfg.MaxLength, cfg.Truncation)
		}
		if errors.Is(err, tokenize.ErrPromptTooLong) || seq.CompletionTokens() == 0 && truncated {
			stats.Dropped++
			stats.DroppedRows = append(stats.DroppedRows, ex.Row)
			continue
		}
		if seq.CompletionTokens() == 0 {
			if err := skip(data.ReasonNoTokens); err != nil {
				return nil, stats, err
			}
			continue
		}
		if truncated {
			stats.Truncated++
		}
		if err := checkVocab(seq.IDs, vocab); err != nil {
			return nil, stats, fmt.Errorf("%s: row %d: %w", path, ex.Row, err)
		}
		out = append(out, EncodedSequence{Index: len(out), Row: ex.Row, Sequence: seq})
	}
	return out, stats, nil
}

func (cfg EncodeConfig) checkTruncation() error {
	switch cfg.Truncation {
	case "", tokenize.KeepStart, tokenize.KeepEnd:
		return nil
	}
	return fmt.Errorf("truncation %q: want %q or %q", cfg.Truncation, tokenize.KeepStart, tokenize.KeepEnd)
}

// column names a canonical field by the file's column (cfg.Columns), for messages.
func (cfg EncodeConfig) column(field string) string {
	if c, ok := cfg.Columns[field]; ok && c != "" {
		return c
	}
	return field
}

// sftField is the canonical field holding what EncodeSequences learns.
func sftField(layout data.Layout) string {
	switch layout {
	case data.Tokenized:
		return data.FieldChosenIDs
	case data.PromptCompletion, data.ConversationalPromptCompletion:
		return data.FieldCompletion
	case data.TokenizedPromptCompletion:
		return data.FieldCompletionIDs
	case data.LanguageModeling:
		return data.FieldText
	case data.ConversationalLanguageModeling:
		return data.FieldMessages
	}
	return data.FieldChosen
}

// unusableSFT returns the reason (a data.Reason constant) when ex has nothing to learn,
// or "".
func unusableSFT(layout data.Layout, ex *data.Example) string {
	switch layout {
	case data.Tokenized:
		if len(ex.ChosenIDs) == 0 {
			return data.ReasonEmptyList
		}
	case data.Conversational:
		if len(ex.ChosenMessages) == 0 {
			return data.ReasonEmptyList
		}
	case data.Standard, data.ImplicitPrompt:
		if ex.Chosen == "" {
			return data.ReasonEmptyCompletion
		}
	case data.PromptCompletion:
		if ex.Completion == "" {
			return data.ReasonEmptyCompletion
		}
	case data.ConversationalPromptCompletion:
		if len(ex.CompletionMessages) == 0 {
			return data.ReasonEmptyList
		}
	case data.TokenizedPromptCompletion:
		if len(ex.CompletionIDs) == 0 {
			return data.ReasonEmptyList
		}
	case data.LanguageModeling:
		if ex.Text == "" {
			return data.ReasonEmptyText
		}
	case data.ConversationalLanguageModeling:
		if len(ex.Messages) == 0 {
			return data.ReasonEmptyList
		}
		if !slices.ContainsFunc(ex.Messages, func(m data.Message) bool { return m.Role == "assistant" }) {
			return data.ReasonNoAssistant
		}
	}
	return ""
}

// encodeSFTPair encodes a prompt and its completion (the chosen side for preference
// layouts), with truncation.
func encodeSFTPair(ctx context.Context, layout data.Layout, ex *data.Example, tok *tokenize.Tokenizer, o tokenize.PairOptions) (tokenize.Encoded, error) {
	switch layout {
	case data.Tokenized:
		return tokenize.EncodeIDsPair(ex.PromptIDs, ex.ChosenIDs, o)
	case data.TokenizedPromptCompletion:
		return tokenize.EncodeIDsPair(ex.PromptIDs, ex.CompletionIDs, o)
	case data.Conversational:
		return tok.EncodeConversationContext(ctx, chatMessages(ex.PromptMessages), chatMessages(ex.ChosenMessages), o)
	case data.ConversationalPromptCompletion:
		return tok.EncodeConversationContext(ctx, chatMessages(ex.PromptMessages), chatMessages(ex.CompletionMessages), o)
	case data.PromptCompletion:
		o.AddSpecialTokens = true // TRL's SFTTrainer calls the tokenizer with its defaults
		return tok.EncodePromptCompletion(ex.Prompt, ex.Completion, o)
	default: // Standard, ImplicitPrompt: as EncodePairs
		return tok.EncodePromptCompletion(ex.Prompt, ex.Chosen, o)
	}
}

// encodeText tokenizes a language-modeling text with special tokens and the EOS token
// appended (TRL appends its text unless the text ends with it); every token is learnt.
func encodeText(tok *tokenize.Tokenizer, text string) (lm.Sequence, error) {
	eos, ok := tok.EOS()
	if !ok {
		return lm.Sequence{}, errors.New("the tokenizer has no EOS token")
	}
	if !strings.HasSuffix(text, tok.EOSToken()) {
		text += tok.EOSToken()
	}
	ids, err := tok.Encode(text, true)
	if err != nil {
		return lm.Sequence{}, err
	}
	if len(ids) == 0 || ids[len(ids)-1] != eos {
		ids = append(ids, eos) // a post-processor that writes after the text
	}
	return lm.Sequence{IDs: toInt64(ids)}, nil
}

// encodeMessages renders a conversation with the chat template and marks the tokens of
// its assistant turns (see EncodeSequences).
func encodeMessages(ctx context.Context, tok *tokenize.Tokenizer, msgs []data.Message, stats *EncodeStats) (lm.Sequence, error) {
	conv := chatMessages(msgs)
	render := func(n int, gen bool) ([]int, error) {
		text, err := tok.ApplyChatTemplateContext(ctx, conv[:n], gen)
		if err != nil {
			return nil, err
		}
		return tok.Encode(text, false)
	}
	ids, err := render(len(conv), false)
	if err != nil {
		return lm.Sequence{}, err
	}
	mask := make([]bool, len(ids))
	mismatch := false
	for i, m := range conv {
		if m.Role != "assistant" {
			continue
		}
		start := 0
		if i > 0 {
			before, err := render(i, true)
			if err != nil {
				return lm.Sequence{}, err
			}
			start = len(before)
			mismatch = mismatch || !isPrefix(before, ids)
		}
		through, err := render(i+1, false)
		if err != nil {
			return lm.Sequence{}, err
		}
		mismatch = mismatch || !isPrefix(through, ids)
		for t := start; t < min(len(through), len(ids)); t++ {
			mask[t] = true
		}
	}
	if mismatch {
		stats.BoundaryMismatches++
	}
	seq := lm.Sequence{IDs: toInt64(ids), Mask: mask, CompletionStart: len(ids)}
	if k := slices.Index(mask, true); k >= 0 {
		seq.CompletionStart = k
	}
	return seq, nil
}

func isPrefix(p, s []int) bool { return len(p) <= len(s) && slices.Equal(p, s[:len(p)]) }

func toInt64(ids []int) []int64 {
	out := make([]int64, len(ids))
	for i, id := range ids {
		out[i] = int64(id)
	}
	return out
}

// cutSequence cuts s to maxLength ids as TRL's collator does (keep_start keeps the first,
// keep_end the last), keeping its mask and completion start in step.
func cutSequence(s lm.Sequence, maxLength int, truncation string) (lm.Sequence, bool) {
	n := len(s.IDs)
	if maxLength <= 0 || n <= maxLength {
		return s, false
	}
	from, to := 0, maxLength
	if truncation == tokenize.KeepEnd {
		from, to = n-maxLength, n
	}
	s.IDs = s.IDs[from:to]
	if s.Mask != nil {
		s.Mask = s.Mask[from:to]
		s.CompletionStart = len(s.IDs)
		if k := slices.Index(s.Mask, true); k >= 0 {
			s.CompletionStart = k
		}
	} else {
		s.CompletionStart = min(max(0, s.CompletionStart-from), len(s.IDs))
	}
	return s, true
}

func checkVocab(ids []int64, vocab int64) error {
	if vocab <= 0 {
		return nil
	}
	for _, id := range ids {
		if id < 0 || id >= vocab {
			return fmt.Errorf("token id %d outside the model's vocabulary [0, %d)", id, vocab)
		}
	}
	return nil
}

// EncodePrompts tokenizes the prompt of each example (read with data.UsePrompts, or any
// layout with prompts) for generation, as TRL's generation trainers (GRPO, RLOO, online
// DPO) prepare their prompts:
//
//   - message-list prompts are rendered by the chat template with the generation prompt
//     (continuing the final message when it is from the assistant; see
//     tokenize.RenderPrompt) and tokenized without special tokens (the template writes
//     BOS where the model wants it);
//   - text prompts are tokenized as they are, without special tokens
//     (add_special_tokens=False, as those trainers do), unless cfg.PromptSpecialTokens;
//   - pre-tokenized prompts (prompt_input_ids) are taken as they are.
//
// Prompts longer than cfg.MaxLength are cut by cfg.Truncation: keep_end keeps their last
// MaxLength ids (TRL's max_prompt_length does so), keep_start the first. An empty message
// or id list (data.ReasonEmptyList) or a text prompt with no token
// (data.ReasonEmptyPrompt) is skipped and listed in EncodeStats.Skipped, or is a
// *data.RowError with cfg.Strict. Ids are checked against vocab when vocab > 0.
func EncodePrompts(path string, layout data.Layout, examples []data.Example, tok *tokenize.Tokenizer, cfg EncodeConfig, vocab int64) ([]EncodedPrompt, EncodeStats, error) {
	return EncodePromptsContext(context.Background(), path, layout, examples, tok, cfg, vocab)
}

// EncodePromptsContext is EncodePrompts stopping, with ctx's error, when ctx is done:
// between rows and inside a chat template's rendering.
func EncodePromptsContext(ctx context.Context, path string, layout data.Layout, examples []data.Example, tok *tokenize.Tokenizer, cfg EncodeConfig, vocab int64) ([]EncodedPrompt, EncodeStats, error) {
	var stats EncodeStats
	if err := CheckPromptsEncodable(path, layout, tok); err != nil {
		return nil, stats, err
	}
	if err := CheckTokenizerFits(tok, vocab); err != nil {
		return nil, stats, err
	}
	if err := cfg.checkTruncation(); err != nil {
		return nil, stats, err
	}
	field := data.FieldPrompt
	if layout.IsTokenized() {
		field = data.FieldPromptIDs
	}
	out := make([]EncodedPrompt, 0, len(examples))
	for i := range examples {
		if err := ctx.Err(); err != nil {
			return nil, stats, err
		}
		ex := &examples[i]
		skip := func(reason string) error {
			s := data.SkippedRow{Row: ex.Row, Column: cfg.column(field), Reason: reason}
			if cfg.Strict {
				return &data.RowError{Path: path, SkippedRow: s}
			}
			stats.Skipped = append(stats.Skipped, s)
			return nil
		}
		var ids []int64
		switch {
		case layout.IsTokenized():
			if len(ex.PromptIDs) == 0 {
				if err := skip(data.ReasonEmptyList); err != nil {
					return nil, stats, err
				}
				continue
			}
			ids = slices.Clone(ex.PromptIDs)
		case layout.IsConversational():
			if len(ex.PromptMessages) == 0 {
				if err := skip(data.ReasonEmptyList); err != nil {
					return nil, stats, err
				}
				continue
			}
			text, err := tok.RenderPromptContext(ctx, chatMessages(ex.PromptMessages))
			if err != nil {
				if ctxErr := ctx.Err(); ctxErr != nil {
					return nil, stats, ctxErr
				}
				return nil, stats, fmt.Errorf("%s: row %d: column %q: %w", path, ex.Row, cfg.column(field), err)
			}
			enc, err := tok.Encode(text, false)
			if err != nil {
				return nil, stats, fmt.Errorf("%s: row %d: column %q: %w", path, ex.Row, cfg.column(field), err)
			}
			ids = toInt64(enc)
		default:
			enc, err := tok.Encode(ex.Prompt, cfg.PromptSpecialTokens)
			if err != nil {
				return nil, stats, fmt.Errorf("%s: row %d: column %q: %w", path, ex.Row, cfg.column(field), err)
			}
			ids = toInt64(enc)
		}
		if len(ids) == 0 {
			if err := skip(data.ReasonEmptyPrompt); err != nil {
				return nil, stats, err
			}
			continue
		}
		cut, truncated := cutSequence(lm.Sequence{IDs: ids}, cfg.MaxLength, cfg.Truncation)
		if truncated {
			stats.Truncated++
		}
		if err := checkVocab(cut.IDs, vocab); err != nil {
			return nil, stats, fmt.Errorf("%s: row %d: %w", path, ex.Row, err)
		}
		out = append(out, EncodedPrompt{Index: len(out), Row: ex.Row, IDs: cut.IDs, Truncated: truncated})
	}
	return out, stats, nil
}

// SequencesOf returns the sequences of encoded rows, the SFT objective's items.
func SequencesOf(rows []EncodedSequence) []lm.Sequence {
	out := make([]lm.Sequence, len(rows))
	for i, r := range rows {
		out[i] = r.Sequence
	}
	return out
}
