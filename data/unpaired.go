package data

import "slices"

// wantUnpaired lists the column sets [UseUnpaired] accepts, for the error of a file with
// none of them.
const wantUnpaired = "no unpaired preference columns: want prompt, completion (strings or message lists) and label " +
	"(a boolean), prompt_input_ids, completion_input_ids and label, or a preference dataset " +
	"(chosen and rejected, with or without prompt, or their _input_ids), which is unpaired"

// detectUnpaired chooses the layout of unpaired preference rows (KTO): with a label
// column, a prompt-completion layout (completion_input_ids first, then completion), whose
// label is required; without one, a preference layout, exactly as [UsePreference] detects
// it, which [Unpair] turns into labelled prompt-completion rows.
func (d *detector) detectUnpaired() error {
	p := d.p
	switch {
	case d.has(FieldLabel) && d.has(FieldCompletionIDs):
		req := []string{FieldPromptIDs, FieldCompletionIDs, FieldLabel}
		if err := d.need(req...); err != nil {
			return err
		}
		return d.settle(TokenizedPromptCompletion, req)
	case d.has(FieldLabel):
		req := []string{FieldPrompt, FieldCompletion, FieldLabel}
		if err := d.need(req...); err != nil {
			return err
		}
		if err := d.want(FieldPrompt, p.kinds[FieldCompletion]); err != nil {
			return err
		}
		layout := PromptCompletion
		if p.kinds[FieldCompletion] == kindMessages {
			layout = ConversationalPromptCompletion
		}
		return d.settle(layout, req)
	case d.has(FieldChosen) || d.has(FieldRejected) || d.has(FieldChosenIDs) || d.has(FieldRejectedIDs):
		if err := d.typed(preferenceFields...); err != nil {
			return err
		}
		for f := range p.kinds {
			if !slices.Contains(preferenceFields, f) {
				delete(p.kinds, f) // a preference file's other columns are not read
			}
		}
		return d.detectPreference()
	case d.has(FieldCompletion) || d.has(FieldCompletionIDs):
		return d.missing(FieldLabel)
	}
	return &MissingColumnsError{Fields: []string{FieldLabel}, columns: d.columns, want: wantUnpaired}
}

// label is the row's label when the layout reads one.
func (p *plan) label(get func(field string) *cell) *bool {
	if _, ok := p.kinds[FieldLabel]; !ok {
		return nil
	}
	c := get(FieldLabel)
	if c.null {
		return nil
	}
	v := c.b
	return &v
}

// unpairBlock is the number of pairs TRL's unpair_preference_dataset unpairs at a time
// (datasets' map batch size): their chosen rows, then their rejected rows.
const unpairBlock = 1000

// Unpair turns preference examples of layout into unpaired ones, as TRL's
// unpair_preference_dataset does: each block of 1000 pairs gives its chosen completions
// (label true) and then its rejected completions (label false), each with the pair's
// prompt. The layout returned is the matching prompt-completion layout (Standard and
// ImplicitPrompt give PromptCompletion, Conversational ConversationalPromptCompletion,
// Tokenized TokenizedPromptCompletion); both rows keep the pair's Row. Examples of another
// layout are returned as they are.
func Unpair(layout Layout, examples []Example) (Layout, []Example) {
	var out Layout
	switch layout {
	case Standard, ImplicitPrompt:
		out = PromptCompletion
	case Conversational:
		out = ConversationalPromptCompletion
	case Tokenized:
		out = TokenizedPromptCompletion
	default:
		return layout, examples
	}
	rows := make([]Example, 0, 2*len(examples))
	for lo := 0; lo < len(examples); lo += unpairBlock {
		block := examples[lo:min(lo+unpairBlock, len(examples))]
		for _, desirable := range []bool{true, false} {
			for _, ex := range block {
				rows = append(rows, unpairOne(ex, desirable))
			}
		}
	}
	return out, rows
}

// unpairOne is one side of a pair as a labelled prompt-completion example.
func unpairOne(ex Example, desirable bool) Example {
	u := Example{Row: ex.Row, Prompt: ex.Prompt, PromptMessages: ex.PromptMessages, PromptIDs: ex.PromptIDs, Label: &desirable}
	if desirable {
		u.Completion, u.CompletionMessages, u.CompletionIDs = ex.Chosen, ex.ChosenMessages, ex.ChosenIDs
	} else {
		u.Completion, u.CompletionMessages, u.CompletionIDs = ex.Rejected, ex.RejectedMessages, ex.RejectedIDs
	}
	return u
}
