package data

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
)

// jsonlData is a JSON Lines dataset, parsed and validated when opened.
type jsonlData struct {
	examples []Example
	skipped  []SkippedRow
	err      error // strict-mode null, reported by ReadAll
}

// openJSONL reads a JSON Lines file: one JSON object per line, with the same
// keys and layouts as Parquet columns. Blank lines are ignored; Example.Row is
// the 0-based index of the record.
func openJSONL(path string, names map[string]string, use Use, strict bool) (*Dataset, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()

	type record struct {
		line   int
		fields map[string]json.RawMessage
	}
	var recs []record
	br := bufio.NewReaderSize(f, 1<<16)
	for line := 1; ; line++ {
		b, err := br.ReadBytes('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("read %s: line %d: %w", path, line, err)
		}
		if t := bytes.TrimSpace(b); len(t) > 0 {
			var m map[string]json.RawMessage
			if jerr := json.Unmarshal(t, &m); jerr != nil || m == nil {
				if jerr == nil {
					jerr = fmt.Errorf("not a JSON object")
				}
				return nil, fmt.Errorf("read %s: line %d: %v", path, line, jerr)
			}
			recs = append(recs, record{line, m})
		}
		if err != nil {
			break
		}
	}
	if len(recs) == 0 {
		return nil, fmt.Errorf("open %s: no records (empty JSON Lines file)", path)
	}

	// Each key's kind comes from its first non-null value; later values must
	// agree.
	kinds := map[string]fieldKind{}
	firstLine := map[string]int{}
	seen := map[string]bool{}
	for _, r := range recs {
		for k, v := range r.fields {
			seen[k] = true
			if _, ok := kinds[k]; ok || isJSONNull(v) {
				continue
			}
			if kd, ok := jsonKind(v); ok {
				kinds[k], firstLine[k] = kd, r.line
			}
		}
	}
	columns := make([]string, 0, len(seen))
	for k := range seen {
		columns = append(columns, k)
	}
	sort.Strings(columns)

	p, err := detectLayout(names, columns, use, func(field, column string) (fieldKind, bool, error) {
		if !seen[column] {
			return 0, false, nil
		}
		k, ok := kinds[column]
		if !ok {
			// Only nulls (or empty lists) seen: take the field's natural kind.
			switch field {
			case FieldPromptIDs, FieldChosenIDs, FieldRejectedIDs, FieldCompletionIDs:
				k = kindIDs
			case FieldMessages:
				k = kindMessages
			case FieldMargin, FieldRefChosenLogps, FieldRefRejectedLogps:
				k = kindFloat
			case FieldLabel:
				k = kindBool
			default:
				k = kindString
			}
		}
		if !accepts(field, k) {
			return 0, false, fmt.Errorf("key %s is a %s (line %d), want %s", describeColumn(names, field), k, firstLine[column], wantFor(field))
		}
		return k, true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}

	d := &Dataset{Path: path, Layout: p.layout, Use: use, NumRows: int64(len(recs)), strict: strict, plan: p, Columns: map[string]string{}}
	for f := range p.kinds {
		d.Columns[f] = names[f]
	}
	jd := &jsonlData{}
	fields := p.fields()
	cells := map[string]*cell{}
	for i, r := range recs {
		for _, field := range fields {
			c := &cell{}
			if err := decodeJSONCell(r.fields[names[field]], p.kinds[field], c); err != nil {
				return nil, fmt.Errorf("read %s: line %d, key %q: %w", path, r.line, names[field], err)
			}
			if err := checkUTF8(c); err != nil {
				return nil, fmt.Errorf("read %s: line %d, key %q: %w", path, r.line, names[field], err)
			}
			cells[field] = c
		}
		ex, skip := p.build(int64(i), func(f string) *cell { return cells[f] })
		if skip != nil {
			if strict && jd.err == nil {
				jd.err = fmt.Errorf("read %w", &RowError{Path: path, Line: r.line, SkippedRow: *skip})
			}
			jd.skipped = append(jd.skipped, *skip)
			continue
		}
		jd.examples = append(jd.examples, ex)
	}
	d.jsonl = jd
	return d, nil
}

func (d *Dataset) readJSONL() ([]Example, []SkippedRow, error) {
	if d.jsonl.err != nil {
		return nil, nil, d.jsonl.err
	}
	return d.jsonl.examples, d.jsonl.skipped, nil
}

func isJSONNull(v json.RawMessage) bool {
	return len(v) == 0 || string(bytes.TrimSpace(v)) == "null"
}

// jsonKind infers a field kind from a non-null JSON value; ok is false for an
// empty list or a list of nulls, which say nothing.
func jsonKind(v json.RawMessage) (fieldKind, bool) {
	v = bytes.TrimSpace(v)
	switch v[0] {
	case '"':
		return kindString, true
	case '[':
		var elems []json.RawMessage
		if json.Unmarshal(v, &elems) != nil {
			return 0, false
		}
		for _, e := range elems {
			e = bytes.TrimSpace(e)
			if isJSONNull(e) {
				continue
			}
			switch e[0] {
			case '{':
				return kindMessages, true
			case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
				return kindIDs, true
			}
			return kindOther, true // a list of something else: reported as a type error
		}
		return 0, false
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		return kindFloat, true
	case 't', 'f':
		return kindBool, true
	}
	return kindOther, true
}

// decodeJSONCell decodes one value of a known kind into c.
func decodeJSONCell(v json.RawMessage, k fieldKind, c *cell) error {
	if isJSONNull(v) {
		c.null = true
		return nil
	}
	switch k {
	case kindString:
		if err := json.Unmarshal(v, &c.s); err != nil {
			return fmt.Errorf("want a string: %w", unwrapJSON(err))
		}
	case kindFloat:
		if err := json.Unmarshal(v, &c.f); err != nil {
			return fmt.Errorf("want a number: %w", unwrapJSON(err))
		}
	case kindBool:
		if err := json.Unmarshal(v, &c.b); err != nil {
			return fmt.Errorf("want true or false: %w", unwrapJSON(err))
		}
	case kindIDs:
		var ids []*int64
		if err := json.Unmarshal(v, &ids); err != nil {
			return fmt.Errorf("want a list of integers: %w", unwrapJSON(err))
		}
		c.ids = make([]int64, len(ids))
		for i, id := range ids {
			if id == nil {
				c.null, c.nullAt = true, fmt.Sprintf("[%d]", i)
				return nil
			}
			c.ids[i] = *id
		}
	case kindMessages:
		var msgs []*struct {
			Role    *string `json:"role"`
			Content *string `json:"content"`
		}
		if err := json.Unmarshal(v, &msgs); err != nil {
			return fmt.Errorf("want a list of {role, content} messages: %w", unwrapJSON(err))
		}
		c.msgs = make([]Message, len(msgs))
		for i, m := range msgs {
			switch {
			case m == nil:
				c.nullAt = fmt.Sprintf("[%d]", i)
			case m.Role == nil:
				c.nullAt = fmt.Sprintf("[%d].role", i)
			case m.Content == nil:
				c.nullAt = fmt.Sprintf("[%d].content", i)
			}
			if c.nullAt != "" {
				c.null = true
				return nil
			}
			c.msgs[i] = Message{Role: *m.Role, Content: *m.Content}
		}
	}
	return nil
}

// unwrapJSON shortens encoding/json type errors to their essentials.
func unwrapJSON(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Errorf("found a JSON %s", te.Value)
	}
	return err
}
