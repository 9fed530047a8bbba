package encode

import (
	"context"
	"errors"
	"fmt"

	"ortalign/data"
	"ortalign/pipeline/lm"
	"ortalign/tokenize"
)

// EncodedPair is a preference pair ready for the model: chosen and rejected token
// sequences (prompt included) and, when the dataset supplies them, reference log-probs.
type EncodedPair struct {
	Index            int   // position among the dataset's kept rows, i.e. output order
	Row              int64 // row in the source file
	Chosen, Rejected lm.Sequence
	RefChosenLogps   *float64
	RefRejectedLogps *float64
	// Margin is the dataset's margin column (reward modelling), nil where it has none.
	Margin *float64
}

// EncodeConfig controls how text examples become token sequences (TRL v1.x semantics).
type EncodeConfig struct {
	MaxLength  int    // 0 means no limit
	Truncation string // "keep_start" or "keep_end"

	// Strict makes a row that cannot be used (see EncodeStats.Skipped) an error, a
	// *data.RowError naming the file, row and column, instead of a skipped row.
	Strict bool

	// Columns maps canonical field names to the file's column names, for messages (as
	// data.Dataset.Columns); unmapped fields are named canonically.
	Columns map[string]string

	// PromptSpecialTokens makes EncodePrompts add the tokenizer's special tokens (e.g.
	// BOS) to text prompts; TRL's generation trainers do not (add_special_tokens=False).
	PromptSpecialTokens bool
}

// EncodeStats counts what encoding dropped, skipped or noticed.
type EncodeStats struct {
	Dropped     int     // examples whose prompt alone fills MaxLength
	DroppedRows []int64 // their rows in the file

	// Skipped lists the rows left out because their content cannot be used, one entry a
	// row: an empty message or token id list (data.ReasonEmptyList), an empty completion
	// string (data.ReasonEmptyCompletion), or a completion that encodes to no token
	// (data.ReasonNoTokens). Column is the file's column (chosen before rejected).
	Skipped []data.SkippedRow

	BoundaryMismatches int // prompt ids not a prefix of prompt+completion ids
	Truncated          int // pairs with at least one truncated sequence
}

// CheckEncodable returns the errors of EncodePairs (and EncodeSequences) that are not
// about one row: a text layout without a tokenizer, a conversational dataset whose
// tokenizer has no chat template, a text one (standard, implicit prompt,
// prompt-completion, language modeling) whose tokenizer has no EOS token (it ends every
// completion). Callers may call it before any row is read.
func CheckEncodable(path string, layout data.Layout, tok *tokenize.Tokenizer) error {
	if layout.IsTokenized() {
		return nil
	}
	if tok == nil {
		return fmt.Errorf("%s: the %s layout holds text: a tokenizer is needed", path, layout)
	}
	if layout.IsConversational() {
		if !tok.HasChatTemplate() {
			return fmt.Errorf("conversational dataset %s needs a chat template: tokenizer_config.json next to %s has none; add one or pre-render the text", path, tok.Path())
		}
		return nil
	}
	if _, ok := tok.EOS(); !ok {
		return fmt.Errorf("%s: the tokenizer %s has no EOS token, which ends every completion of the %s layout (add eos_token to tokenizer_config.json)", path, tok.Path(), layout)
	}
	return nil
}

// EncodePairs turns dataset examples into token sequences. Text layouts need tok;
// pre-tokenized ones do not. Pairs whose prompt fills MaxLength are dropped and counted;
// rows that cannot be used (empty lists, empty completions, completions with no token)
// are skipped and listed in EncodeStats.Skipped, or are a *data.RowError with
// cfg.Strict. Ids are checked against vocab (the model's vocabulary size) when vocab > 0:
// an id outside it is an error, not a skip (the tokenizer or data does not fit the
// model). Other encoding errors (e.g. a chat template that refuses a conversation) are
// errors naming the row.
func EncodePairs(path string, layout data.Layout, examples []data.Example, tok *tokenize.Tokenizer, cfg EncodeConfig, vocab int64) ([]EncodedPair, EncodeStats, error) {
	return EncodePairsContext(context.Background(), path, layout, examples, tok, cfg, vocab)
}

// EncodePairsContext is EncodePairs stopping, with ctx's error, when ctx is done: between
// rows and inside a chat template's rendering.
func EncodePairsContext(ctx context.Context, path string, layout data.Layout, examples []data.Example, tok *tokenize.Tokenizer, cfg EncodeConfig, vocab int64) ([]EncodedPair, EncodeStats, error) {
	var stats EncodeStats
	if err := CheckEncodable(path, layout, tok); err != nil {
		return nil, stats, err
	}
	if err := CheckTokenizerFits(tok, vocab); err != nil {
		return nil, stats, err
	}
	column := func(field string) string {
		if c, ok := cfg.Columns[field]; ok && c != "" {
			return c
		}
		return field
	}
	chosenField, rejectedField := data.FieldChosen, data.FieldRejected
	if layout == data.Tokenized {
		chosenField, rejectedField = data.FieldChosenIDs, data.FieldRejectedIDs
	}
	opts := tokenize.PairOptions{MaxLength: cfg.MaxLength, Truncation: cfg.Truncation, AppendEOS: true}
	// encode encodes one completion of ex (chosen when first).
	encode := func(ex *data.Example, first bool) (tokenize.Encoded, error) {
		switch layout {
		case data.Tokenized:
			c := ex.RejectedIDs
			if first {
				c = ex.ChosenIDs
			}
			return tokenize.EncodeIDsPair(ex.PromptIDs, c, opts)
		case data.Conversational:
			// TRL v1.x: the chat template renders the turns, ends the assistant turn and
			// writes BOS where the model wants it (see tokenize.EncodeConversation).
			c := ex.RejectedMessages
			if first {
				c = ex.ChosenMessages
			}
			return tok.EncodeConversationContext(ctx, chatMessages(ex.PromptMessages), chatMessages(c), opts)
		default:
			c := ex.Rejected
			if first {
				c = ex.Chosen
			}
			return tok.EncodePromptCompletion(ex.Prompt, c, opts)
		}
	}
	pairs := make([]EncodedPair, 0, len(examples))
	for i := range examples {
		if err := ctx.Err(); err != nil {
			return nil, stats, err
		}
		ex := &examples[i]
		skip := func(field, reason string) error {
			s := data.SkippedRow{Row: ex.Row, Column: column(field), Reason: reason}
			if cfg.Strict {
				return &data.RowError{Path: path, SkippedRow: s}
			}
			stats.Skipped = append(stats.Skipped, s)
			return nil
		}
		if field, reason := unusable(layout, ex); reason != "" {
			if err := skip(field, reason); err != nil {
				return nil, stats, err
			}
			continue
		}
		var seqs [2]tokenize.Encoded
		var err error
		var failed string // the field whose encoding failed
		for k, field := range []string{chosenField, rejectedField} {
			if seqs[k], err = encode(ex, k == 0); err != nil {
				failed = field
				break
			}
		}
		if errors.Is(err, tokenize.ErrPromptTooLong) {
			stats.Dropped++
			stats.DroppedRows = append(stats.DroppedRows, ex.Row)
			continue
		}
		if errors.Is(err, tokenize.ErrEmptyCompletion) {
			if err := skip(failed, data.ReasonNoTokens); err != nil {
				return nil, stats, err
			}
			continue
		}
		if err != nil {
			if ctxErr := ctx.Err(); ctxErr != nil {
				return nil, stats, ctxErr
			}
			return nil, stats, fmt.Errorf("%s: row %d: column %q: %w", path, ex.Row, column(failed), err)
		}
		chosen, rejected := seqs[0], seqs[1]
		if chosen.BoundaryMismatch || rejected.BoundaryMismatch {
			stats.BoundaryMismatches++
		}
		if chosen.Truncated || rejected.Truncated {
			stats.Truncated++
		}
		p := EncodedPair{
			Index: len(pairs), Row: ex.Row,
			Chosen:           lm.Sequence{IDs: chosen.IDs, CompletionStart: chosen.CompletionStart},
			Rejected:         lm.Sequence{IDs: rejected.IDs, CompletionStart: rejected.CompletionStart},
			RefChosenLogps:   ex.RefChosenLogps,
			RefRejectedLogps: ex.RefRejectedLogps,
			Margin:           ex.Margin,
		}
		if vocab > 0 {
			for _, c := range []struct {
				name string
				seq  lm.Sequence
			}{{"chosen", p.Chosen}, {"rejected", p.Rejected}} {
				for _, id := range c.seq.IDs {
					if id < 0 || id >= vocab {
						return nil, stats, fmt.Errorf("%s: row %d: %s token id %d outside the model's vocabulary [0, %d)", path, ex.Row, c.name, id, vocab)
					}
				}
			}
		}
		pairs = append(pairs, p)
	}
	return pairs, stats, nil
}

// unusable returns the canonical field and the reason (a data.Reason constant) when a
// completion of ex is empty, or "" when both have content. Empty prompts are allowed.
func unusable(layout data.Layout, ex *data.Example) (field, reason string) {
	switch layout {
	case data.Tokenized:
		if len(ex.ChosenIDs) == 0 {
			return data.FieldChosenIDs, data.ReasonEmptyList
		}
		if len(ex.RejectedIDs) == 0 {
			return data.FieldRejectedIDs, data.ReasonEmptyList
		}
	case data.Conversational:
		if len(ex.ChosenMessages) == 0 {
			return data.FieldChosen, data.ReasonEmptyList
		}
		if len(ex.RejectedMessages) == 0 {
			return data.FieldRejected, data.ReasonEmptyList
		}
	default:
		if ex.Chosen == "" {
			return data.FieldChosen, data.ReasonEmptyCompletion
		}
		if ex.Rejected == "" {
			return data.FieldRejected, data.ReasonEmptyCompletion
		}
	}
	return "", ""
}

// chatMessages converts dataset messages to the tokenizer's.
func chatMessages(msgs []data.Message) []tokenize.Message {
	out := make([]tokenize.Message, len(msgs))
	for i, m := range msgs {
		out[i] = tokenize.Message{Role: m.Role, Content: m.Content}
	}
	return out
}

// CheckTokenizerFits returns an error when the tokenizer can produce ids beyond the
// model's vocabulary (a model may have more rows than the tokenizer has ids, not fewer).
func CheckTokenizerFits(tok *tokenize.Tokenizer, vocab int64) error {
	if tok != nil && vocab > 0 && int64(tok.VocabSize()) > vocab {
		return fmt.Errorf("tokenizer has %d ids but the model's vocabulary has %d: the tokenizer does not fit the model", tok.VocabSize(), vocab)
	}
	return nil
}

// PairRows lays out a batch of pairs as the models see it: the chosen sequences, then
// the rejected ones (row i and row len(pairs)+i are pair i).
func PairRows(pairs []EncodedPair) []lm.Sequence {
	rows := make([]lm.Sequence, 0, 2*len(pairs))
	for _, p := range pairs {
		rows = append(rows, p.Chosen)
	}
	for _, p := range pairs {
		rows = append(rows, p.Rejected)
	}
	return rows
}
