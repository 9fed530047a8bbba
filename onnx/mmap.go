package onnx

import (
	"errors"
	"math"
	"os"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"

	"ortalign/onnx/onnxpb"
)

// Loading a model without copying its weights.
//
// os.ReadFile followed by proto.Unmarshal holds every weight twice (the file
// bytes, then the raw_data copies Unmarshal makes) and writes both copies into
// fresh pages; for a 650 MB model that is 1.3 GB of page faults. Instead Load
// maps the file and leaves the large raw_data of the main graph's initializers
// in the mapping: the model bytes without them (a few MB) are unmarshalled, and
// each such initializer's RawData is then set to its bytes in the mapping. Its
// pages are read from the page cache only when something reads the tensor.
//
// The mapping is private and writable (copy on write): code that writes into
// a tensor's RawData gets its own copy of the touched pages and never changes
// the file. Nothing in ortalign writes into raw data (Model.Clone shares it),
// but a violation stays safe.
//
// The mapping is never unmapped once a tensor refers to it: clones share the
// raw data, so no single Model knows when the last reference is gone, and an
// unmap (or a finalizer doing one) while a slice is still reachable would make
// the next read fault. It is released when the process exits; until then its
// clean pages are file-backed and the kernel may reclaim them under memory
// pressure like any page cache, so an unused model costs address space, not
// memory.
//
// The file must not be changed in place while the process runs: with a
// private mapping, pages not yet read or copied still follow the file, and
// truncating it makes reads past the new end fail with SIGBUS. ortalign itself
// never does that: Model.Save (and every other writer, through
// internal/atomicfile) writes a temporary file and renames it over the target,
// which replaces the directory entry with a new inode and leaves the mapped
// old one untouched, so saving over the file a model was loaded from is safe.
// Tools that rewrite a file in place (e.g. Python's onnx.save, or cp onto an
// existing file) must not target a model a running process has loaded.

// aliasMin is the smallest raw_data (in bytes) that is left in the mapped file
// instead of being copied. Below it the copy is cheap and keeps small tensors
// in ordinary memory. Files smaller than this are read, not mapped, since they
// cannot hold such a tensor. Tests lower it so that the small test models
// exercise the mapping.
var aliasMin = 64 << 10

// mmapEnabled turns the mapping off, for tests of the plain read.
var mmapEnabled = true

// Field numbers walked by stripRawData (see onnx.proto).
const (
	modelGraphField       protowire.Number = 7 // ModelProto.graph
	graphInitializerField protowire.Number = 5 // GraphProto.initializer
	tensorRawDataField    protowire.Number = 9 // TensorProto.raw_data
)

// readModel reads and parses the model file at path (external data is not
// resolved). It maps the file when it can and leaves large raw_data there;
// otherwise, or where mapping is not supported, it reads the file.
func readModel(path string) (*onnxpb.ModelProto, error) {
	p, _, err := readModelAliased(path)
	return p, err
}

// readModelMapped is readModel that also returns the mapping the model's raw_data
// refers to (nil when none does).
func readModelMapped(path string) (*onnxpb.ModelProto, []byte, error) {
	p, mapped, _, err := readModelFile(path)
	return p, mapped, err
}

// readModelAliased is readModel that also reports how many initializers'
// raw_data refer to the mapped file (0 when the file was read).
func readModelAliased(path string) (*onnxpb.ModelProto, int, error) {
	p, _, aliased, err := readModelFile(path)
	return p, aliased, err
}

func readModelFile(path string) (*onnxpb.ModelProto, []byte, int, error) {
	if b, ok := mapModelFile(path); ok {
		p, aliased, err := parseAliased(b, aliasMin)
		if aliased == 0 {
			// Nothing refers to the mapping: proto.Unmarshal copies every
			// bytes and string field, so it can go now. A failed unmap only
			// leaks address space.
			_ = unmapFile(b)
			b = nil
		}
		return p, b, aliased, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, 0, err
	}
	p, err := parseModel(b)
	return p, nil, 0, err
}

// AlignFloats copies, once, the raw data of m's main-graph float32 initializers of at
// least minElems elements that sit at an address FloatsView cannot read in place (a
// mapped model file leaves raw data wherever the file put it) into aligned memory; the
// values do not change. After it, every clone of m shares views that need no copy: for
// frozen weights that several sessions read (LoRA's base model), one copy instead of one
// per reader.
func (m *Model) AlignFloats(minElems int64) error {
	if !littleEndian {
		return nil // FloatsView never reads in place there
	}
	for _, t := range m.Graph().GetInitializer() {
		if DataType(t.GetDataType()) != Float || len(t.GetRawData()) < 4*int(minElems) {
			continue
		}
		if _, ok := FloatsView(t); ok {
			continue
		}
		data, err := TensorFloats(t)
		if err != nil {
			return err
		}
		t.RawData = unsafe.Slice((*byte)(unsafe.Pointer(&data[0])), 4*len(data))
	}
	return nil
}

// ReleaseResident lets the kernel take back the memory of the model file's pages that
// this process has read: they count in its resident memory, yet a training run only
// reads the weights once, into its own parameter buffers. Nothing is lost: a later read
// brings a page back from the file (pages written in this process, which the code base
// never does, stay). It does nothing for a model that was not mapped from its file.
func (m *Model) ReleaseResident() {
	if m.mapped != nil {
		pageOut(m.mapped)
	}
}

// mapModelFile maps the file at path, private and copy on write. ok is false
// when the file should be read instead: mapping is off or unsupported, the file
// is not a regular file, is too small to hold an aliased tensor, or any step
// failed (os.ReadFile then reports errors such as a missing file as before).
func mapModelFile(path string) (b []byte, ok bool) {
	if !mmapEnabled {
		return nil, false
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, false
	}
	defer f.Close() // the mapping does not need the descriptor
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return nil, false
	}
	size := st.Size()
	if size == 0 || size < int64(aliasMin) || size > math.MaxInt {
		return nil, false
	}
	b, err = mapFile(f, int(size))
	if err != nil {
		return nil, false
	}
	return b, true
}

// parseAliased parses the serialized model b like parseModel, but the
// raw_data of the main graph's initializers that is at least minSize bytes long is
// not copied: those tensors' RawData are subslices of b (capacity capped, so
// an append cannot run into the following bytes). aliased is how many. b must
// therefore stay valid and unchanged for as long as the model is used.
//
// The result equals parseModel(b)'s, errors included: when the wire format
// cannot be walked, or the reduced bytes do not parse, b is parsed whole (with
// copies) and that result is returned.
func parseAliased(b []byte, minSize int) (p *onnxpb.ModelProto, aliased int, err error) {
	small, raws, count, err := stripRawData(b, minSize)
	if err == nil && len(raws) > 0 {
		p, err = parseModel(small)
		if err == nil && len(p.Graph.Initializer) == count {
			for _, r := range raws {
				p.Graph.Initializer[r.index].RawData = r.data
			}
			return p, len(raws), nil
		}
	}
	// Nothing to alias, or something is off (a corrupt file): let
	// proto.Unmarshal of the whole file decide, with its own error.
	p, err = parseModel(b)
	return p, 0, err
}

// aliasedRaw is the raw_data of the index'th initializer of the main graph,
// left out of the reduced model bytes.
type aliasedRaw struct {
	index int
	data  []byte
}

// wireEdit replaces b[start:end] by repl when the reduced bytes are built.
type wireEdit struct {
	start, end int
	repl       []byte
}

// rawStripper walks a serialized ModelProto and plans the edits that leave
// out large raw_data fields of the main graph's initializers (and shorten the
// length prefixes of the messages around them).
type rawStripper struct {
	b       []byte
	minSize int
	edits   []wireEdit // in increasing, non-overlapping order of start
	raws    []aliasedRaw
	count   int // initializers seen so far, over all occurrences of the graph field
}

// wireField is the position of one field in the walked bytes.
type wireField struct {
	num protowire.Number
	typ protowire.Type
	// start is where the tag starts and end where the field ends. For a
	// length-delimited field the length prefix is [lenStart, data) and the
	// contents [data, end); otherwise lenStart == data is where the value
	// starts.
	start, lenStart, data, end int
}

// stripRawData returns b without the raw_data fields of at least minSize bytes of
// the main graph's initializers, the left-out data of each initializer whose
// final raw_data was left out (in order), and the number of initializers.
// Everything else is kept byte for byte, so proto.Unmarshal of small gives
// what proto.Unmarshal of b gives, except for those initializers' RawData.
//
// The walk follows the protobuf rules that Unmarshal applies: a repeated
// occurrence of the graph field merges into the first (so the initializers of
// all occurrences are numbered in order), the last raw_data of a tensor wins,
// and a field with an unexpected wire type is an unknown field (copied).
func stripRawData(b []byte, minSize int) (small []byte, raws []aliasedRaw, count int, err error) {
	s := &rawStripper{b: b, minSize: minSize}
	shrink, err := s.fields(0, len(b), func(f wireField) (int, error) {
		if f.num == modelGraphField && f.typ == protowire.BytesType {
			return s.message(f, s.graphField)
		}
		return 0, nil
	})
	if err != nil {
		return nil, nil, 0, err
	}
	if shrink == 0 {
		return b, nil, s.count, nil
	}
	small = make([]byte, 0, len(b)-shrink)
	pos := 0
	for _, e := range s.edits {
		small = append(small, b[pos:e.start]...)
		small = append(small, e.repl...)
		pos = e.end
	}
	small = append(small, b[pos:]...)
	return small, s.raws, s.count, nil
}

// errWire reports bytes that are not a well-formed protobuf message.
var errWire = errors.New("malformed protobuf wire data")

// fields calls fn for each field of the message in b[start:end]. fn returns
// how many bytes its edits removed; fields returns the sum.
func (s *rawStripper) fields(start, end int, fn func(wireField) (int, error)) (int, error) {
	shrink := 0
	for off := start; off < end; {
		num, typ, n := protowire.ConsumeTag(s.b[off:end])
		if n < 0 {
			return 0, errWire
		}
		f := wireField{num: num, typ: typ, start: off, lenStart: off + n, data: off + n}
		m := protowire.ConsumeFieldValue(num, typ, s.b[f.lenStart:end])
		if m < 0 {
			return 0, errWire
		}
		f.end = f.lenStart + m
		if typ == protowire.BytesType {
			_, k := protowire.ConsumeVarint(s.b[f.lenStart:end])
			f.data += k
		}
		d, err := fn(f)
		if err != nil {
			return 0, err
		}
		shrink += d
		off = f.end
	}
	return shrink, nil
}

// message walks the embedded message in the length-delimited field f, calling
// field for each of its fields. If that removes bytes, f's length prefix is
// rewritten; message returns how many bytes f shrank by in all.
func (s *rawStripper) message(f wireField, field func(wireField) (int, error)) (int, error) {
	at := len(s.edits) // the prefix edit goes before the contents' edits
	shrink, err := s.fields(f.data, f.end, field)
	if err != nil || shrink == 0 {
		return 0, err
	}
	prefix := protowire.AppendVarint(nil, uint64(f.end-f.data-shrink))
	s.edits = append(s.edits, wireEdit{})
	copy(s.edits[at+1:], s.edits[at:])
	s.edits[at] = wireEdit{start: f.lenStart, end: f.data, repl: prefix}
	return shrink + (f.data - f.lenStart) - len(prefix), nil
}

// graphField handles a field of the main graph: initializers are walked, and
// their large raw_data left out.
func (s *rawStripper) graphField(f wireField) (int, error) {
	if f.num != graphInitializerField || f.typ != protowire.BytesType {
		return 0, nil
	}
	index := s.count
	s.count++
	var last []byte // the tensor's final raw_data, if it was left out
	shrink, err := s.message(f, func(f wireField) (int, error) {
		if f.num != tensorRawDataField || f.typ != protowire.BytesType {
			return 0, nil
		}
		if f.end-f.data < s.minSize {
			last = nil // this later, kept raw_data wins
			return 0, nil
		}
		last = s.b[f.data:f.end:f.end]
		s.edits = append(s.edits, wireEdit{start: f.start, end: f.end})
		return f.end - f.start, nil
	})
	if err != nil {
		return 0, err
	}
	if last != nil {
		s.raws = append(s.raws, aliasedRaw{index: index, data: last})
	}
	return shrink, nil
}
