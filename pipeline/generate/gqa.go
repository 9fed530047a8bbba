package generate

import (
	"errors"
	"fmt"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
)

// gqaOp is ONNX Runtime's GroupQueryAttention (domain com.microsoft).
const gqaOp = "GroupQueryAttention"

// hasGQA reports whether g has a GroupQueryAttention node.
func hasGQA(g *onnxpb.GraphProto) bool {
	for _, n := range g.GetNode() {
		if n.GetOpType() == gqaOp && n.GetDomain() == "com.microsoft" {
			return true
		}
	}
	return false
}

// newGQAExport decodes an export whose attention is GroupQueryAttention (ONNX Runtime
// GenAI's layout): the op reads each row's length from seqlens_k, which the export
// computes from attention_mask, and assumes every row starts at position 0, so rows are
// right-padded whatever SampleOptions.PaddingSide says, and each past and present share
// one buffer written in place (slots.go). The cache is checked against decoding without
// it before it is used.
func newGQAExport(path string, m *onnx.Model, pasts []cachePast, o GeneratorOptions) (*Generator, error) {
	for _, p := range pasts {
		if len(p.dims) != 4 {
			return nil, fmt.Errorf("GroupQueryAttention cache input %q has rank %d, want [batch, heads, sequence, head size]", p.name, len(p.dims))
		}
	}
	gen, err := newGenerator(path, m, cacheKind{pasts: pasts, cached: true, inPlace: true, mode: "export"}, o)
	if err != nil {
		return nil, err
	}
	err = gen.checkInPlace(func(seqs [][]int64) ([]float32, error) {
		out, err := gen.runFull(seqs)
		if err != nil {
			return nil, err
		}
		return out[NextLogitsOutput].F32, nil
	})
	if err != nil {
		gen.Close()
		return nil, errors.Join(errors.New("GroupQueryAttention export"), err)
	}
	return gen, nil
}
