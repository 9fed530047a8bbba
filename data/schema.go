package data

import (
	"fmt"
	"strings"

	"github.com/parquet-go/parquet-go/deprecated"
	"github.com/parquet-go/parquet-go/format"
)

// snode is a node of a Parquet schema, built from the footer's flat schema
// list so that list naming ("element", "item", "array", ...) is handled here
// rather than by parquet-go's struct mapping.
type snode struct {
	el       *format.SchemaElement
	parent   *snode
	children []*snode
	leaf     int // leaf (column chunk) index, -1 for groups
	def, rep int // maximum definition and repetition levels at this node
}

func (n *snode) name() string { return n.el.Name }
func (n *snode) isLeaf() bool { return n.leaf >= 0 }
func (n *snode) repeated() bool {
	return n.el.RepetitionType.Valid && n.el.RepetitionType.V == format.Repeated
}
func (n *snode) physical() format.Type { return n.el.Type.V }

// path returns the dotted path of n below the root.
func (n *snode) path() string {
	var parts []string
	for ; n != nil && n.parent != nil; n = n.parent {
		parts = append(parts, n.name())
	}
	for i, j := 0, len(parts)-1; i < j; i, j = i+1, j-1 {
		parts[i], parts[j] = parts[j], parts[i]
	}
	return strings.Join(parts, ".")
}

// buildSchema turns the footer's depth-first schema list into a tree and
// returns the root and the leaves in column-chunk order.
func buildSchema(elems []format.SchemaElement) (*snode, []*snode, error) {
	if len(elems) == 0 {
		return nil, nil, fmt.Errorf("empty schema")
	}
	var leaves []*snode
	pos := 0
	var build func(parent *snode, depth int) (*snode, error)
	build = func(parent *snode, depth int) (*snode, error) {
		if pos >= len(elems) {
			return nil, fmt.Errorf("schema ends early")
		}
		if depth > 64 {
			return nil, fmt.Errorf("schema nested too deeply")
		}
		el := &elems[pos]
		pos++
		n := &snode{el: el, parent: parent, leaf: -1}
		if parent != nil {
			n.def, n.rep = parent.def, parent.rep
			if el.RepetitionType.Valid {
				switch el.RepetitionType.V {
				case format.Optional:
					n.def++
				case format.Repeated:
					n.def++
					n.rep++
				}
			}
		}
		nc := 0
		if el.NumChildren.Valid {
			nc = int(el.NumChildren.V)
		}
		if nc < 0 || nc > len(elems)-pos {
			return nil, fmt.Errorf("schema element %q has %d children", el.Name, nc)
		}
		if nc == 0 && parent != nil {
			if !el.Type.Valid {
				return nil, fmt.Errorf("schema element %q has neither a type nor children", el.Name)
			}
			n.leaf = len(leaves)
			leaves = append(leaves, n)
			return n, nil
		}
		for range nc {
			c, err := build(n, depth+1)
			if err != nil {
				return nil, err
			}
			n.children = append(n.children, c)
		}
		return n, nil
	}
	root, err := build(nil, 0)
	if err != nil {
		return nil, nil, err
	}
	if pos != len(elems) {
		return nil, nil, fmt.Errorf("schema has %d elements after the root's children", len(elems)-pos)
	}
	return root, leaves, nil
}

// listOf reports whether n is a list and returns its repeated node and its
// element node, following the Parquet LIST backward-compatibility rules.
// Both the standard 3-level form (any element name: "element" from
// parquet-mr/DuckDB, "item" from arrow-rs/pyarrow) and 2-level forms are
// accepted, as is a bare repeated field.
func listOf(n *snode) (rep, elem *snode, ok bool) {
	if n.repeated() {
		return n, n, true
	}
	_, isList := n.el.LogicalType.Value.(*format.ListType)
	isList = isList ||
		n.el.ConvertedType.Valid && n.el.ConvertedType.V == deprecated.List
	if !isList || n.isLeaf() || len(n.children) != 1 || !n.children[0].repeated() {
		return nil, nil, false
	}
	r := n.children[0]
	if r.isLeaf() || len(r.children) != 1 || r.name() == "array" || r.name() == n.name()+"_tuple" {
		return r, r, true
	}
	return r, r.children[0], true
}

// isStringLeaf reports whether n holds text: BYTE_ARRAY annotated STRING,
// ENUM or JSON, or not annotated at all (Spark's binary-as-string).
func isStringLeaf(n *snode) bool {
	if !n.isLeaf() || n.repeated() || n.physical() != format.ByteArray {
		return false
	}
	if lt := n.el.LogicalType.Value; lt != nil {
		switch lt.(type) {
		case *format.StringType, *format.EnumType, *format.JsonType:
			return true
		}
		return false
	}
	if n.el.ConvertedType.Valid {
		switch n.el.ConvertedType.V {
		case deprecated.UTF8, deprecated.Enum, deprecated.Json:
			return true
		}
		return false
	}
	return true
}

// isIntLeaf reports whether n holds integers (INT32 or INT64, not decimal).
func isIntLeaf(n *snode) bool {
	if !n.isLeaf() || n.repeated() || (n.physical() != format.Int32 && n.physical() != format.Int64) {
		return false
	}
	return decimalScale(n) == 0 && !isTemporal(n)
}

// isNumberLeaf reports whether n holds a number usable as a float: DOUBLE,
// FLOAT, INT32 or INT64 (including decimals, which are scaled).
func isNumberLeaf(n *snode) bool {
	if !n.isLeaf() || n.repeated() {
		return false
	}
	switch n.physical() {
	case format.Double, format.Float:
		return true
	case format.Int32, format.Int64:
		return !isTemporal(n)
	}
	return false
}

func isTemporal(n *snode) bool {
	switch n.el.LogicalType.Value.(type) {
	case *format.DateType, *format.TimeType, *format.TimestampType:
		return true
	}
	if n.el.ConvertedType.Valid {
		switch n.el.ConvertedType.V {
		case deprecated.Date, deprecated.TimeMillis, deprecated.TimeMicros,
			deprecated.TimestampMillis, deprecated.TimestampMicros:
			return true
		}
	}
	return false
}

// decimalScale returns the scale of a decimal leaf, 0 otherwise.
func decimalScale(n *snode) int {
	if d, ok := n.el.LogicalType.Value.(*format.DecimalType); ok {
		return int(d.Scale)
	}
	if n.el.ConvertedType.Valid && n.el.ConvertedType.V == deprecated.Decimal && n.el.Scale.Valid {
		return int(n.el.Scale.V)
	}
	return 0
}

// isUnsigned reports whether an integer leaf is annotated unsigned.
func isUnsigned(n *snode) bool {
	if it, ok := n.el.LogicalType.Value.(*format.IntType); ok {
		return !it.IsSigned
	}
	if n.el.ConvertedType.Valid {
		switch n.el.ConvertedType.V {
		case deprecated.Uint8, deprecated.Uint16, deprecated.Uint32, deprecated.Uint64:
			return true
		}
	}
	return false
}

// describe renders n's type for error messages, e.g. "list<int64>".
func describe(n *snode) string {
	if rep, elem, ok := listOf(n); ok {
		if rep == n {
			return "repeated " + describeElem(n)
		}
		if elem == rep {
			return "list<" + describeElem(elem) + ">"
		}
		return "list<" + describe(elem) + ">"
	}
	return describeElem(n)
}

func describeElem(n *snode) string {
	if !n.isLeaf() {
		parts := make([]string, len(n.children))
		for i, c := range n.children {
			parts[i] = c.name() + ": " + describe(c)
		}
		return "struct<" + strings.Join(parts, ", ") + ">"
	}
	_, isDecimal := n.el.LogicalType.Value.(*format.DecimalType)
	switch {
	case n.physical() == format.ByteArray && isStringLeaf(n) && (n.el.LogicalType.Value != nil || n.el.ConvertedType.Valid):
		return "string"
	case isDecimal || n.el.ConvertedType.Valid && n.el.ConvertedType.V == deprecated.Decimal:
		return fmt.Sprintf("decimal(scale %d)", decimalScale(n))
	case isTemporal(n):
		return "date/time"
	}
	switch n.physical() {
	case format.Boolean:
		return "boolean"
	case format.Int32:
		return "int32"
	case format.Int64:
		return "int64"
	case format.Int96:
		return "int96"
	case format.Float:
		return "float"
	case format.Double:
		return "double"
	case format.ByteArray:
		return "binary"
	case format.FixedLenByteArray:
		return "fixed_len_byte_array"
	}
	return n.physical().String()
}

// fieldSpec says where a field's values live in the file.
type fieldSpec struct {
	kind          fieldKind
	top           *snode
	leaf          *snode // string, number, ids element
	role, content *snode // message fields
	rep, elem     *snode // list structure
}

// classify finds the kind of a top-level column and the leaves holding it.
// ok is false when the column's type fits no field kind.
func classify(n *snode) (fieldSpec, bool) {
	s := fieldSpec{top: n}
	if rep, elem, ok := listOf(n); ok {
		if rep.rep != 1 {
			return s, false
		}
		s.rep, s.elem = rep, elem
		if elem.isLeaf() {
			if rep != elem && elem.repeated() {
				return s, false
			}
			if elem.isLeaf() && (elem.physical() == format.Int32 || elem.physical() == format.Int64) &&
				decimalScale(elem) == 0 && !isTemporal(elem) {
				s.kind, s.leaf = kindIDs, elem
				return s, true
			}
			return s, false
		}
		for _, c := range elem.children {
			switch c.name() {
			case "role":
				s.role = c
			case "content":
				s.content = c
			}
		}
		if s.role != nil && s.content != nil && isStringLeaf(s.role) && isStringLeaf(s.content) {
			s.kind = kindMessages
			return s, true
		}
		return s, false
	}
	switch {
	case isStringLeaf(n):
		s.kind, s.leaf = kindString, n
	case n.isLeaf() && !n.repeated() && n.physical() == format.Boolean:
		s.kind, s.leaf = kindBool, n
	case isNumberLeaf(n):
		s.kind, s.leaf = kindFloat, n
	default:
		return s, false
	}
	return s, true
}

// wantFor says what types a field accepts, for error messages.
func wantFor(field string) string {
	switch field {
	case FieldPrompt, FieldChosen, FieldRejected, FieldCompletion:
		return "string or list<struct<role: string, content: string>>"
	case FieldMessages:
		return "list<struct<role: string, content: string>>"
	case FieldText:
		return "string"
	case FieldPromptIDs, FieldChosenIDs, FieldRejectedIDs, FieldCompletionIDs:
		return "list<int64> or list<int32>"
	case FieldLabel:
		return "boolean"
	}
	return "double, float or integer"
}

// accepts reports whether a field can hold values of kind k.
func accepts(field string, k fieldKind) bool {
	switch field {
	case FieldPrompt, FieldChosen, FieldRejected, FieldCompletion:
		return k == kindString || k == kindMessages
	case FieldMessages:
		return k == kindMessages
	case FieldText:
		return k == kindString
	case FieldPromptIDs, FieldChosenIDs, FieldRejectedIDs, FieldCompletionIDs:
		return k == kindIDs
	case FieldLabel:
		return k == kindBool
	}
	return k == kindFloat
}
