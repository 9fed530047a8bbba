package data

import (
	"fmt"
	"slices"
	"strings"
)

// fieldKind is the value type a field was found to have in a file.
type fieldKind int

const (
	kindString fieldKind = iota + 1
	kindMessages
	kindIDs
	kindFloat
	kindOther // a JSON value of no supported kind
	kindBool  // a boolean (Parquet BOOLEAN, JSON true/false): the unpaired label
)

func (k fieldKind) String() string {
	switch k {
	case kindString:
		return "string"
	case kindMessages:
		return "list of {role, content} messages"
	case kindIDs:
		return "list of integers"
	case kindFloat:
		return "number"
	case kindOther:
		return "value of another type"
	case kindBool:
		return "boolean"
	}
	return "unknown"
}

// cell is one field's value in one row.
type cell struct {
	null   bool
	nullAt string // where inside a list the null is, e.g. "[2].content"; empty for a null value
	s      string
	msgs   []Message
	ids    []int64
	f      float64
	b      bool
}

// plan is a validated layout: which fields a file has, with which kinds, and
// under which column names.
type plan struct {
	layout   Layout
	use      Use
	kinds    map[string]fieldKind // canonical field -> kind, fields read only
	names    map[string]string    // canonical field -> file column name
	required []string             // fields whose null value skips a row
}

// column returns the file's column name for a canonical field.
func (p *plan) column(field string) string {
	return p.names[field]
}

// describeColumn names a field's column for messages: `"good" (chosen)` when
// mapped, `"chosen"` otherwise.
func describeColumn(names map[string]string, field string) string {
	if c := names[field]; c != field {
		return fmt.Sprintf("%q (%s)", c, field)
	}
	return fmt.Sprintf("%q", field)
}

// MissingColumnsError is returned (wrapped) by [Open] when a column the
// layout needs is absent, or when the file has none of the columns the use
// ([Options.Use]) can read. Fields lists the canonical fields without a
// column, so a caller can suggest a mapping ([Options.Columns]).
type MissingColumnsError struct {
	Fields    []string
	described []string // the columns looked for, as messages name them
	columns   []string // the file's columns
	want      string   // when set: the use and the column sets it accepts
}

func (e *MissingColumnsError) Error() string {
	if e.want != "" {
		return fmt.Sprintf("%s (columns: %s)", e.want, strings.Join(e.columns, ", "))
	}
	word := "column"
	if len(e.described) > 1 {
		word = "columns"
	}
	return fmt.Sprintf("missing %s %s (columns: %s)", word, strings.Join(e.described, ", "), strings.Join(e.columns, ", "))
}

// Column sets each use accepts, for the error of a file that has none.
const (
	wantSFT = "no columns for supervised fine-tuning: want prompt and completion (strings or message lists), " +
		"messages, text, prompt_input_ids and completion_input_ids, or a preference dataset's chosen " +
		"(with prompt, or rejected, or chosen_input_ids with prompt_input_ids)"
	wantPromptCols = "no prompts: want prompt (a string or a message list), prompt_input_ids, " +
		"or chosen and rejected that share their prompt"
)

// detector holds what detectLayout learnt of a file's columns.
type detector struct {
	p       *plan
	names   map[string]string
	columns []string
	present map[string]bool   // fields with a column, well typed or not
	typeErr map[string]string // fields whose column has a type no field kind fits
}

func (d *detector) has(f string) bool { return d.present[f] }

// missing returns a *MissingColumnsError for the fields without a column.
func (d *detector) missing(fields ...string) error {
	var miss, missFields []string
	for _, f := range fields {
		if !d.present[f] {
			miss = append(miss, describeColumn(d.names, f))
			missFields = append(missFields, f)
		}
	}
	if len(miss) == 0 {
		return nil
	}
	return &MissingColumnsError{Fields: missFields, described: miss, columns: d.columns}
}

// typed returns the type error of the first field given whose column has an
// unusable type.
func (d *detector) typed(fields ...string) error {
	for _, f := range fields {
		if e, ok := d.typeErr[f]; ok {
			return fmt.Errorf("%s", e)
		}
	}
	return nil
}

// want checks that a present field has one of the kinds given.
func (d *detector) want(field string, kinds ...fieldKind) error {
	k, ok := d.p.kinds[field]
	if !ok {
		return nil
	}
	for _, w := range kinds {
		if k == w {
			return nil
		}
	}
	ws := make([]string, len(kinds))
	for i, w := range kinds {
		ws[i] = w.String()
	}
	return fmt.Errorf("column %s is a %s, want a %s", describeColumn(d.names, field), k, strings.Join(ws, " or a "))
}

// need checks that the fields have columns of usable types.
func (d *detector) need(fields ...string) error {
	if err := d.missing(fields...); err != nil {
		return err
	}
	return d.typed(fields...)
}

// settle keeps only the fields read (those present among read) and sets the
// layout and the required fields. A read field with an unusable type is an
// error.
func (d *detector) settle(layout Layout, required []string, read ...string) error {
	if err := d.typed(append(read, required...)...); err != nil {
		return err
	}
	keep := map[string]fieldKind{}
	for _, f := range append(read, required...) {
		if k, ok := d.p.kinds[f]; ok {
			keep[f] = k
		}
	}
	d.p.kinds, d.p.layout, d.p.required = keep, layout, required
	return nil
}

// detectLayout chooses the layout from the kinds of the columns present and
// the use. kindOf returns the kind of a column name and whether it exists; a
// non-nil error means the column exists with a type no field accepts.
// columns lists the file's columns for messages.
func detectLayout(names map[string]string, columns []string, use Use, kindOf func(field, column string) (fieldKind, bool, error)) (*plan, error) {
	d := &detector{
		p:     &plan{kinds: map[string]fieldKind{}, names: names, use: use},
		names: names, columns: columns,
		present: map[string]bool{}, typeErr: map[string]string{},
	}
	fields := canonicalFields
	if use == UsePreference {
		fields = preferenceFields
	}
	var errs []string
	for _, f := range canonicalFields {
		k, ok, err := kindOf(f, names[f])
		if !slices.Contains(fields, f) {
			// Not read for this use; a mapping must still name a column.
			if !ok && err == nil && names[f] != f {
				return nil, fmt.Errorf("column mapping %s=%s: no column %q (columns: %s)", f, names[f], names[f], strings.Join(columns, ", "))
			}
			continue
		}
		if err != nil {
			errs = append(errs, err.Error())
			d.present[f], d.typeErr[f] = true, err.Error()
			continue
		}
		if ok {
			d.p.kinds[f] = k
			d.present[f] = true
		} else if names[f] != f {
			return nil, fmt.Errorf("column mapping %s=%s: no column %q (columns: %s)", f, names[f], names[f], strings.Join(columns, ", "))
		}
	}
	var err error
	switch use {
	case UsePreference:
		if len(errs) > 0 {
			return nil, fmt.Errorf("%s", strings.Join(errs, "; "))
		}
		err = d.detectPreference()
	case UseSFT:
		err = d.detectSFT()
	case UsePrompts:
		err = d.detectPrompts()
	case UseUnpaired:
		err = d.detectUnpaired()
	default:
		err = fmt.Errorf("unknown use %d", int(use))
	}
	if err != nil {
		return nil, err
	}
	return d.p, nil
}

// detectPreference chooses among the preference layouts.
func (d *detector) detectPreference() error {
	p := d.p
	switch {
	case d.has(FieldPromptIDs) || d.has(FieldChosenIDs) || d.has(FieldRejectedIDs):
		p.layout = Tokenized
		if err := d.missing(FieldPromptIDs, FieldChosenIDs, FieldRejectedIDs); err != nil {
			return err
		}
		for _, f := range []string{FieldPromptIDs, FieldChosenIDs, FieldRejectedIDs} {
			if err := d.want(f, kindIDs); err != nil {
				return err
			}
		}
		// Text columns next to token ids are not read.
		delete(p.kinds, FieldPrompt)
		delete(p.kinds, FieldChosen)
		delete(p.kinds, FieldRejected)
		p.required = []string{FieldPromptIDs, FieldChosenIDs, FieldRejectedIDs}
	default:
		if err := d.missing(FieldChosen, FieldRejected); err != nil {
			return err
		}
		ck := p.kinds[FieldChosen]
		if err := d.want(FieldChosen, kindString, kindMessages); err != nil {
			return err
		}
		if err := d.want(FieldRejected, ck); err != nil {
			return err
		}
		switch ck {
		case kindString:
			if err := d.want(FieldPrompt, kindString); err != nil {
				return err
			}
			p.layout = ImplicitPrompt
			if d.has(FieldPrompt) {
				p.layout = Standard
			}
		case kindMessages:
			if err := d.want(FieldPrompt, kindString, kindMessages); err != nil {
				return err
			}
			p.layout = Conversational
		}
		p.required = []string{FieldChosen, FieldRejected}
		if d.has(FieldPrompt) {
			p.required = []string{FieldPrompt, FieldChosen, FieldRejected}
		}
	}
	for _, f := range []string{FieldMargin, FieldRefChosenLogps, FieldRefRejectedLogps} {
		if err := d.want(f, kindFloat); err != nil {
			return err
		}
	}
	return nil
}

// detectSFT chooses the layout for supervised fine-tuning, in this order:
// completion_input_ids, chosen_input_ids (or rejected_input_ids), messages,
// completion, text, chosen (or rejected).
func (d *detector) detectSFT() error {
	p := d.p
	switch {
	case d.has(FieldCompletionIDs):
		req := []string{FieldPromptIDs, FieldCompletionIDs}
		if err := d.need(req...); err != nil {
			return err
		}
		return d.settle(TokenizedPromptCompletion, req)
	case d.has(FieldChosenIDs) || d.has(FieldRejectedIDs):
		req := []string{FieldPromptIDs, FieldChosenIDs}
		if err := d.need(req...); err != nil {
			return err
		}
		return d.settle(Tokenized, req, FieldRejectedIDs)
	case d.has(FieldMessages):
		return d.settle(ConversationalLanguageModeling, []string{FieldMessages})
	case d.has(FieldCompletion):
		req := []string{FieldPrompt, FieldCompletion}
		if err := d.need(req...); err != nil {
			return err
		}
		layout := PromptCompletion
		if p.kinds[FieldCompletion] == kindMessages {
			layout = ConversationalPromptCompletion
		}
		if err := d.want(FieldPrompt, p.kinds[FieldCompletion]); err != nil {
			return fmt.Errorf("%w, as column %s", err, describeColumn(d.names, FieldCompletion))
		}
		return d.settle(layout, req)
	case d.has(FieldText):
		return d.settle(LanguageModeling, []string{FieldText})
	case d.has(FieldChosen) || d.has(FieldRejected):
		if err := d.need(FieldChosen); err != nil {
			return err
		}
		if err := d.typed(FieldPrompt, FieldRejected); err != nil {
			return err
		}
		ck := p.kinds[FieldChosen]
		if err := d.want(FieldRejected, ck); err != nil {
			return err
		}
		switch {
		case ck == kindString && d.has(FieldPrompt):
			if err := d.want(FieldPrompt, kindString); err != nil {
				return err
			}
			return d.settle(Standard, []string{FieldPrompt, FieldChosen}, FieldRejected)
		case ck == kindString:
			// The prompt is what chosen and rejected share.
			if err := d.missing(FieldRejected); err != nil {
				return err
			}
			return d.settle(ImplicitPrompt, []string{FieldChosen, FieldRejected})
		case p.kinds[FieldPrompt] == kindMessages:
			return d.settle(Conversational, []string{FieldPrompt, FieldChosen}, FieldRejected)
		default:
			// A string prompt or none: the prompt messages are what chosen
			// and rejected share (UltraFeedback).
			if err := d.missing(FieldRejected); err != nil {
				return err
			}
			req := []string{FieldChosen, FieldRejected}
			if d.has(FieldPrompt) {
				req = append([]string{FieldPrompt}, req...)
			}
			return d.settle(Conversational, req)
		}
	}
	fields := []string{FieldPrompt, FieldCompletion}
	if d.has(FieldPrompt) {
		fields = fields[1:]
	} else if d.has(FieldPromptIDs) {
		fields = []string{FieldCompletionIDs}
	}
	return &MissingColumnsError{Fields: fields, columns: d.columns, want: wantSFT}
}

// detectPrompts chooses the layout when only prompts are read: pre-tokenized
// when prompt_input_ids is there, else by the prompt's type and the other
// columns; with no prompt column, chosen and rejected give it (their shared
// start).
func (d *detector) detectPrompts() error {
	p := d.p
	switch {
	case d.has(FieldPromptIDs):
		req := []string{FieldPromptIDs}
		layout := TokenizedPromptOnly
		switch {
		case d.has(FieldCompletionIDs):
			layout = TokenizedPromptCompletion
		case d.has(FieldChosenIDs) || d.has(FieldRejectedIDs):
			layout = Tokenized
		}
		return d.settle(layout, req)
	case d.has(FieldPrompt):
		if err := d.typed(FieldPrompt); err != nil {
			return err
		}
		req := []string{FieldPrompt}
		conv := p.kinds[FieldPrompt] == kindMessages
		switch {
		case d.has(FieldCompletion):
			if conv {
				return d.settle(ConversationalPromptCompletion, req)
			}
			return d.settle(PromptCompletion, req)
		case d.has(FieldChosen) || d.has(FieldRejected):
			if conv {
				return d.settle(Conversational, req)
			}
			if err := d.typed(FieldChosen); err != nil {
				return err
			}
			if p.kinds[FieldChosen] != kindMessages {
				return d.settle(Standard, req)
			}
			// A string prompt beside message lists: the prompt messages are
			// what chosen and rejected share (UltraFeedback).
			req = []string{FieldPrompt, FieldChosen, FieldRejected}
			if err := d.need(req...); err != nil {
				return err
			}
			if err := d.want(FieldRejected, kindMessages); err != nil {
				return err
			}
			return d.settle(Conversational, req)
		case conv:
			return d.settle(ConversationalPromptOnly, req)
		default:
			return d.settle(PromptOnly, req)
		}
	case d.has(FieldChosen) || d.has(FieldRejected):
		req := []string{FieldChosen, FieldRejected}
		if err := d.need(req...); err != nil {
			return err
		}
		ck := p.kinds[FieldChosen]
		if err := d.want(FieldRejected, ck); err != nil {
			return err
		}
		if ck == kindMessages {
			return d.settle(Conversational, req)
		}
		return d.settle(ImplicitPrompt, req)
	}
	return &MissingColumnsError{Fields: []string{FieldPrompt}, columns: d.columns, want: wantPromptCols}
}

// requiredFields are the fields whose null value skips a row.
func (p *plan) requiredFields() []string { return p.required }

// fields lists the fields to read, in a fixed order.
func (p *plan) fields() []string {
	var fs []string
	for _, f := range canonicalFields {
		if _, ok := p.kinds[f]; ok {
			fs = append(fs, f)
		}
	}
	return fs
}

// build turns one row's cells into an Example. It returns a non-nil
// SkippedRow when a required value is null. Fields not read give the empty
// value.
func (p *plan) build(row int64, get func(field string) *cell) (Example, *SkippedRow) {
	for _, f := range p.requiredFields() {
		if c := get(f); c.null {
			return Example{}, &SkippedRow{Row: row, Column: p.column(f) + c.nullAt, Reason: ReasonNull}
		}
	}
	empty := &cell{}
	read := func(f string) *cell {
		if _, ok := p.kinds[f]; !ok {
			return empty
		}
		if c := get(f); !c.null {
			return c
		}
		return empty // an optional value that is null
	}
	ex := Example{Row: row}
	switch p.layout {
	case Tokenized:
		ex.PromptIDs = read(FieldPromptIDs).ids
		ex.ChosenIDs = read(FieldChosenIDs).ids
		ex.RejectedIDs = read(FieldRejectedIDs).ids
	case Standard:
		ex.Prompt, ex.Chosen, ex.Rejected = read(FieldPrompt).s, read(FieldChosen).s, read(FieldRejected).s
	case ImplicitPrompt:
		ex.Prompt, ex.Chosen, ex.Rejected = SplitImplicitPrompt(read(FieldChosen).s, read(FieldRejected).s)
	case Conversational:
		var text string
		var msgs []Message
		if k, ok := p.kinds[FieldPrompt]; ok {
			c := read(FieldPrompt)
			if k == kindString {
				text = c.s
			} else {
				msgs = c.msgs
			}
		}
		ex.Prompt = text
		chosen, rejected := read(FieldChosen).msgs, read(FieldRejected).msgs
		if p.use != UsePreference && len(msgs) > 0 && !p.isRequired(FieldRejected) {
			// The prompt is given: a rejected side that is not read, or
			// null, must not keep chosen from dropping a repeated prompt.
			if _, ok := p.kinds[FieldRejected]; !ok || get(FieldRejected).null {
				rejected = chosen
			}
			var r []Message
			ex.PromptMessages, ex.ChosenMessages, r = SplitConversation(text, msgs, chosen, rejected)
			if _, ok := p.kinds[FieldRejected]; ok && !get(FieldRejected).null {
				ex.RejectedMessages = r
			}
		} else {
			ex.PromptMessages, ex.ChosenMessages, ex.RejectedMessages = SplitConversation(text, msgs, chosen, rejected)
		}
	case PromptCompletion:
		ex.Prompt, ex.Completion = read(FieldPrompt).s, read(FieldCompletion).s
	case ConversationalPromptCompletion:
		ex.PromptMessages, ex.CompletionMessages = read(FieldPrompt).msgs, read(FieldCompletion).msgs
	case TokenizedPromptCompletion:
		ex.PromptIDs, ex.CompletionIDs = read(FieldPromptIDs).ids, read(FieldCompletionIDs).ids
	case LanguageModeling:
		ex.Text = read(FieldText).s
	case ConversationalLanguageModeling:
		ex.Messages = read(FieldMessages).msgs
	case PromptOnly:
		ex.Prompt = read(FieldPrompt).s
	case ConversationalPromptOnly:
		ex.PromptMessages = read(FieldPrompt).msgs
	case TokenizedPromptOnly:
		ex.PromptIDs = read(FieldPromptIDs).ids
	}
	opt := func(f string) *float64 {
		if _, ok := p.kinds[f]; !ok {
			return nil
		}
		c := get(f)
		if c.null {
			return nil
		}
		v := c.f
		return &v
	}
	ex.Margin = opt(FieldMargin)
	ex.RefChosenLogps = opt(FieldRefChosenLogps)
	ex.RefRejectedLogps = opt(FieldRefRejectedLogps)
	ex.Label = p.label(get)
	return ex, nil
}

func (p *plan) isRequired(f string) bool { return slices.Contains(p.required, f) }
