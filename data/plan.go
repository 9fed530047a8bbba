package data

import (
	"fmt"
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
}

// plan is a validated layout: which fields a file has, with which kinds, and
// under which column names.
type plan struct {
	layout Layout
	kinds  map[string]fieldKind // canonical field -> kind, present fields only
	names  map[string]string    // canonical field -> file column name
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
// layout needs is absent. Fields lists the canonical fields without a column,
// so a caller can suggest a mapping ([Options.Columns]).
type MissingColumnsError struct {
	Fields    []string
	described []string // the columns looked for, as messages name them
	columns   []string // the file's columns
}

func (e *MissingColumnsError) Error() string {
	word := "column"
	if len(e.described) > 1 {
		word = "columns"
	}
	return fmt.Sprintf("missing %s %s (columns: %s)", word, strings.Join(e.described, ", "), strings.Join(e.columns, ", "))
}

// detectLayout chooses the layout from the kinds of the columns present.
// kindOf returns the kind of a column name and whether it exists; a non-nil
// error means the column exists with a type no field accepts. columns lists
// the file's columns for messages.
func detectLayout(names map[string]string, columns []string, kindOf func(field, column string) (fieldKind, bool, error)) (*plan, error) {
	p := &plan{kinds: map[string]fieldKind{}, names: names}
	var errs []string
	for _, f := range canonicalFields {
		k, ok, err := kindOf(f, names[f])
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		if ok {
			p.kinds[f] = k
		} else if names[f] != f {
			return nil, fmt.Errorf("column mapping %s=%s: no column %q (columns: %s)", f, names[f], names[f], strings.Join(columns, ", "))
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%s", strings.Join(errs, "; "))
	}

	missing := func(fields ...string) error {
		var miss, missFields []string
		for _, f := range fields {
			if _, ok := p.kinds[f]; !ok {
				miss = append(miss, describeColumn(names, f))
				missFields = append(missFields, f)
			}
		}
		if len(miss) == 0 {
			return nil
		}
		return &MissingColumnsError{Fields: missFields, described: miss, columns: columns}
	}
	want := func(field string, kinds ...fieldKind) error {
		k, ok := p.kinds[field]
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
		return fmt.Errorf("column %s is a %s, want a %s", describeColumn(names, field), k, strings.Join(ws, " or a "))
	}

	_, hasPIDs := p.kinds[FieldPromptIDs]
	_, hasCIDs := p.kinds[FieldChosenIDs]
	_, hasRIDs := p.kinds[FieldRejectedIDs]
	switch {
	case hasPIDs || hasCIDs || hasRIDs:
		p.layout = Tokenized
		if err := missing(FieldPromptIDs, FieldChosenIDs, FieldRejectedIDs); err != nil {
			return nil, err
		}
		for _, f := range []string{FieldPromptIDs, FieldChosenIDs, FieldRejectedIDs} {
			if err := want(f, kindIDs); err != nil {
				return nil, err
			}
		}
		// Text columns next to token ids are not read.
		delete(p.kinds, FieldPrompt)
		delete(p.kinds, FieldChosen)
		delete(p.kinds, FieldRejected)
	default:
		if err := missing(FieldChosen, FieldRejected); err != nil {
			return nil, err
		}
		ck := p.kinds[FieldChosen]
		if err := want(FieldChosen, kindString, kindMessages); err != nil {
			return nil, err
		}
		if err := want(FieldRejected, ck); err != nil {
			return nil, err
		}
		switch ck {
		case kindString:
			if err := want(FieldPrompt, kindString); err != nil {
				return nil, err
			}
			p.layout = ImplicitPrompt
			if _, ok := p.kinds[FieldPrompt]; ok {
				p.layout = Standard
			}
		case kindMessages:
			if err := want(FieldPrompt, kindString, kindMessages); err != nil {
				return nil, err
			}
			p.layout = Conversational
		}
	}
	for _, f := range []string{FieldMargin, FieldRefChosenLogps, FieldRefRejectedLogps} {
		if err := want(f, kindFloat); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// requiredFields are the fields whose null value skips a row.
func (p *plan) requiredFields() []string {
	if p.layout == Tokenized {
		return []string{FieldPromptIDs, FieldChosenIDs, FieldRejectedIDs}
	}
	fs := []string{FieldPrompt, FieldChosen, FieldRejected}
	if _, ok := p.kinds[FieldPrompt]; !ok {
		fs = fs[1:]
	}
	return fs
}

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
// SkippedRow when a required value is null.
func (p *plan) build(row int64, get func(field string) *cell) (Example, *SkippedRow) {
	for _, f := range p.requiredFields() {
		if c := get(f); c.null {
			return Example{}, &SkippedRow{Row: row, Column: p.column(f) + c.nullAt, Reason: ReasonNull}
		}
	}
	ex := Example{Row: row}
	switch p.layout {
	case Tokenized:
		ex.PromptIDs = get(FieldPromptIDs).ids
		ex.ChosenIDs = get(FieldChosenIDs).ids
		ex.RejectedIDs = get(FieldRejectedIDs).ids
	case Standard:
		ex.Prompt, ex.Chosen, ex.Rejected = get(FieldPrompt).s, get(FieldChosen).s, get(FieldRejected).s
	case ImplicitPrompt:
		ex.Prompt, ex.Chosen, ex.Rejected = SplitImplicitPrompt(get(FieldChosen).s, get(FieldRejected).s)
	case Conversational:
		var text string
		var msgs []Message
		if k, ok := p.kinds[FieldPrompt]; ok {
			c := get(FieldPrompt)
			if k == kindString {
				text = c.s
			} else {
				msgs = c.msgs
			}
		}
		ex.Prompt = text
		ex.PromptMessages, ex.ChosenMessages, ex.RejectedMessages =
			SplitConversation(text, msgs, get(FieldChosen).msgs, get(FieldRejected).msgs)
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
	return ex, nil
}
