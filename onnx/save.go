package onnx

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"ortalign/internal/atomicfile"
	"ortalign/onnx/onnxpb"
)

// ExternalDataMode says which tensors Save writes to external data files.
type ExternalDataMode int

const (
	// ExternalAuto keeps the layout the model was loaded (or last saved)
	// with: tensors that were external stay external, in files of the same
	// names next to the new model, at the same offsets where they still
	// fit; other tensors are inline. If the model would exceed MaxProtoSize,
	// inline tensors of at least SizeThreshold bytes move to
	// ExternalDataName as well.
	ExternalAuto ExternalDataMode = iota
	// ExternalAlways keeps the tensors that were external where they were,
	// as ExternalAuto does, and also moves every other tensor of at least
	// SizeThreshold bytes to ExternalDataName.
	ExternalAlways
	// ExternalNever writes every tensor inline. Saving fails if the model
	// would exceed MaxProtoSize.
	ExternalNever
)

// String returns the mode's name.
func (m ExternalDataMode) String() string {
	switch m {
	case ExternalAuto:
		return "auto"
	case ExternalAlways:
		return "always"
	case ExternalNever:
		return "never"
	}
	return fmt.Sprintf("ExternalDataMode(%d)", int(m))
}

// DefaultSizeThreshold is the SizeThreshold used when SaveOptions leaves it 0:
// tensors smaller than 1 KiB stay inline, as with onnx.save_model.
const DefaultSizeThreshold = 1024

// SaveOptions controls how Save lays out tensor data.
type SaveOptions struct {
	// ExternalData selects which tensors go to external files (default ExternalAuto).
	ExternalData ExternalDataMode
	// ExternalDataName is the file, relative to the model's directory, for
	// tensors that are newly moved out of the model. Default: the data file
	// the model already uses (the first in model order), else the model's
	// file name + "_data" (model.onnx -> model.onnx_data).
	ExternalDataName string
	// SizeThreshold is the smallest tensor, in bytes of data, that is newly
	// moved to an external file. 0 means DefaultSizeThreshold; a negative
	// value moves every tensor that has raw data.
	SizeThreshold int
}

// placementState is what Save changes in a tensor and restores afterwards.
type placementState struct {
	raw      []byte
	external []*onnxpb.StringStringEntryProto
	location *onnxpb.TensorProto_DataLocation
}

// Save writes the model to path atomically: every file (the model and its
// external data files) is written to a temporary file in the target
// directory, synced, and renamed into place only after all were written, so
// a failed save leaves neither partial nor temporary files. Data types, dims
// and all other fields are written exactly as they are in memory.
//
// After a successful save the model remembers the new layout, so a later
// ExternalAuto save repeats it.
func (m *Model) Save(path string, opts SaveOptions) error {
	if err := m.save(path, opts); err != nil {
		return fmt.Errorf("save %s: %w", path, err)
	}
	return nil
}

func (m *Model) save(target string, opts SaveOptions) error {
	if opts.ExternalData < ExternalAuto || opts.ExternalData > ExternalNever {
		return fmt.Errorf("unknown external data mode %d", int(opts.ExternalData))
	}
	if st, err := os.Stat(target); err == nil && st.IsDir() {
		return errors.New("target is a directory")
	}
	dir := filepath.Dir(target)
	base := filepath.Base(target)
	if st, err := os.Stat(dir); err != nil {
		return fmt.Errorf("model directory: %w", err)
	} else if !st.IsDir() {
		return fmt.Errorf("model directory %s is not a directory", dir)
	}
	threshold := opts.SizeThreshold
	if threshold == 0 {
		threshold = DefaultSizeThreshold
	}
	if err := checkNoUnresolved(m.proto); err != nil {
		return err
	}

	type tensorRef struct {
		t     *onnxpb.TensorProto
		where string
	}
	var all []tensorRef
	walkTensors(m.proto, func(t *onnxpb.TensorProto, where string) error {
		all = append(all, tensorRef{t, where})
		return nil
	})

	plan := map[*onnxpb.TensorProto]*externalPlacement{}
	var newName string // data file for newly external tensors, chosen below
	eligible := func(t *onnxpb.TensorProto) bool {
		return t.RawData != nil && t.Segment == nil && DataType(t.GetDataType()) != String
	}
	addNew := func() {
		for _, r := range all {
			if plan[r.t] == nil && eligible(r.t) && len(r.t.RawData) >= threshold {
				plan[r.t] = &externalPlacement{t: r.t, loc: ExternalLocation{Location: newName, Offset: -1}}
			}
		}
	}
	if opts.ExternalData != ExternalNever {
		usedNames := map[string]bool{}
		for _, r := range all {
			if !eligible(r.t) {
				continue
			}
			loc, ok := m.ext[r.t]
			if !ok && r.t.GetName() != "" && !usedNames[r.t.GetName()] {
				loc, ok = m.extByName[r.t.GetName()]
			}
			if !ok {
				continue
			}
			usedNames[r.t.GetName()] = true
			if loc.Location == base {
				return fmt.Errorf("%s: external data file %q is the model file itself", r.where, loc.Location)
			}
			plan[r.t] = &externalPlacement{t: r.t, loc: loc}
		}
	}
	newName = opts.ExternalDataName
	if newName == "" {
		// Join the file the model already uses, else model.onnx_data.
		newName = base + "_data"
		for _, r := range all {
			if pl := plan[r.t]; pl != nil {
				newName = pl.loc.Location
				break
			}
		}
	}
	newName, err := cleanLocation(newName)
	if err != nil {
		return fmt.Errorf("external data name: %w", err)
	}
	if newName == base {
		return fmt.Errorf("external data name %q is the model file itself", newName)
	}
	if opts.ExternalData == ExternalAlways {
		addNew()
	}

	// Apply the plan (the planned tensors' data leaves the proto) and check the size; in
	// ExternalAuto, move more tensors out if the model is too large for protobuf.
	ordered := func() []*externalPlacement {
		var out []*externalPlacement
		for _, r := range all {
			if pl := plan[r.t]; pl != nil {
				out = append(out, pl)
			}
		}
		return out
	}
	files, restore := m.applyPlan(ordered())
	defer func() { restore() }()
	if proto.Size(m.proto) > maxProtoSize && opts.ExternalData == ExternalAuto {
		restore()
		addNew()
		files, restore = m.applyPlan(ordered())
	}
	if proto.Size(m.proto) > maxProtoSize {
		if opts.ExternalData == ExternalNever {
			return fmt.Errorf("model exceeds the protobuf limit of %d bytes with all data inline; save with ExternalAuto or ExternalAlways", maxProtoSize)
		}
		return fmt.Errorf("model exceeds the protobuf limit of %d bytes even with external data; lower SizeThreshold", maxProtoSize)
	}

	// Write and sync every file before replacing any, so that a failed write
	// (a full disk) leaves all old files in place; then commit the data files
	// and the model last, so the model never points at data not yet in place.
	// Tensor data is written from memory as it is, and the model is serialized
	// straight into its file (marshalTo): no second copy of the weights.
	var pending []*atomicfile.File
	defer func() {
		for _, p := range pending {
			p.Abort() // no-op for committed files
		}
	}()
	for _, f := range files {
		final := filepath.Join(dir, filepath.FromSlash(f.location))
		if st, err := os.Stat(final); err == nil && st.IsDir() {
			return fmt.Errorf("external data file %s is a directory", final)
		}
		if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
			return fmt.Errorf("external data: %w", err)
		}
		af, err := atomicfile.Create(final)
		if err != nil {
			return fmt.Errorf("external data: %w", err)
		}
		pending = append(pending, af)
		if err := writeDataFile(af, f.items); err != nil {
			return fmt.Errorf("external data: %w", err)
		}
		if err := af.Sync(); err != nil {
			return fmt.Errorf("external data: %w", err)
		}
	}
	mf, err := atomicfile.Create(target)
	if err != nil {
		return err
	}
	pending = append(pending, mf) // the model goes last
	if err := marshalTo(mf, m.proto); err != nil {
		return err
	}
	if err := mf.Sync(); err != nil {
		return err
	}
	for _, p := range pending {
		if err := p.Commit(); err != nil {
			return err
		}
	}
	restore()
	restore = func() {}

	// Remember the new layout.
	m.ext = map[*onnxpb.TensorProto]ExternalLocation{}
	m.extByName = map[string]ExternalLocation{}
	for t, pl := range plan {
		m.ext[t] = pl.loc
		if name := t.GetName(); name != "" {
			m.extByName[name] = pl.loc
		}
	}
	return nil
}

// dataFile is one external data file to write.
type dataFile struct {
	location string
	items    []*externalPlacement // sorted by offset
}

// applyPlan assigns offsets and moves the planned tensors' data out of the proto
// (into their placements' raw, which writeDataFile writes), pointing them at their
// external files instead; restore puts every tensor back as it was. plan is in the
// tensors' order in the model, which is the order new tensors are appended to their files.
func (m *Model) applyPlan(plan []*externalPlacement) (files []dataFile, restore func()) {
	byFile := map[string][]*externalPlacement{}
	for _, pl := range plan {
		pl.raw = pl.t.RawData
		byFile[pl.loc.Location] = append(byFile[pl.loc.Location], pl)
	}
	for loc, items := range byFile {
		placeFile(items) // items are in model order, as placeFile expects
		slices.SortStableFunc(items, func(a, b *externalPlacement) int {
			return cmp.Compare(a.loc.Offset, b.loc.Offset)
		})
		files = append(files, dataFile{location: loc, items: items})
	}
	slices.SortFunc(files, func(a, b dataFile) int { return cmp.Compare(a.location, b.location) })

	saved := make(map[*onnxpb.TensorProto]placementState, len(plan))
	for _, pl := range plan {
		t := pl.t
		saved[t] = placementState{t.RawData, t.ExternalData, t.DataLocation}
		t.RawData = nil
		t.ExternalData = externalEntries(pl.loc)
		t.DataLocation = onnxpb.TensorProto_EXTERNAL.Enum()
	}
	return files, func() {
		for t, s := range saved {
			t.RawData, t.ExternalData, t.DataLocation = s.raw, s.external, s.location
		}
		saved = nil
	}
}

// writeDataFile writes the placed tensors, zero-filling gaps.
func writeDataFile(w io.Writer, items []*externalPlacement) error {
	var pos int64
	var zeros [4096]byte
	for _, it := range items {
		for pos < it.loc.Offset {
			n := min(int64(len(zeros)), it.loc.Offset-pos)
			if _, err := w.Write(zeros[:n]); err != nil {
				return err
			}
			pos += n
		}
		if _, err := w.Write(it.raw); err != nil {
			return err
		}
		pos += int64(len(it.raw))
	}
	return nil
}

// streamMin is the size from which marshalTo streams a message field by field instead
// of marshalling it whole; tests lower it.
var streamMin = 1 << 20

// marshalTo writes m's protobuf encoding to w without building it in memory: messages
// of streamMin bytes or more are written field by field, in field-number order as
// proto.Marshal writes them, and bytes fields (raw_data) straight from the message, so
// saving a model holds no second copy of its weights. The bytes are proto.Marshal's.
func marshalTo(w io.Writer, m proto.Message) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	if err := writeMessage(bw, m.ProtoReflect(), proto.Size(m)); err != nil {
		return err
	}
	return bw.Flush()
}

func writeMessage(w *bufio.Writer, m protoreflect.Message, size int) error {
	if size < streamMin {
		b, err := proto.Marshal(m.Interface())
		if err != nil {
			return fmt.Errorf("marshal model: %w", err)
		}
		_, err = w.Write(b)
		return err
	}
	var fields []protoreflect.FieldDescriptor
	m.Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		fields = append(fields, fd)
		return true
	})
	slices.SortFunc(fields, func(a, b protoreflect.FieldDescriptor) int { return cmp.Compare(a.Number(), b.Number()) })
	var hdr []byte
	lenField := func(num protoreflect.FieldNumber, sub protoreflect.Message) error {
		n := proto.Size(sub.Interface())
		hdr = protowire.AppendVarint(protowire.AppendTag(hdr[:0], num, protowire.BytesType), uint64(n))
		if _, err := w.Write(hdr); err != nil {
			return err
		}
		return writeMessage(w, sub, n)
	}
	for _, fd := range fields {
		v := m.Get(fd)
		switch {
		case fd.IsMap():
			return fmt.Errorf("marshal model: map field %s is not supported", fd.FullName())
		case fd.Kind() == protoreflect.MessageKind && fd.IsList():
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				if err := lenField(fd.Number(), l.Get(i).Message()); err != nil {
					return err
				}
			}
		case fd.Kind() == protoreflect.MessageKind:
			if err := lenField(fd.Number(), v.Message()); err != nil {
				return err
			}
		case fd.Kind() == protoreflect.BytesKind && !fd.IsList():
			b := v.Bytes()
			hdr = protowire.AppendVarint(protowire.AppendTag(hdr[:0], fd.Number(), protowire.BytesType), uint64(len(b)))
			if _, err := w.Write(hdr); err != nil {
				return err
			}
			if _, err := w.Write(b); err != nil {
				return err
			}
		default: // scalars, strings, packed numbers: small, marshalled alone
			one := m.New()
			one.Set(fd, v)
			b, err := proto.Marshal(one.Interface())
			if err != nil {
				return fmt.Errorf("marshal model: %w", err)
			}
			if _, err := w.Write(b); err != nil {
				return err
			}
		}
	}
	_, err := w.Write(m.GetUnknown())
	return err
}
