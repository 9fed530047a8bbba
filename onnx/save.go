package onnx

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"google.golang.org/protobuf/proto"

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

	// Serialize with the plan applied; in ExternalAuto, move more tensors out
	// if the model is too large for protobuf.
	ordered := func() []*externalPlacement {
		var out []*externalPlacement
		for _, r := range all {
			if pl := plan[r.t]; pl != nil {
				out = append(out, pl)
			}
		}
		return out
	}
	modelBytes, files, err := m.serializeWithPlan(ordered())
	if err != nil {
		return err
	}
	if modelBytes == nil && opts.ExternalData == ExternalAuto {
		addNew()
		modelBytes, files, err = m.serializeWithPlan(ordered())
		if err != nil {
			return err
		}
	}
	if modelBytes == nil {
		if opts.ExternalData == ExternalNever {
			return fmt.Errorf("model exceeds the protobuf limit of %d bytes with all data inline; save with ExternalAuto or ExternalAlways", maxProtoSize)
		}
		return fmt.Errorf("model exceeds the protobuf limit of %d bytes even with external data; lower SizeThreshold", maxProtoSize)
	}

	// Write and sync every file before replacing any, so that a failed write
	// (a full disk) leaves all old files in place; then commit the data files
	// and the model last, so the model never points at data not yet in place.
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
	if _, err := mf.Write(modelBytes); err != nil {
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

// serializeWithPlan assigns offsets, temporarily moves the planned tensors'
// data out of the proto, marshals it, and restores the tensors. It returns
// nil bytes (and no error) if the result would exceed maxProtoSize. plan is
// in the tensors' order in the model, which is the order new tensors are
// appended to their files.
func (m *Model) serializeWithPlan(plan []*externalPlacement) ([]byte, []dataFile, error) {
	byFile := map[string][]*externalPlacement{}
	for _, pl := range plan {
		byFile[pl.loc.Location] = append(byFile[pl.loc.Location], pl)
	}
	var files []dataFile
	for loc, items := range byFile {
		placeFile(items) // items are in model order, as placeFile expects
		slices.SortStableFunc(items, func(a, b *externalPlacement) int {
			return cmp.Compare(a.loc.Offset, b.loc.Offset)
		})
		files = append(files, dataFile{location: loc, items: items})
	}
	slices.SortFunc(files, func(a, b dataFile) int { return cmp.Compare(a.location, b.location) })

	saved := make(map[*onnxpb.TensorProto]placementState, len(plan))
	defer func() {
		for t, s := range saved {
			t.RawData, t.ExternalData, t.DataLocation = s.raw, s.external, s.location
		}
	}()
	for _, pl := range plan {
		t := pl.t
		saved[t] = placementState{t.RawData, t.ExternalData, t.DataLocation}
		t.RawData = nil
		t.ExternalData = externalEntries(pl.loc)
		t.DataLocation = onnxpb.TensorProto_EXTERNAL.Enum()
	}
	if proto.Size(m.proto) > maxProtoSize {
		return nil, files, nil
	}
	b, err := proto.Marshal(m.proto)
	if err != nil {
		return nil, nil, fmt.Errorf("marshal model: %w", err)
	}
	return b, files, nil
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
		if _, err := w.Write(it.t.RawData); err != nil {
			return err
		}
		pos += int64(len(it.t.RawData))
	}
	return nil
}
