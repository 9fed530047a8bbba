package tokenize

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Truncation sides for PairOptions.Truncation.
const (
	// KeepStart keeps the first MaxLength ids (drops the end of the completion first).
	KeepStart = "keep_start"
	// KeepEnd keeps the last MaxLength ids (drops the start of the prompt first).
	KeepEnd = "keep_end"
)

// ErrPromptTooLong is returned (wrapped) when, after truncation, no completion token is
// left: the prompt alone fills MaxLength. Callers drop such examples and count them.
var ErrPromptTooLong = errors.New("tokenize: prompt fills max length, no completion token left")

// ErrEmptyCompletion is returned (wrapped) when the completion has no token at all (an empty
// completion without an appended EOS).
var ErrEmptyCompletion = errors.New("tokenize: completion has no tokens")

// PairOptions says how EncodePromptCompletion and EncodeIDsPair build one sequence.
type PairOptions struct {
	// MaxLength caps the number of ids; 0 or less means no limit.
	MaxLength int
	// Truncation is KeepStart (the default when empty) or KeepEnd.
	Truncation string
	// AppendEOS appends the EOS token to the completion (TRL does so for non-conversational
	// completions) unless the completion already ends with it.
	AppendEOS bool
	// AddSpecialTokens lets the post-processor add its special tokens (e.g. BOS), as TRL
	// does when it calls the tokenizer with its defaults.
	AddSpecialTokens bool
}

// Encoded is one (prompt, completion) sequence.
type Encoded struct {
	// IDs are the prompt ids followed by the completion ids.
	IDs []int64
	// CompletionStart is the index in IDs of the first completion token.
	CompletionStart int
	// BoundaryMismatch is set when the ids of the prompt alone are not a prefix of the ids
	// of prompt+completion (a token spans the boundary); the boundary is then still put at
	// the length of the prompt's ids, as TRL does, and the caller should warn.
	BoundaryMismatch bool
	// Truncated is set when ids were dropped to fit MaxLength.
	Truncated bool
}

// EncodePromptCompletion encodes a (prompt, completion) pair with TRL v1.x semantics: the
// prompt is tokenized alone and prompt+completion jointly; the completion ids are the joint
// ids after the prompt's. With AppendEOS the EOS token text is appended to the completion
// (when it does not already end with it) and its id ends the sequence. The result is then
// truncated to MaxLength (see PairOptions).
func (t *Tokenizer) EncodePromptCompletion(prompt, completion string, o PairOptions) (Encoded, error) {
	if err := o.check(); err != nil {
		return Encoded{}, err
	}
	eosID, hasEOS := t.EOS()
	if o.AppendEOS {
		if !hasEOS {
			return Encoded{}, errors.New("tokenize: AppendEOS is set but the tokenizer has no EOS token (add eos_token to tokenizer_config.json)")
		}
		if !strings.HasSuffix(completion, t.eos) {
			completion += t.eos
		}
	}
	promptIDs, err := t.Encode(prompt, o.AddSpecialTokens)
	if err != nil {
		return Encoded{}, err
	}
	joint, err := t.Encode(prompt+completion, o.AddSpecialTokens)
	if err != nil {
		return Encoded{}, err
	}
	if o.AppendEOS && (len(joint) == 0 || joint[len(joint)-1] != eosID) {
		// The EOS text was not read back as the EOS token (e.g. a template that appends its
		// own tokens after the sequence): make sure the completion ends with the EOS id.
		joint = append(joint, eosID)
	}
	e := Encoded{CompletionStart: len(promptIDs)}
	if len(joint) < len(promptIDs) || !slices.Equal(joint[:len(promptIDs)], promptIDs) {
		e.BoundaryMismatch = true
	}
	if e.CompletionStart > len(joint) {
		e.CompletionStart = len(joint)
	}
	e.IDs = make([]int64, len(joint))
	for i, id := range joint {
		e.IDs[i] = int64(id)
	}
	return e.truncate(o)
}

// EncodeIDsPair joins already tokenized prompt and completion ids and applies the same
// truncation as EncodePromptCompletion (AppendEOS, AddSpecialTokens are not used: pre-tokenized
// data is taken as it is).
func EncodeIDsPair(promptIDs, completionIDs []int64, o PairOptions) (Encoded, error) {
	if err := o.check(); err != nil {
		return Encoded{}, err
	}
	e := Encoded{CompletionStart: len(promptIDs), IDs: make([]int64, 0, len(promptIDs)+len(completionIDs))}
	e.IDs = append(append(e.IDs, promptIDs...), completionIDs...)
	return e.truncate(o)
}

func (o PairOptions) check() error {
	switch o.Truncation {
	case "", KeepStart, KeepEnd:
		return nil
	}
	return fmt.Errorf("tokenize: PairOptions.Truncation %q: want %q or %q", o.Truncation, KeepStart, KeepEnd)
}

func (e Encoded) truncate(o PairOptions) (Encoded, error) {
	n := len(e.IDs)
	if e.CompletionStart >= n {
		return e, fmt.Errorf("%w (prompt %d tokens, completion 0)", ErrEmptyCompletion, e.CompletionStart)
	}
	if o.MaxLength <= 0 || n <= o.MaxLength {
		return e, nil
	}
	e.Truncated = true
	if o.Truncation == KeepEnd {
		drop := n - o.MaxLength
		e.IDs = e.IDs[drop:]
		e.CompletionStart = max(0, e.CompletionStart-drop)
		return e, nil
	}
	if e.CompletionStart >= o.MaxLength {
		return e, fmt.Errorf("%w (prompt %d tokens, max length %d)", ErrPromptTooLong, e.CompletionStart, o.MaxLength)
	}
	e.IDs = e.IDs[:o.MaxLength]
	return e, nil
}
