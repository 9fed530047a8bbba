package pipeline

import (
	"errors"
	"fmt"

	"ortalign/data"
	"ortalign/tokenize"
)

// EncodedPair is a preference pair ready for the model: chosen and rejected token
// sequences (prompt included) and, when the dataset supplies them, reference log-probs.
type EncodedPair struct {
	Index            int   // position among the dataset's kept rows, i.e. output order
	Row              int64 // row in the source file
	Chosen, Rejected Sequence
	RefChosenLogps   *float64
	RefRejectedLogps *float64
}

// EncodeConfig controls how text examples become token sequences (TRL v1.x semantics).
type EncodeConfig struct {
	MaxLength  int    // 0 means no limit
	Truncation string // "keep_start" or "keep_end"
}

// EncodeStats counts what encoding dropped or noticed.
type EncodeStats struct {
	Dropped            int     // examples whose prompt alone fills MaxLength
	DroppedRows        []int64 // their rows in the file
	BoundaryMismatches int     // prompt ids not a prefix of prompt+completion ids
	Truncated          int     // pairs with at least one truncated sequence
}

// EncodePairs turns dataset examples into token sequences. Text layouts need tok;
// pre-tokenized ones do not. Pairs whose prompt fills MaxLength are dropped and counted.
// Ids are checked against vocab (the model's vocabulary size) when vocab > 0.
func EncodePairs(path string, layout data.Layout, examples []data.Example, tok *tokenize.Tokenizer, cfg EncodeConfig, vocab int64) ([]EncodedPair, EncodeStats, error) {
	var stats EncodeStats
	if layout != data.Tokenized && tok == nil {
		return nil, stats, fmt.Errorf("%s: the %s layout holds text; pass --tokenizer tokenizer.json", path, layout)
	}
	if layout == data.Conversational && !tok.HasChatTemplate() {
		return nil, stats, fmt.Errorf("conversational dataset %s needs a chat template: tokenizer_config.json next to %s has none; add one or pre-render the text", path, tok.Path())
	}
	if err := CheckTokenizerFits(tok, vocab); err != nil {
		return nil, stats, err
	}
	opts := tokenize.PairOptions{MaxLength: cfg.MaxLength, Truncation: cfg.Truncation, AppendEOS: true}
	pairs := make([]EncodedPair, 0, len(examples))
	for _, ex := range examples {
		var chosen, rejected tokenize.Encoded
		var err error
		switch layout {
		case data.Tokenized:
			chosen, err = tokenize.EncodeIDsPair(ex.PromptIDs, ex.ChosenIDs, opts)
			if err == nil {
				rejected, err = tokenize.EncodeIDsPair(ex.PromptIDs, ex.RejectedIDs, opts)
			}
		case data.Conversational:
			// TRL v1.x: the chat template renders the turns, ends the assistant turn and
			// writes BOS where the model wants it (see tokenize.EncodeConversation).
			prompt := chatMessages(ex.PromptMessages)
			chosen, err = tok.EncodeConversation(prompt, chatMessages(ex.ChosenMessages), opts)
			if err == nil {
				rejected, err = tok.EncodeConversation(prompt, chatMessages(ex.RejectedMessages), opts)
			}
		default:
			chosen, err = tok.EncodePromptCompletion(ex.Prompt, ex.Chosen, opts)
			if err == nil {
				rejected, err = tok.EncodePromptCompletion(ex.Prompt, ex.Rejected, opts)
			}
		}
		if errors.Is(err, tokenize.ErrPromptTooLong) {
			stats.Dropped++
			stats.DroppedRows = append(stats.DroppedRows, ex.Row)
			continue
		}
		if err != nil {
			return nil, stats, fmt.Errorf("%s: row %d: %w", path, ex.Row, err)
		}
		if chosen.BoundaryMismatch || rejected.BoundaryMismatch {
			stats.BoundaryMismatches++
		}
		if chosen.Truncated || rejected.Truncated {
			stats.Truncated++
		}
		p := EncodedPair{
			Index: len(pairs), Row: ex.Row,
			Chosen:           Sequence{IDs: chosen.IDs, CompletionStart: chosen.CompletionStart},
			Rejected:         Sequence{IDs: rejected.IDs, CompletionStart: rejected.CompletionStart},
			RefChosenLogps:   ex.RefChosenLogps,
			RefRejectedLogps: ex.RefRejectedLogps,
		}
		if vocab > 0 {
			for _, c := range []struct {
				name string
				seq  Sequence
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
func PairRows(pairs []EncodedPair) []Sequence {
	rows := make([]Sequence, 0, 2*len(pairs))
	for _, p := range pairs {
		rows = append(rows, p.Chosen)
	}
	for _, p := range pairs {
		rows = append(rows, p.Rejected)
	}
	return rows
}
