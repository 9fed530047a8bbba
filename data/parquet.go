package data

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/encoding/thrift"
	"github.com/parquet-go/parquet-go/format"
)

// maxPageSize bounds the sizes a page header may declare, so that a corrupt
// header cannot make the decoder allocate gigabytes.
const maxPageSize = 1 << 30

// Dataset is an open preference dataset. Its read methods may be called
// concurrently, e.g. one goroutine per row group.
type Dataset struct {
	Path    string // as given to Open; errors name it
	Layout  Layout
	Use     Use   // as given to Open
	NumRows int64 // rows in the file, skipped rows included

	// Columns maps each canonical field read (see [Options.Columns]) to the
	// file's column name.
	Columns map[string]string

	strict bool
	plan   *plan

	// Parquet
	osf      *os.File
	pf       *parquet.File
	size     int64
	specs    map[string]fieldSpec
	rowStart []int64

	// JSONL
	jsonl *jsonlData
}

// Open opens a dataset and validates its schema against the layouts of the
// package documentation that [Options.Use] accepts.
//
// Files ending in .jsonl or .ndjson are JSON Lines (one object per line, the
// keys named like the columns); they are parsed and checked whole here, and
// Example.Row is the record's index. All other files are Parquet: Open
// checks the framing, footer and schema and reads no row data; the rows are
// decoded by [Dataset.ReadRowGroup] and [Dataset.ReadAll].
func Open(path string, o Options) (*Dataset, error) {
	names, err := resolveColumns(o)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	switch strings.ToLower(filepath.Ext(path)) {
	case ".jsonl", ".ndjson":
		return openJSONL(path, names, o.Use, o.Strict)
	}
	d := &Dataset{Path: path, Use: o.Use, strict: o.Strict}
	if err := d.safeOpenParquet(names); err != nil {
		d.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return d, nil
}

// Close releases the file.
func (d *Dataset) Close() error {
	if d.osf == nil {
		return nil
	}
	err := d.osf.Close()
	d.osf, d.pf = nil, nil
	return err
}

// HasField reports whether the dataset has a column for a canonical field
// that is read, e.g. [FieldRefChosenLogps].
func (d *Dataset) HasField(field string) bool {
	_, ok := d.plan.kinds[field]
	return ok
}

// NumRowGroups returns the number of row groups; a JSONL dataset has one.
// Row groups are the unit for sharding.
func (d *Dataset) NumRowGroups() int {
	if d.jsonl != nil {
		return 1
	}
	return len(d.rowStart)
}

// RowGroupRows is the number of rows in row group g (all of them for JSON Lines, which
// is one group), skipped rows included.
func (d *Dataset) RowGroupRows(g int) int64 {
	switch {
	case d.jsonl != nil:
		return d.NumRows
	case g < 0 || g >= len(d.rowStart):
		return 0
	case g+1 < len(d.rowStart):
		return d.rowStart[g+1] - d.rowStart[g]
	}
	return d.NumRows - d.rowStart[g]
}

// ReadAll reads every row. Rows with a null required value are returned as
// skipped rows (or are an error with [Options.Strict]); examples keep file
// order.
func (d *Dataset) ReadAll() ([]Example, []SkippedRow, error) {
	var all []Example
	var skipped []SkippedRow
	for i := range d.NumRowGroups() {
		ex, sk, err := d.ReadRowGroup(i)
		if err != nil {
			return nil, nil, err
		}
		all = append(all, ex...)
		skipped = append(skipped, sk...)
	}
	return all, skipped, nil
}

// ReadRowGroup reads the rows of row group i (0-based).
func (d *Dataset) ReadRowGroup(i int) (ex []Example, skipped []SkippedRow, err error) {
	if i < 0 || i >= d.NumRowGroups() {
		return nil, nil, fmt.Errorf("read %s: row group %d out of range [0, %d)", d.Path, i, d.NumRowGroups())
	}
	if d.jsonl != nil {
		return d.readJSONL()
	}
	if d.pf == nil {
		return nil, nil, fmt.Errorf("read %s: dataset is closed", d.Path)
	}
	var column string // the column being decoded, for the panic message
	defer func() {
		if r := recover(); r != nil {
			ex, skipped = nil, nil
			where := ""
			if column != "" {
				where = fmt.Sprintf(", column %q", column)
			}
			err = fmt.Errorf("read %s: row group %d%s: corrupt page: %v", d.Path, i, where, r)
		}
	}()
	return d.readRowGroup(i, &column)
}

// safeOpenParquet is openParquet with a panic on malformed metadata turned
// into an error.
func (d *Dataset) safeOpenParquet(names map[string]string) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("corrupt footer: %v", r)
		}
	}()
	return d.openParquet(names)
}

// openParquet checks the framing and footer, then the schema.
func (d *Dataset) openParquet(names map[string]string) error {
	f, err := os.Open(d.Path)
	if err != nil {
		return err
	}
	d.osf = f
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.IsDir() {
		return fmt.Errorf("is a directory, want a Parquet or JSONL file")
	}
	d.size = st.Size()
	if d.size == 0 {
		return fmt.Errorf("empty file (0 bytes), not a Parquet file")
	}
	var head [4]byte
	if _, err := f.ReadAt(head[:], 0); err != nil || string(head[:]) != "PAR1" {
		if string(head[:]) == "PARE" {
			return fmt.Errorf("encrypted Parquet files are not supported")
		}
		return fmt.Errorf("not a Parquet file (it does not start with \"PAR1\"; JSON Lines files must end in .jsonl)")
	}
	var tail [8]byte
	if d.size < 12 {
		return fmt.Errorf("truncated Parquet file (%d bytes)", d.size)
	}
	if _, err := f.ReadAt(tail[:], d.size-8); err != nil {
		return fmt.Errorf("reading footer: %w", err)
	}
	if string(tail[4:]) != "PAR1" {
		return fmt.Errorf("truncated or incomplete Parquet file (%d bytes; it does not end with \"PAR1\")", d.size)
	}
	footerLen := int64(binary.LittleEndian.Uint32(tail[:4]))
	if footerLen == 0 || footerLen > d.size-12 {
		return fmt.Errorf("corrupt footer: footer length %d does not fit in the %d-byte file", footerLen, d.size)
	}

	pf, err := safeOpenFile(f, d.size)
	if err != nil {
		return fmt.Errorf("corrupt footer: %w", err)
	}
	d.pf = pf
	md := pf.Metadata()
	root, leaves, err := buildSchema(md.Schema)
	if err != nil {
		return fmt.Errorf("corrupt footer: schema: %w", err)
	}

	// Row groups must agree with the schema and with each other.
	dataEnd := d.size - 8 - footerLen
	var rows int64
	for i := range md.RowGroups {
		rg := &md.RowGroups[i]
		if len(rg.Columns) != len(leaves) {
			return fmt.Errorf("corrupt footer: row group %d has %d column chunks, the schema has %d columns", i, len(rg.Columns), len(leaves))
		}
		if rg.NumRows < 0 || rows+rg.NumRows < rows {
			return fmt.Errorf("corrupt footer: row group %d has %d rows", i, rg.NumRows)
		}
		for j := range rg.Columns {
			cc := &rg.Columns[j]
			if cc.FilePath != "" {
				return fmt.Errorf("row group %d: column %q is stored in another file (%s), which is not supported", i, leaves[j].path(), cc.FilePath)
			}
			if cc.MetaData.Type != leaves[j].physical() {
				return fmt.Errorf("corrupt footer: row group %d: column %q has type %s, the schema says %s", i, leaves[j].path(), cc.MetaData.Type, leaves[j].physical())
			}
			start, size := chunkRange(cc)
			if start < 4 || size < 0 || start > dataEnd || size > dataEnd-start {
				return fmt.Errorf("corrupt footer: row group %d: column %q: chunk [%d, +%d) outside the data area [4, %d)", i, leaves[j].path(), start, size, dataEnd)
			}
		}
		d.rowStart = append(d.rowStart, rows)
		rows += rg.NumRows
	}
	if rows != md.NumRows {
		return fmt.Errorf("corrupt footer: row groups hold %d rows, the footer says %d", rows, md.NumRows)
	}
	if len(pf.RowGroups()) != len(md.RowGroups) {
		return fmt.Errorf("corrupt footer: %d row groups opened of %d", len(pf.RowGroups()), len(md.RowGroups))
	}
	d.NumRows = rows

	// Schema validation against the layouts.
	top := map[string]*snode{}
	var columns []string
	for _, c := range root.children {
		top[c.name()] = c
		columns = append(columns, c.name())
	}
	d.specs = map[string]fieldSpec{}
	p, err := detectLayout(names, columns, d.Use, func(field, column string) (fieldKind, bool, error) {
		n, ok := top[column]
		if !ok {
			return 0, false, nil
		}
		s, ok := classify(n)
		if !ok || !accepts(field, s.kind) {
			return 0, false, fmt.Errorf("column %s has type %s, want %s", describeColumn(names, field), describe(n), wantFor(field))
		}
		d.specs[field] = s
		return s.kind, true, nil
	})
	if err != nil {
		return err
	}
	d.plan = p
	d.Layout = p.layout
	d.Columns = map[string]string{}
	for f := range p.kinds {
		d.Columns[f] = names[f]
	}
	return nil
}

// safeOpenFile calls parquet.OpenFile, turning a panic into an error.
func safeOpenFile(r io.ReaderAt, size int64) (pf *parquet.File, err error) {
	defer func() {
		if p := recover(); p != nil {
			pf, err = nil, fmt.Errorf("%v", p)
		}
	}()
	return parquet.OpenFile(r, size,
		parquet.SkipPageIndex(true),
		parquet.SkipBloomFilters(true),
		parquet.OptimisticRead(false),
	)
}

// chunkRange returns where a column chunk's pages lie, the way parquet-go
// reads them.
func chunkRange(cc *format.ColumnChunk) (start, size int64) {
	start = cc.MetaData.DataPageOffset
	if cc.MetaData.DictionaryPageOffset != 0 {
		start = cc.MetaData.DictionaryPageOffset
	}
	return start, cc.MetaData.TotalCompressedSize
}

// checkPages walks a column chunk's page headers before parquet-go decodes
// them, so that sizes that overrun the chunk or are implausibly large are an
// error rather than a huge allocation or a panic.
func checkPages(r io.ReaderAt, cc *format.ColumnChunk) error {
	start, size := chunkRange(cc)
	end := start + size
	var values int64
	for pos := start; pos < end; {
		var h format.PageHeader
		n, err := readPageHeader(r, pos, end, &h)
		if err != nil {
			return fmt.Errorf("page header at offset %d: %w", pos, err)
		}
		switch {
		case h.CompressedPageSize < 0 || int64(h.CompressedPageSize) > end-pos-int64(n):
			return fmt.Errorf("page at offset %d: compressed size %d overruns the column chunk", pos, h.CompressedPageSize)
		case h.UncompressedPageSize < 0 || h.UncompressedPageSize > maxPageSize:
			return fmt.Errorf("page at offset %d: implausible uncompressed size %d", pos, h.UncompressedPageSize)
		}
		switch h.Type {
		case format.DataPage:
			if !h.DataPageHeader.Valid || h.DataPageHeader.V.NumValues < 0 {
				return fmt.Errorf("page at offset %d: bad data page header", pos)
			}
			values += int64(h.DataPageHeader.V.NumValues)
		case format.DataPageV2:
			v := h.DataPageHeaderV2.V
			if !h.DataPageHeaderV2.Valid || v.NumValues < 0 || v.NumNulls < 0 || v.NumRows < 0 ||
				v.RepetitionLevelsByteLength < 0 || v.DefinitionLevelsByteLength < 0 ||
				int64(v.RepetitionLevelsByteLength)+int64(v.DefinitionLevelsByteLength) > int64(h.CompressedPageSize) {
				return fmt.Errorf("page at offset %d: bad data page v2 header", pos)
			}
			values += int64(v.NumValues)
		case format.DictionaryPage:
			if !h.DictionaryPageHeader.Valid || h.DictionaryPageHeader.V.NumValues < 0 {
				return fmt.Errorf("page at offset %d: bad dictionary page header", pos)
			}
		case format.IndexPage:
		default:
			return fmt.Errorf("page at offset %d: unknown page type %d", pos, h.Type)
		}
		pos += int64(n) + int64(h.CompressedPageSize)
	}
	if values != cc.MetaData.NumValues {
		return fmt.Errorf("pages hold %d values, the footer says %d", values, cc.MetaData.NumValues)
	}
	return nil
}

// readPageHeader decodes the page header at pos from a bounded buffer, so a
// corrupt length cannot cause a large allocation, and returns its size.
func readPageHeader(r io.ReaderAt, pos, end int64, h *format.PageHeader) (int, error) {
	var proto thrift.CompactProtocol
	for n := int64(4096); ; n *= 4 {
		n = min(n, end-pos)
		buf := make([]byte, n)
		if _, err := r.ReadAt(buf, pos); err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		*h = format.PageHeader{}
		br := proto.NewReaderFromBytes(buf)
		err := thrift.NewDecoder(br).Decode(h)
		if err == nil {
			return br.BytesRead(), nil
		}
		if n == end-pos {
			return 0, err
		}
	}
}

// leafValues holds one leaf column's decoded levels and values for a row group.
type leafValues struct {
	reps, defs []uint8
	strs       []string
	ints       []int64
	flts       []float64
	bools      []bool
}

// readLeaf decodes every page of one column chunk.
func (d *Dataset) readLeaf(rg parquet.RowGroup, leaf *snode) (*leafValues, error) {
	chunk := rg.ColumnChunks()[leaf.leaf]
	pages := chunk.Pages()
	defer pages.Close()
	lv := &leafValues{}
	buf := make([]parquet.Value, 1024)
	phys := leaf.physical()
	unsigned := isUnsigned(leaf)
	for {
		page, err := pages.ReadPage()
		if err == io.EOF {
			return lv, nil
		}
		if err != nil {
			return nil, err
		}
		vr := page.Values()
		for {
			n, err := vr.ReadValues(buf)
			for _, v := range buf[:n] {
				lv.reps = append(lv.reps, uint8(v.RepetitionLevel()))
				lv.defs = append(lv.defs, uint8(v.DefinitionLevel()))
				null := v.IsNull()
				switch phys {
				case format.ByteArray:
					s := ""
					if !null {
						s = string(v.ByteArray())
					}
					lv.strs = append(lv.strs, s)
				case format.Int32:
					var x int64
					if !null {
						if unsigned {
							x = int64(uint32(v.Int32()))
						} else {
							x = int64(v.Int32())
						}
					}
					lv.ints = append(lv.ints, x)
				case format.Int64:
					var x int64
					if !null {
						x = v.Int64()
					}
					lv.ints = append(lv.ints, x)
				case format.Float:
					var x float64
					if !null {
						x = float64(v.Float())
					}
					lv.flts = append(lv.flts, x)
				case format.Double:
					var x float64
					if !null {
						x = v.Double()
					}
					lv.flts = append(lv.flts, x)
				case format.Boolean:
					lv.bools = append(lv.bools, !null && v.Boolean())
				default:
					return nil, fmt.Errorf("unsupported physical type %s", phys)
				}
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				return nil, err
			}
			if n == 0 {
				return nil, fmt.Errorf("page reader made no progress")
			}
		}
	}
}

// number returns entry i of a numeric leaf as float64.
func (lv *leafValues) number(i int, scale float64) float64 {
	if lv.flts != nil {
		return lv.flts[i]
	}
	return float64(lv.ints[i]) / scale
}

// rowLists splits a repeated leaf's entries into rows: for each row whether
// it is null and the indices of its list entries.
func rowLists(lv *leafValues, numRows int64, dTop, dList int) (null []bool, entries [][]int, err error) {
	null = make([]bool, 0, numRows)
	entries = make([][]int, 0, numRows)
	for i := range lv.defs {
		if lv.reps[i] == 0 {
			if int64(len(null)) == numRows {
				return nil, nil, fmt.Errorf("more than the row group's %d rows", numRows)
			}
			null = append(null, int(lv.defs[i]) < dTop)
			entries = append(entries, nil)
		} else if len(null) == 0 {
			return nil, nil, fmt.Errorf("first value continues a list")
		}
		r := len(null) - 1
		if !null[r] && int(lv.defs[i]) >= dList {
			entries[r] = append(entries[r], i)
		}
	}
	if int64(len(null)) != numRows {
		return nil, nil, fmt.Errorf("%d rows, the row group has %d", len(null), numRows)
	}
	return null, entries, nil
}

// readRowGroup decodes the fields of one row group into examples.
func (d *Dataset) readRowGroup(gi int, column *string) ([]Example, []SkippedRow, error) {
	rg := d.pf.RowGroups()[gi]
	mrg := &d.pf.Metadata().RowGroups[gi]
	numRows := mrg.NumRows
	first := d.rowStart[gi]
	if numRows == 0 {
		return nil, nil, nil
	}
	cells := map[string][]cell{}
	for _, field := range d.plan.fields() {
		spec := d.specs[field]
		col := d.plan.column(field)
		*column = col
		fail := func(err error) ([]Example, []SkippedRow, error) {
			return nil, nil, fmt.Errorf("read %s: row group %d, column %q: corrupt page: %w", d.Path, gi, col, err)
		}
		read := func(leaf *snode) (*leafValues, error) {
			if err := checkPages(d.osf, &mrg.Columns[leaf.leaf]); err != nil {
				return nil, err
			}
			return d.readLeaf(rg, leaf)
		}
		cs := make([]cell, numRows)
		switch spec.kind {
		case kindString, kindFloat, kindBool:
			lv, err := read(spec.leaf)
			if err != nil {
				return fail(err)
			}
			if int64(len(lv.defs)) != numRows {
				return fail(fmt.Errorf("%d values, the row group has %d rows", len(lv.defs), numRows))
			}
			scale := math.Pow10(decimalScale(spec.leaf))
			for r := range cs {
				if int(lv.defs[r]) < spec.leaf.def {
					cs[r].null = true
				} else if spec.kind == kindString {
					cs[r].s = lv.strs[r]
				} else if spec.kind == kindBool {
					cs[r].b = lv.bools[r]
				} else {
					cs[r].f = lv.number(r, scale)
				}
			}
		case kindIDs:
			lv, err := read(spec.leaf)
			if err != nil {
				return fail(err)
			}
			null, entries, err := rowLists(lv, numRows, topDef(spec.top), spec.rep.def)
			if err != nil {
				return fail(err)
			}
			for r := range cs {
				if null[r] {
					cs[r].null = true
					continue
				}
				ids := make([]int64, len(entries[r]))
				for k, e := range entries[r] {
					if int(lv.defs[e]) < spec.leaf.def {
						cs[r].null, cs[r].nullAt = true, fmt.Sprintf("[%d]", k)
						break
					}
					ids[k] = lv.ints[e]
				}
				cs[r].ids = ids
			}
		case kindMessages:
			roles, err := read(spec.role)
			if err != nil {
				return fail(err)
			}
			contents, err := read(spec.content)
			if err != nil {
				return fail(err)
			}
			rNull, rEnt, err := rowLists(roles, numRows, topDef(spec.top), spec.rep.def)
			if err != nil {
				return fail(err)
			}
			_, cEnt, err := rowLists(contents, numRows, topDef(spec.top), spec.rep.def)
			if err != nil {
				return fail(err)
			}
			for r := range cs {
				if rNull[r] {
					cs[r].null = true
					continue
				}
				if len(rEnt[r]) != len(cEnt[r]) {
					return fail(fmt.Errorf("row %d: %d roles but %d contents", first+int64(r), len(rEnt[r]), len(cEnt[r])))
				}
				msgs := make([]Message, len(rEnt[r]))
				for k := range msgs {
					ri, ci := rEnt[r][k], cEnt[r][k]
					switch {
					case int(roles.defs[ri]) < spec.elem.def:
						cs[r].nullAt = fmt.Sprintf("[%d]", k)
					case int(roles.defs[ri]) < spec.role.def:
						cs[r].nullAt = fmt.Sprintf("[%d].role", k)
					case int(contents.defs[ci]) < spec.content.def:
						cs[r].nullAt = fmt.Sprintf("[%d].content", k)
					}
					if cs[r].nullAt != "" {
						cs[r].null = true
						break
					}
					msgs[k] = Message{Role: roles.strs[ri], Content: contents.strs[ci]}
				}
				cs[r].msgs = msgs
			}
		}
		cells[field] = cs
	}
	*column = ""
	return d.assemble(first, int(numRows), cells)
}

// topDef is the definition level at which a top-level list is non-null. A
// bare repeated field cannot be null.
func topDef(top *snode) int {
	if top.repeated() {
		return 0
	}
	return top.def
}

// assemble builds examples from per-field cells, validating text and applying
// the null policy.
func (d *Dataset) assemble(first int64, n int, cells map[string][]cell) ([]Example, []SkippedRow, error) {
	exs := make([]Example, 0, n)
	var skipped []SkippedRow
	for r := range n {
		row := first + int64(r)
		for field, cs := range cells {
			if err := checkUTF8(&cs[r]); err != nil {
				return nil, nil, fmt.Errorf("read %s: row %d, column %q: %w", d.Path, row, d.plan.column(field), err)
			}
		}
		ex, skip := d.plan.build(row, func(f string) *cell { return &cells[f][r] })
		if skip != nil {
			if d.strict {
				return nil, nil, fmt.Errorf("read %w", &RowError{Path: d.Path, SkippedRow: *skip})
			}
			skipped = append(skipped, *skip)
			continue
		}
		exs = append(exs, ex)
	}
	return exs, skipped, nil
}

// checkUTF8 rejects text that is not valid UTF-8.
func checkUTF8(c *cell) error {
	if !utf8.ValidString(c.s) {
		return fmt.Errorf("invalid UTF-8 text")
	}
	for i, m := range c.msgs {
		if !utf8.ValidString(m.Role) || !utf8.ValidString(m.Content) {
			return fmt.Errorf("message %d: invalid UTF-8 text", i)
		}
	}
	return nil
}
