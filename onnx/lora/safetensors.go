package lora

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
)

// Tensor is a named float32 tensor for WriteSafetensors.
type Tensor struct {
	Name  string
	Shape []int64
	Data  []float32
}

// WriteSafetensors writes tensors in the safetensors format (what PEFT's
// save_pretrained writes and its load_adapter reads): an 8-byte little-endian header
// length, a JSON header mapping each name to its dtype, shape and data_offsets (plus
// __metadata__), padded with spaces to a multiple of 8 bytes, then the tensors' raw
// little-endian data in the header's order (names sorted).
func WriteSafetensors(w io.Writer, tensors []Tensor, metadata map[string]string) error {
	sorted := slices.Clone(tensors)
	slices.SortFunc(sorted, func(a, b Tensor) int { return strings.Compare(a.Name, b.Name) })
	type entry struct {
		Dtype   string  `json:"dtype"`
		Shape   []int64 `json:"shape"`
		Offsets [2]int  `json:"data_offsets"`
	}
	header := map[string]any{}
	if len(metadata) > 0 {
		header["__metadata__"] = metadata
	}
	off := 0
	for i, t := range sorted {
		n := int64(1)
		for _, d := range t.Shape {
			n *= d
		}
		if n != int64(len(t.Data)) {
			return fmt.Errorf("safetensors: tensor %q has shape %v but %d values", t.Name, t.Shape, len(t.Data))
		}
		if t.Name == "" || t.Name == "__metadata__" || i > 0 && sorted[i-1].Name == t.Name {
			return fmt.Errorf("safetensors: bad or repeated tensor name %q", t.Name)
		}
		shape := t.Shape
		if shape == nil {
			shape = []int64{}
		}
		header[t.Name] = entry{Dtype: "F32", Shape: shape, Offsets: [2]int{off, off + 4*len(t.Data)}}
		off += 4 * len(t.Data)
	}
	hdr, err := json.Marshal(header) // map keys come out sorted
	if err != nil {
		return err
	}
	for len(hdr)%8 != 0 {
		hdr = append(hdr, ' ')
	}
	buf := binary.LittleEndian.AppendUint64(nil, uint64(len(hdr)))
	buf = append(buf, hdr...)
	if _, err := w.Write(buf); err != nil {
		return err
	}
	for _, t := range sorted {
		raw := make([]byte, 4*len(t.Data))
		for i, v := range t.Data {
			binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
		}
		if _, err := w.Write(raw); err != nil {
			return err
		}
	}
	return nil
}
