package encode

import (
	"context"
	"errors"
	"fmt"

	"ortalign/data"
	"ortalign/pipeline/lm"
	"ortalign/tokenize"
)

// EncodedUnpaired is one unpaired preference row (KTO) ready for the model: the prompt
// and its completion as one sequence, whether the completion is desirable, the
// mismatched sequence of the KL estimate (PairKL) and, once attached, reference log-probs.
type EncodedUnpaired struct {
	Index     int   // position among the encoded rows, i.e. output order
	Row       int64 // row in the source file (a preference file's pair row)
	Seq       lm.Sequence
	Desirable bool
	// KL is the row's prompt followed by another row's completion (PairKL): the
	// mismatched pair whose log-ratio estimates the KL term. Empty until PairKL.
	KL lm.Sequence
	// RefLogps and RefKLLogps are the reference model's log-probs of Seq and KL.
	RefLogps, RefKLLogps *float64
}

// LoadUnpaired reads and encodes unpaired preference rows: a prompt-completion file with
// a label column, or a preference file, unpaired as TRL's unpair_preference_dataset does
// (data.Unpair). KL sequences are not formed here (PairKL).
func LoadUnpaired(path string, o DataOptions) (*Loaded[EncodedUnpaired], error) {
	return LoadUnpairedContext(context.Background(), path, o)
}

// LoadUnpairedContext is LoadUnpaired stopping, with ctx's error, when ctx is done:
// between row groups and rows (see LoadPairsContext).
func LoadUnpairedContext(ctx context.Context, path string, o DataOptions) (*Loaded[EncodedUnpaired], error) {
	return loadContext(ctx, path, data.UseUnpaired, o, func(ds *data.Dataset, ex []data.Example) ([]EncodedUnpaired, EncodeStats, error) {
		return EncodeUnpaired(ds.Path, ds.Layout, ex, o.Tokenizer, o.EncodeConfig(ds), o.Vocab)
	})
}

// EncodeUnpaired turns unpaired examples (read with data.UseUnpaired) into sequences.
// Examples of a preference layout are unpaired first (data.Unpair). Each prompt and
// completion is encoded exactly as EncodePairs encodes a prompt and one of its
// completions (TRL v1.x: text prompt and prompt+completion tokenized jointly without
// special tokens, EOS appended; conversations rendered by the chat template; token ids
// as they are), so KTO and DPO on the same pairs see the same sequences. Truncation,
// drops, skips (naming completion, or chosen/rejected for a preference file) and the
// vocabulary check are EncodePairs'. Every example must carry its label.
func EncodeUnpaired(path string, layout data.Layout, examples []data.Example, tok *tokenize.Tokenizer, cfg EncodeConfig, vocab int64) ([]EncodedUnpaired, EncodeStats, error) {
	var stats EncodeStats
	paired := layout.IsPreference()
	if paired {
		layout, examples = data.Unpair(layout, examples)
	}
	err := CheckSequencesEncodable(path, layout, tok)
	if err == nil {
		err = CheckTokenizerFits(tok, vocab)
	}
	if err == nil {
		err = cfg.checkTruncation()
	}
	if err != nil {
		return nil, stats, err
	}
	opts := tokenize.PairOptions{MaxLength: cfg.MaxLength, Truncation: cfg.Truncation, AppendEOS: true}
	out := make([]EncodedUnpaired, 0, len(examples))
	for i := range examples {
		ex := &examples[i]
		if ex.Label == nil {
			return nil, stats, fmt.Errorf("%s: row %d has no label", path, ex.Row)
		}
		column := cfg.column(unpairedField(layout, paired, *ex.Label))
		enc, reason, err := encodeUnpairedRow(layout, ex, tok, opts)
		switch {
		case errors.Is(err, tokenize.ErrPromptTooLong):
			stats.Dropped++
			stats.DroppedRows = append(stats.DroppedRows, ex.Row)
			continue
		case err != nil:
			return nil, stats, fmt.Errorf("%s: row %d: column %q: %w", path, ex.Row, column, err)
		case reason != "":
			s := data.SkippedRow{Row: ex.Row, Column: column, Reason: reason}
			if cfg.Strict {
				return nil, stats, &data.RowError{Path: path, SkippedRow: s}
			}
			stats.Skipped = append(stats.Skipped, s)
			continue
		}
		if enc.BoundaryMismatch {
			stats.BoundaryMismatches++
		}
		if enc.Truncated {
			stats.Truncated++
		}
		if err := checkVocab(enc.IDs, vocab); err != nil {
			return nil, stats, fmt.Errorf("%s: row %d: %w", path, ex.Row, err)
		}
		out = append(out, EncodedUnpaired{
			Index: len(out), Row: ex.Row, Desirable: *ex.Label,
			Seq: lm.Sequence{IDs: enc.IDs, CompletionStart: enc.CompletionStart},
		})
	}
	return out, stats, nil
}

// encodeUnpairedRow encodes one row's prompt and completion as EncodePairs encodes a
// prompt and one of its completions. A row that cannot be used gives the reason (a
// data.Reason constant) instead; a prompt that fills the maximum length is
// tokenize.ErrPromptTooLong.
func encodeUnpairedRow(layout data.Layout, ex *data.Example, tok *tokenize.Tokenizer, opts tokenize.PairOptions) (tokenize.Encoded, string, error) {
	if reason := unusableSFT(layout, ex); reason != "" {
		return tokenize.Encoded{}, reason, nil
	}
	var enc tokenize.Encoded
	var err error
	switch layout {
	case data.TokenizedPromptCompletion:
		enc, err = tokenize.EncodeIDsPair(ex.PromptIDs, ex.CompletionIDs, opts)
	case data.ConversationalPromptCompletion:
		enc, err = tok.EncodeConversation(chatMessages(ex.PromptMessages), chatMessages(ex.CompletionMessages), opts)
	default:
		enc, err = tok.EncodePromptCompletion(ex.Prompt, ex.Completion, opts)
	}
	if errors.Is(err, tokenize.ErrEmptyCompletion) {
		return enc, data.ReasonNoTokens, nil
	}
	return enc, "", err
}

// unpairedField is the canonical field holding a row's completion: a preference file's
// chosen or rejected side, else completion (or its ids).
func unpairedField(layout data.Layout, paired, desirable bool) string {
	tokenized := layout == data.TokenizedPromptCompletion
	switch {
	case paired && tokenized && desirable:
		return data.FieldChosenIDs
	case paired && tokenized:
		return data.FieldRejectedIDs
	case paired && desirable:
		return data.FieldChosen
	case paired:
		return data.FieldRejected
	case tokenized:
		return data.FieldCompletionIDs
	}
	return data.FieldCompletion
}

// PairKL forms each row's KL sequence as TRL's KTOTrainer does (_get_kl_dataset): the
// rows are taken in blocks of blockSize in order (TRL maps the dataset in batches of the
// per-device batch size), and within a block row i's prompt is joined to the completion
// of the row before it, the first row taking the last row's: (x_1, y_n), (x_2, y_1), ...,
// (x_n, y_{n-1}). A block of one row pairs it with its own completion. The joined ids are
// cut to maxLength by truncation as a pre-tokenized pair is. rows are changed in place.
func PairKL(rows []EncodedUnpaired, blockSize, maxLength int, truncation string) error {
	if blockSize <= 0 {
		return fmt.Errorf("KL block size must be positive, got %d", blockSize)
	}
	prompt := func(s lm.Sequence) []int64 { return s.IDs[:s.CompletionStart] }
	completion := func(s lm.Sequence) []int64 { return s.IDs[s.CompletionStart:] }
	opts := tokenize.PairOptions{MaxLength: maxLength, Truncation: truncation}
	kl := make([]lm.Sequence, len(rows))
	for lo := 0; lo < len(rows); lo += blockSize {
		hi := min(lo+blockSize, len(rows))
		for i := lo; i < hi; i++ {
			j := i - 1
			if i == lo {
				j = hi - 1
			}
			enc, err := tokenize.EncodeIDsPair(prompt(rows[i].Seq), completion(rows[j].Seq), opts)
			if err != nil {
				return fmt.Errorf("row %d: KL sequence (its prompt, row %d's completion): %w", rows[i].Row, rows[j].Row, err)
			}
			kl[i] = lm.Sequence{IDs: enc.IDs, CompletionStart: enc.CompletionStart}
		}
	}
	for i := range rows {
		rows[i].KL = kl[i]
	}
	return nil
}
