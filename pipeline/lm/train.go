package lm

import (
	"regexp"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
)

// TrainableNames lists the float32 initializers of m that training updates: every float
// tensor with more than one element from which the logits can be reached without passing
// through a Cos or Sin, minus those matching freeze. The exclusions are the exporter's
// constants, not the PyTorch model's parameters: scalars (scales, epsilons) and the rotary
// embedding's buffers (inv_freq, cached cos/sin tables), which only feed Cos/Sin.
func TrainableNames(m *onnx.Model, freeze *regexp.Regexp) ([]string, error) {
	g := m.Graph()
	// Walk back from the outputs, not through Cos/Sin, marking every value that feeds them.
	feeds := map[string]bool{}
	onnx.WalkBack(g, func(v string, n *onnxpb.NodeProto) bool {
		feeds[v] = true
		return n == nil || (n.GetOpType() != "Cos" && n.GetOpType() != "Sin")
	})
	var names []string
	for _, t := range g.GetInitializer() {
		if onnx.DataType(t.GetDataType()) != onnx.Float || !feeds[t.GetName()] {
			continue
		}
		n, err := onnx.NumElements(t)
		if err != nil {
			return nil, err
		}
		if n <= 1 || (freeze != nil && freeze.MatchString(t.GetName())) {
			continue
		}
		names = append(names, t.GetName())
	}
	return names, nil
}

// modelInputs is the set of m's graph input names.
func ModelInputs(m *onnx.Model) map[string]bool {
	in := map[string]bool{}
	for _, v := range m.Graph().GetInput() {
		in[v.GetName()] = true
	}
	return in
}
