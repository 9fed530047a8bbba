package onnx

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx/onnxpb"
)

// External-data keys of TensorProto.external_data.
const (
	keyLocation = "location"
	keyOffset   = "offset"
	keyLength   = "length"
	keyChecksum = "checksum"
)

// cleanLocation checks an external-data location from a model or from
// SaveOptions: a relative path that stays inside the model's directory.
// It returns the location with forward slashes and no redundant elements.
func cleanLocation(loc string) (string, error) {
	if loc == "" {
		return "", errors.New("empty location")
	}
	slashed := strings.ReplaceAll(loc, "\\", "/")
	if path.IsAbs(slashed) || filepath.IsAbs(loc) || filepath.VolumeName(loc) != "" {
		return "", fmt.Errorf("location %q must be relative to the model's directory", loc)
	}
	c := path.Clean(slashed)
	if c == "." || c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("location %q points outside the model's directory", loc)
	}
	return c, nil
}

// parseExternal reads a tensor's external_data entries.
func parseExternal(t *onnxpb.TensorProto) (ExternalLocation, error) {
	loc := ExternalLocation{Length: -1}
	seen := map[string]bool{}
	for _, e := range t.ExternalData {
		k, v := e.GetKey(), e.GetValue()
		if seen[k] {
			return loc, fmt.Errorf("duplicate external_data key %q", k)
		}
		seen[k] = true
		loc.entries = append(loc.entries, [2]string{k, v})
		switch k {
		case keyLocation:
			c, err := cleanLocation(v)
			if err != nil {
				return loc, err
			}
			loc.Location = c
		case keyOffset, keyLength:
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				return loc, fmt.Errorf("external_data %s %q is not a non-negative integer", k, v)
			}
			if k == keyOffset {
				loc.Offset = n
			} else {
				loc.Length = n
			}
		}
	}
	if loc.Location == "" {
		return loc, errors.New("external_data has no location")
	}
	return loc, nil
}

// resolveExternal reads the data of every external tensor into raw_data and
// records where it came from.
func (m *Model) resolveExternal(dir string) error {
	files := map[string]*os.File{}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	m.ext = map[*onnxpb.TensorProto]ExternalLocation{}
	m.extByName = map[string]ExternalLocation{}
	dupNames := map[string]bool{}
	err := walkTensors(m.proto, func(t *onnxpb.TensorProto, where string) error {
		if t.GetDataLocation() != onnxpb.TensorProto_EXTERNAL {
			return nil
		}
		loc, err := parseExternal(t)
		if err != nil {
			return fmt.Errorf("%s: external data: %w", where, err)
		}
		data, err := readExternal(files, dir, t, &loc)
		if err != nil {
			return fmt.Errorf("%s: external data %s: %w", where, loc.Location, err)
		}
		t.RawData = data
		t.ExternalData = nil
		t.DataLocation = nil
		m.ext[t] = loc
		if name := t.GetName(); name != "" {
			if _, dup := m.extByName[name]; dup {
				dupNames[name] = true
			}
			m.extByName[name] = loc
		}
		return nil
	})
	for name := range dupNames {
		delete(m.extByName, name) // ambiguous: only the pointer map applies
	}
	return err
}

func readExternal(files map[string]*os.File, dir string, t *onnxpb.TensorProto, loc *ExternalLocation) ([]byte, error) {
	f, ok := files[loc.Location]
	if !ok {
		var err error
		f, err = os.Open(filepath.Join(dir, filepath.FromSlash(loc.Location)))
		if err != nil {
			return nil, err
		}
		files[loc.Location] = f
	}
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	if loc.Offset > size {
		return nil, fmt.Errorf("offset %d is past the end of the file (%d bytes)", loc.Offset, size)
	}
	if loc.Length < 0 {
		loc.Length = size - loc.Offset
	}
	if loc.Length > size-loc.Offset {
		return nil, fmt.Errorf("offset %d + length %d is past the end of the file (%d bytes): truncated data file?", loc.Offset, loc.Length, size)
	}
	// Check the length against the tensor's type and shape where both are known.
	if n, err := NumElements(t); err == nil && t.Segment == nil {
		if want, err := DataType(t.GetDataType()).RawSize(n); err == nil && want != loc.Length {
			return nil, fmt.Errorf("length %d bytes does not match %s dims %v (%d bytes)", loc.Length, DataType(t.GetDataType()), t.GetDims(), want)
		}
	}
	buf := make([]byte, loc.Length)
	if _, err := f.ReadAt(buf, loc.Offset); err != nil && !(errors.Is(err, io.EOF) && loc.Length == 0) {
		return nil, err
	}
	return buf, nil
}

// externalPlacement is one tensor to be written to an external file.
type externalPlacement struct {
	t   *onnxpb.TensorProto
	loc ExternalLocation // Offset is the wanted one; -1 to append
	raw []byte           // the tensor's data, kept here while the plan is applied
}

// placeFile assigns final offsets to the tensors of one data file, given in
// model order: tensors with a remembered offset keep it unless it would
// overlap an earlier one; new tensors (Offset -1) are appended in model
// order, aligned to 4096 bytes when at least that large.
func placeFile(items []*externalPlacement) {
	var fixed, appended []*externalPlacement
	for _, it := range items {
		if it.loc.Offset >= 0 {
			fixed = append(fixed, it)
		} else {
			appended = append(appended, it)
		}
	}
	slices.SortStableFunc(fixed, func(a, b *externalPlacement) int { return cmp.Compare(a.loc.Offset, b.loc.Offset) })
	var end int64
	for _, it := range fixed {
		it.loc.Offset = max(it.loc.Offset, end)
		it.loc.Length = int64(len(it.raw))
		end = it.loc.Offset + it.loc.Length
	}
	for _, it := range appended {
		it.loc.Length = int64(len(it.raw))
		if it.loc.Length >= 4096 {
			end = (end + 4095) &^ 4095
		}
		it.loc.Offset = end
		end += it.loc.Length
	}
}

// externalEntries builds external_data entries for loc, keeping the keys and
// their order from when the tensor was loaded (location, offset, length for
// new tensors). A checksum is dropped, since the data may have changed.
func externalEntries(loc ExternalLocation) []*onnxpb.StringStringEntryProto {
	entries := loc.entries
	if len(entries) == 0 {
		entries = [][2]string{{keyLocation, ""}, {keyOffset, ""}, {keyLength, ""}}
	}
	have := map[string]bool{}
	var out []*onnxpb.StringStringEntryProto
	add := func(k, v string) {
		out = append(out, &onnxpb.StringStringEntryProto{Key: proto.String(k), Value: proto.String(v)})
		have[k] = true
	}
	for _, e := range entries {
		switch k := e[0]; k {
		case keyLocation:
			add(k, loc.Location)
		case keyOffset:
			add(k, strconv.FormatInt(loc.Offset, 10))
		case keyLength:
			add(k, strconv.FormatInt(loc.Length, 10))
		case keyChecksum:
		default:
			add(k, e[1])
		}
	}
	if !have[keyLocation] {
		add(keyLocation, loc.Location)
	}
	if !have[keyOffset] && loc.Offset != 0 {
		add(keyOffset, strconv.FormatInt(loc.Offset, 10))
	}
	if !have[keyLength] {
		add(keyLength, strconv.FormatInt(loc.Length, 10))
	}
	return out
}
