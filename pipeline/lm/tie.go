package lm

import (
	"encoding/binary"
	"fmt"
	"math"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
)

// Tie is a 2-D initializer that is an exact transposed copy of another: how
// torch.onnx.export writes a weight the PyTorch model shares, such as GPT-2's lm_head
// tied to the token embedding. Training the copy separately would train an untied model.
type Tie struct {
	Source string // the [a, b] initializer that trains
	Copy   string // the [b, a] initializer equal to Source transposed
}

// FindTransposedCopies returns the ties of m: pairs of float32 initializers where one
// equals the other transposed, value for value.
func FindTransposedCopies(m *onnx.Model) ([]Tie, error) {
	byShape := map[[2]int64][]*onnxpb.TensorProto{}
	for _, t := range m.Graph().GetInitializer() {
		if onnx.DataType(t.GetDataType()) == onnx.Float && len(t.GetDims()) == 2 && t.GetDims()[0] != t.GetDims()[1] {
			k := [2]int64{t.GetDims()[0], t.GetDims()[1]}
			byShape[k] = append(byShape[k], t)
		}
	}
	var ties []Tie
	copied := map[string]bool{}
	for _, t := range m.Graph().GetInitializer() {
		dims := t.GetDims()
		if onnx.DataType(t.GetDataType()) != onnx.Float || len(dims) != 2 || copied[t.GetName()] {
			continue
		}
		for _, c := range byShape[[2]int64{dims[1], dims[0]}] {
			if copied[c.GetName()] || c.GetName() == t.GetName() {
				continue
			}
			same, err := IsTranspose(t, c)
			if err != nil {
				return nil, err
			}
			if same {
				ties = append(ties, Tie{Source: t.GetName(), Copy: c.GetName()})
				copied[c.GetName()], copied[t.GetName()] = true, true
				break
			}
		}
	}
	return ties, nil
}

// isTranspose compares in place, bit for bit, with no decoded copy: on a Llama-style
// model nearly every candidate pair of MLP weights differs at the first value, and
// decoding each pair cost seconds and gigabytes (weights in a mapped model file need not
// even be aligned for a float32 view).
func IsTranspose(a, b *onnxpb.TensorProto) (bool, error) {
	x, err := floatBits(a)
	if err != nil {
		return false, err
	}
	y, err := floatBits(b)
	if err != nil {
		return false, err
	}
	rows, cols := int(a.GetDims()[0]), int(a.GetDims()[1])
	for i := 0; i < rows; i++ {
		for j := 0; j < cols; j++ {
			if x(i*cols+j) != y(j*rows+i) {
				return false, nil
			}
		}
	}
	return true, nil
}

// floatBits returns a reader of the bits of t's k-th float32 value, over t's own data.
func floatBits(t *onnxpb.TensorProto) (func(k int) uint32, error) {
	n, err := onnx.NumElements(t)
	if err != nil {
		return nil, fmt.Errorf("initializer %q: %w", t.GetName(), err)
	}
	if raw := t.GetRawData(); t.GetDataLocation() != onnxpb.TensorProto_EXTERNAL && int64(len(raw)) == 4*n && n > 0 {
		return func(k int) uint32 { return binary.LittleEndian.Uint32(raw[4*k:]) }, nil
	}
	v, err := floatsOf(t)
	if err != nil {
		return nil, err
	}
	return func(k int) uint32 { return math.Float32bits(v[k]) }, nil
}

// tieCopies rewrites m so that every use of a tie's copy reads Transpose(source)
// instead, and removes the copy: the graph then trains one shared weight.
func TieCopies(m *onnx.Model, ties []Tie) error {
	g := m.Graph()
	b := onnx.NewBuilder(g, m.Opset(""), "ortalign_tie")
	for _, t := range ties {
		tr := b.Transpose(t.Source, []int64{1, 0})
		for _, n := range g.GetNode() {
			if n.GetOpType() == "Transpose" && len(n.GetOutput()) == 1 && n.GetOutput()[0] == tr {
				continue
			}
			for i, in := range n.Input {
				if in == t.Copy {
					n.Input[i] = tr
				}
			}
		}
		onnx.RemoveInitializer(g, t.Copy)
	}
	// The Transpose nodes were appended; put them before their users.
	return onnx.TopologicalSort(g)
}

// transposed returns the [cols, rows] transpose of a row-major [rows, cols] matrix.
func Transposed(x []float32, rows, cols int) []float32 {
	out := make([]float32, len(x))
	for i := 0; i < rows; i++ {
		for j := 0; j < cols; j++ {
			out[j*rows+i] = x[i*cols+j]
		}
	}
	return out
}

// floatsOf returns t's float32 values, sharing its memory when it can.
func floatsOf(t *onnxpb.TensorProto) ([]float32, error) {
	if v, ok := onnx.FloatsView(t); ok {
		return v, nil
	}
	v, err := onnx.TensorFloats(t)
	if err != nil {
		return nil, fmt.Errorf("initializer %q: %w", t.GetName(), err)
	}
	return v, nil
}
