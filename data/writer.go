package data

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"reflect"
	"strings"

	"github.com/parquet-go/parquet-go"

	"ortalign/internal/atomicfile"
)

// Kind is the type of an output column.
type Kind int

// Output column kinds. Every output column is nullable.
const (
	Float64   Kind = iota + 1 // float64; Parquet DOUBLE
	Int64                     // int64; Parquet INT64
	String                    // string; Parquet BYTE_ARRAY (STRING)
	Messages                  // []Message; Parquet list<struct<role, content>>
	Int64List                 // []int64; Parquet list<int64>
)

// String returns the kind's name.
func (k Kind) String() string {
	switch k {
	case Float64:
		return "float64"
	case Int64:
		return "int64"
	case String:
		return "string"
	case Messages:
		return "messages"
	case Int64List:
		return "int64 list"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Column is one output column.
type Column struct {
	Name string
	Kind Kind
}

// rowGroupRows is the number of rows per Parquet row group in outputs.
const rowGroupRows = 8192

// Writer writes rows to a Parquet or JSON Lines file atomically (see
// internal/atomicfile): rows go to a temporary file next to the destination,
// which [Writer.Close] renames into place. On any error, and on
// [Writer.Abort], the temporary file is removed, so no partial output remains.
type Writer struct {
	path    string
	out     *atomicfile.File
	cols    []Column
	rows    int64
	err     error // first error; the writer is then unusable
	done    bool
	pw      *parquet.Writer
	leafs   []int // first leaf column index of each column (Parquet)
	row     parquet.Row
	jsonBuf []byte
}

// Create starts an output file; the format follows the extension: .parquet,
// or .jsonl / .ndjson. Column names must be unique and non-empty.
func Create(path string, cols []Column) (*Writer, error) {
	ext := strings.ToLower(filepath.Ext(path))
	if ext != ".parquet" && ext != ".jsonl" && ext != ".ndjson" {
		return nil, fmt.Errorf("create %s: unknown output format %q; use .parquet or .jsonl", path, ext)
	}
	seen := map[string]bool{}
	for _, c := range cols {
		if c.Name == "" || seen[c.Name] {
			return nil, fmt.Errorf("create %s: empty or repeated column name %q", path, c.Name)
		}
		if c.Kind < Float64 || c.Kind > Int64List {
			return nil, fmt.Errorf("create %s: column %q: unknown kind %v", path, c.Name, c.Kind)
		}
		seen[c.Name] = true
	}
	out, err := atomicfile.Create(path)
	if err != nil {
		return nil, err
	}
	w := &Writer{path: path, out: out, cols: cols}
	if ext == ".parquet" {
		w.pw = parquet.NewWriter(out, outputSchema(cols),
			parquet.Compression(&parquet.Zstd),
			parquet.MaxRowsPerRowGroup(rowGroupRows),
			parquet.CreatedBy("ortalign", "", ""),
		)
		leaf := 0
		for _, c := range cols {
			w.leafs = append(w.leafs, leaf)
			leaf++
			if c.Kind == Messages {
				leaf++
			}
		}
	}
	return w, nil
}

// Write appends one row: one value per column, in column order. A value is
// nil (null) or of the column's kind: float64 (float32 accepted), int64 (int,
// int32 accepted), string, []Message or []int64; a nil pointer to one of
// those is null too. On error the output is aborted.
func (w *Writer) Write(values ...any) error {
	if w.err != nil {
		return w.err
	}
	if w.done {
		return fmt.Errorf("write %s: writer is closed", w.path)
	}
	if len(values) != len(w.cols) {
		return w.fail(fmt.Errorf("write %s: row %d: %d values for %d columns", w.path, w.rows, len(values), len(w.cols)))
	}
	norm := make([]any, len(values))
	for i, v := range values {
		n, err := normalize(v, w.cols[i].Kind)
		if err != nil {
			return w.fail(fmt.Errorf("write %s: row %d, column %q: %w", w.path, w.rows, w.cols[i].Name, err))
		}
		norm[i] = n
	}
	var err error
	if w.pw != nil {
		err = w.writeParquet(norm)
	} else {
		err = w.writeJSON(norm)
	}
	if err != nil {
		return w.fail(fmt.Errorf("write %s: row %d: %w", w.path, w.rows, err))
	}
	w.rows++
	return nil
}

// Rows returns the number of rows written so far.
func (w *Writer) Rows() int64 { return w.rows }

// Close finishes the file and renames it into place. If anything failed,
// the temporary file is removed and the first error is returned.
func (w *Writer) Close() error {
	if w.err != nil {
		return w.err
	}
	if w.done {
		return nil
	}
	if w.pw != nil {
		if err := w.pw.Close(); err != nil {
			return w.fail(fmt.Errorf("write %s: %w", w.path, err))
		}
	}
	if err := w.out.Commit(); err != nil {
		w.err = err // Commit removed the temporary file
		return w.err
	}
	w.done = true
	return nil
}

// Abort discards the output. It is a no-op after a successful Close, so it
// can be deferred.
func (w *Writer) Abort() {
	if w.done || w.err != nil {
		return
	}
	w.fail(errors.New("aborted"))
}

// fail records err and removes the temporary file.
func (w *Writer) fail(err error) error {
	if w.err == nil {
		w.err = err
		w.out.Abort()
	}
	return w.err
}

// normalize checks v against kind and converts it to the canonical Go type
// (or nil for null).
func normalize(v any, k Kind) (any, error) {
	if v == nil {
		return nil, nil
	}
	if rv := reflect.ValueOf(v); rv.Kind() == reflect.Pointer {
		if rv.IsNil() {
			return nil, nil
		}
		v = rv.Elem().Interface()
	}
	switch k {
	case Float64:
		switch x := v.(type) {
		case float64:
			return x, nil
		case float32:
			return float64(x), nil
		}
	case Int64:
		switch x := v.(type) {
		case int64:
			return x, nil
		case int:
			return int64(x), nil
		case int32:
			return int64(x), nil
		}
	case String:
		if x, ok := v.(string); ok {
			return x, nil
		}
	case Messages:
		if x, ok := v.([]Message); ok {
			if x == nil {
				return nil, nil
			}
			return x, nil
		}
	case Int64List:
		if x, ok := v.([]int64); ok {
			if x == nil {
				return nil, nil
			}
			return x, nil
		}
	}
	return nil, fmt.Errorf("value of type %T for a %s column", v, k)
}

// orderedGroup is a Parquet group whose fields keep the given order
// (parquet.Group sorts them by name).
type orderedGroup struct {
	parquet.Group
	names []string
}

type orderedField struct {
	parquet.Node
	name string
}

func (f orderedField) Name() string { return f.name }

func (f orderedField) Value(base reflect.Value) reflect.Value {
	return base.MapIndex(reflect.ValueOf(f.name))
}

func (g orderedGroup) Fields() []parquet.Field {
	fs := make([]parquet.Field, len(g.names))
	for i, n := range g.names {
		fs[i] = orderedField{g.Group[n], n}
	}
	return fs
}

func newOrderedGroup(names []string, nodes []parquet.Node) orderedGroup {
	g := orderedGroup{Group: parquet.Group{}, names: names}
	for i, n := range names {
		g.Group[n] = nodes[i]
	}
	return g
}

// outputSchema maps columns to an ordered Parquet schema of optional fields.
func outputSchema(cols []Column) *parquet.Schema {
	names := make([]string, len(cols))
	nodes := make([]parquet.Node, len(cols))
	for i, c := range cols {
		names[i] = c.Name
		var n parquet.Node
		switch c.Kind {
		case Float64:
			n = parquet.Leaf(parquet.DoubleType)
		case Int64:
			n = parquet.Int(64)
		case String:
			n = parquet.String()
		case Messages:
			n = parquet.List(newOrderedGroup([]string{"role", "content"}, []parquet.Node{parquet.String(), parquet.String()}))
		case Int64List:
			n = parquet.List(parquet.Int(64))
		}
		nodes[i] = parquet.Optional(n)
	}
	return parquet.NewSchema("schema", newOrderedGroup(names, nodes))
}

// writeParquet appends one row with explicit repetition and definition
// levels: scalars have max definition level 1; lists have 2 (1 = empty).
func (w *Writer) writeParquet(values []any) error {
	row := w.row[:0]
	for i, v := range values {
		col := w.leafs[i]
		switch x := v.(type) {
		case nil:
			row = append(row, parquet.NullValue().Level(0, 0, col))
			if w.cols[i].Kind == Messages {
				row = append(row, parquet.NullValue().Level(0, 0, col+1))
			}
		case float64:
			row = append(row, parquet.DoubleValue(x).Level(0, 1, col))
		case int64:
			row = append(row, parquet.Int64Value(x).Level(0, 1, col))
		case string:
			row = append(row, parquet.ByteArrayValue([]byte(x)).Level(0, 1, col))
		case []int64:
			if len(x) == 0 {
				row = append(row, parquet.NullValue().Level(0, 1, col))
			}
			for j, id := range x {
				row = append(row, parquet.Int64Value(id).Level(min(j, 1), 2, col))
			}
		case []Message:
			if len(x) == 0 {
				row = append(row, parquet.NullValue().Level(0, 1, col), parquet.NullValue().Level(0, 1, col+1))
				break
			}
			for j, m := range x {
				row = append(row, parquet.ByteArrayValue([]byte(m.Role)).Level(min(j, 1), 2, col))
			}
			for j, m := range x {
				row = append(row, parquet.ByteArrayValue([]byte(m.Content)).Level(min(j, 1), 2, col+1))
			}
		}
	}
	w.row = row
	_, err := w.pw.WriteRows([]parquet.Row{row})
	return err
}

// writeJSON appends one JSON object. NaN and ±Inf, which JSON cannot hold,
// are written as null.
func (w *Writer) writeJSON(values []any) error {
	b := append(w.jsonBuf[:0], '{')
	for i, v := range values {
		if i > 0 {
			b = append(b, ',')
		}
		name, _ := json.Marshal(w.cols[i].Name)
		b = append(b, name...)
		b = append(b, ':')
		if f, ok := v.(float64); ok && (math.IsNaN(f) || math.IsInf(f, 0)) {
			v = nil
		}
		enc, err := json.Marshal(v)
		if err != nil {
			return err
		}
		b = append(b, enc...)
	}
	b = append(b, '}', '\n')
	w.jsonBuf = b
	_, err := w.out.Write(b)
	return err
}

// WriteFile writes all rows to path atomically; see [Create] and
// [Writer.Write].
func WriteFile(path string, cols []Column, rows [][]any) error {
	w, err := Create(path, cols)
	if err != nil {
		return err
	}
	defer w.Abort()
	for _, r := range rows {
		if err := w.Write(r...); err != nil {
			return err
		}
	}
	return w.Close()
}

var _ io.Closer = (*Dataset)(nil)
