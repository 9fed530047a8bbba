package generate

import (
	"errors"
	"fmt"
	"math"
	"slices"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
	"ortalign/pipeline/lm"
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
	steps, err := recordCheck(func(seqs [][]int64) ([]float32, error) {
		out, err := gen.runFull(seqs)
		if err != nil {
			return nil, err
		}
		return out[NextLogitsOutput].F32, nil
	})
	if err == nil {
		err = gen.checkInPlace(steps)
	}
	if err != nil {
		gen.Close()
		return nil, errors.Join(errors.New("GroupQueryAttention export"), err)
	}
	return gen, nil
}

// gqaDerived is a plain export's graph with its attention rewritten into
// GroupQueryAttention (onnx.RewriteGQA), its cache inputs, and the reference of its check.
type gqaDerived struct {
	model  *onnx.Model
	pasts  []cachePast
	layers int
	check  []checkStep
}

// attentionScales returns each layer's scaling of its scores (onnx.AttentionScale).
func attentionScales(g *onnxpb.GraphProto, layers []onnx.AttentionLayer) ([][]onnx.ScaleFactor, error) {
	scales := make([][]onnx.ScaleFactor, len(layers))
	for i, l := range layers {
		f, err := onnx.AttentionScale(g, l)
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		scales[i] = f
	}
	return scales, nil
}

// scaleInputs are the computed (not constant) scale factors, which the probe evaluates.
func scaleInputs(scales [][]onnx.ScaleFactor) []string {
	var names []string
	for _, fs := range scales {
		for _, f := range fs {
			if !f.Const && !slices.Contains(names, f.Tensor) {
				names = append(names, f.Tensor)
			}
		}
	}
	return names
}

// rewriteGQA rewrites the attention of a clone of d (with its layers and what the probe
// learnt of them) into GroupQueryAttention: the keys and values where the probe would
// join the past (before any head repetition), the queries the scores MatMul reads, the
// scale between the scores and the softmax. The masks' other uses (positions, rotary
// tables sliced to the keys' length) are extended to the cached tokens
// (onnx.ExtendMasksToPast); those on the replaced scores are dropped with them.
func rewriteGQA(d *onnx.Model, layers []onnx.AttentionLayer, scales [][]onnx.ScaleFactor, masks onnx.KVMasks, positions string, pr *probed) (*gqaDerived, error) {
	m := d.Clone()
	g := m.Graph()
	// The layers and mask uses name nodes of d: point them at the clone's.
	same := map[*onnxpb.NodeProto]*onnxpb.NodeProto{}
	for i, n := range d.Graph().GetNode() {
		same[n] = g.GetNode()[i]
	}
	layers = slices.Clone(layers)
	for i := range layers {
		layers[i].Scores, layers[i].Context = same[layers[i].Scores], same[layers[i].Context]
	}
	c := &gqaDerived{model: m, layers: len(layers), check: pr.check}
	var specs []onnx.GQALayer
	for i, l := range layers {
		q, qb := pr.queries[i], pr.queriesB[i]
		if len(q) != 4 || len(qb) != 4 || q[0] != probeBatchA || qb[0] != probeBatchB || q[2] != probeSeqA || qb[2] != probeSeqB ||
			q[1] != qb[1] || q[3] != qb[3] {
			return nil, fmt.Errorf("layer %d: queries of shape %v, want [batch, heads, sequence, head size]", i, q)
		}
		heads, size := q[1], q[3]
		if size%8 != 0 {
			return nil, fmt.Errorf("layer %d: head size %d; GroupQueryAttention's kernel takes multiples of 8", i, size)
		}
		scale, err := scaleOf(scales[i], pr)
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		spec := onnx.GQALayer{Layer: l, Query: l.Scores.GetInput()[0], Heads: heads, Scale: scale}
		for j, chain := range []onnx.KVChain{l.Key, l.Value} {
			a := pr.axes[2*i+j]
			layout, width, err := gqaLayout(a)
			if err != nil {
				return nil, fmt.Errorf("layer %d %s: %w", i, [2]string{"key", "value"}[j], err)
			}
			if width%size != 0 || (j == 1 && width/size != spec.KVHeads) {
				return nil, fmt.Errorf("layer %d: %d key/value values per token for heads of %d", i, width, size)
			}
			spec.KVHeads = width / size
			kind := [2]string{"key", "value"}[j]
			past, present := fmt.Sprintf("past_key_values.%d.%s", i, kind), fmt.Sprintf("present.%d.%s", i, kind)
			if j == 0 {
				spec.Key, spec.KeyLayout, spec.PastKey, spec.PresentKey = chain.Points[a.point].Tensor, layout, past, present
			} else {
				spec.Value, spec.ValueLayout, spec.PastValue, spec.PresentValue = chain.Points[a.point].Tensor, layout, past, present
			}
			c.pasts = append(c.pasts, cachePast{name: past, present: present, dims: []int64{-1, spec.KVHeads, -1, size}, batchAxis: 0, seqAxis: 2})
		}
		if heads%spec.KVHeads != 0 {
			return nil, fmt.Errorf("layer %d: %d query heads for %d key/value heads", i, heads, spec.KVHeads)
		}
		specs = append(specs, spec)
	}
	if err := onnx.RewriteGQA(m, specs, lengthsInput, totalInput); err != nil {
		return nil, err
	}
	var inputs []string
	for _, in := range g.GetInput() {
		inputs = append(inputs, in.GetName())
	}
	onnx.Prune(g, inputs)
	alive := map[*onnxpb.NodeProto]bool{}
	for _, n := range g.GetNode() {
		alive[n] = true
	}
	var uses []onnx.KVMaskUse
	for _, u := range masks.Uses {
		if u.Node = same[u.Node]; alive[u.Node] {
			uses = append(uses, u)
		}
	}
	masks.Uses = uses
	if err := onnx.ExtendMasksToPast(g, m.Opset(""), masks, lm.AttentionMask, lm.InputIDs, positions); err != nil {
		return nil, err
	}
	return c, nil
}

// scaleOf multiplies a layer's scale factors, reading computed ones from the probe (the
// same scalar in both runs).
func scaleOf(factors []onnx.ScaleFactor, pr *probed) (float64, error) {
	scale := 1.0
	for _, f := range factors {
		v := f.Value
		if !f.Const {
			r := pr.scalars[f.Tensor]
			if len(r[0]) != 1 || len(r[1]) != 1 || r[0][0] != r[1][0] {
				return 0, fmt.Errorf("scale %q is not one value in both probe runs (%v, %v)", f.Tensor, r[0], r[1])
			}
			v = float64(r[0][0])
		}
		if f.Divide {
			v = 1 / v
		}
		scale *= v
	}
	if !(scale > 0) || math.IsInf(scale, 0) {
		return 0, fmt.Errorf("attention scale %v", scale)
	}
	return scale, nil
}

// gqaLayout names the layout of a key or value chain's point from the probe and returns
// its values per token.
func gqaLayout(a kvAxes) (onnx.GQALayout, int64, error) {
	switch {
	case a.batch == 0 && a.seq == 1 && len(a.dims) == 3:
		return onnx.LayoutBSX, a.dims[2], nil
	case a.batch == 0 && a.seq == 1 && len(a.dims) == 4:
		return onnx.LayoutBSHD, a.dims[2] * a.dims[3], nil
	case a.batch == 0 && a.seq == 2 && len(a.dims) == 4:
		return onnx.LayoutBHSD, a.dims[1] * a.dims[3], nil
	}
	return 0, 0, fmt.Errorf("tensor of shape %v with the batch on axis %d and the sequence on axis %d", a.dims, a.batch, a.seq)
}

// open opens the rewritten graph and checks it against the model's own logits.
func (c *gqaDerived) open(path string, o GeneratorOptions) (*Generator, error) {
	gen, err := newGenerator(path, c.model, cacheKind{pasts: c.pasts, cached: true, inPlace: true, lengths: true, mode: "derived"}, o)
	if err != nil {
		return nil, err
	}
	if err := gen.checkInPlace(c.check); err != nil {
		gen.Close()
		return nil, err
	}
	return gen, nil
}
