package onnx

import (
	"errors"
	"fmt"
	"math"

	"ortalign/onnx/onnxpb"
)

// Attention rewritten into ONNX Runtime's GroupQueryAttention (com.microsoft, in every CPU
// build). Its kernel reads keys and values from a past buffer and, when the present
// output is that same buffer, writes only the new tokens' keys and values into it: a cache
// allocated once at its final length, with nothing concatenated or copied per step (ONNX
// Runtime GenAI decodes this way). It applies causal attention over each row's first
// seqlens_k+1 cached positions, so every row's tokens start at slot 0 (right padding),
// and the graph's own masks are not read: RewriteGQA fits a causal LM whose masks only
// hide future and padding tokens, which callers check by comparing logits.

// GQALayout is how a key or value tensor lays out its heads.
type GQALayout int

// Layouts of the keys and values taken from the attention chains.
const (
	// LayoutBSX is [batch, sequence, heads·head_dim] (a projection's output).
	LayoutBSX GQALayout = iota
	// LayoutBSHD is [batch, sequence, heads, head_dim] (the head split).
	LayoutBSHD
	// LayoutBHSD is [batch, heads, sequence, head_dim] (after the heads' transpose).
	LayoutBHSD
)

// GQALayer describes one attention layer to rewrite.
type GQALayer struct {
	Layer AttentionLayer
	// Query is the scores MatMul's first input, [batch, heads, sequence, head_dim].
	Query string
	// Key and Value are the new tokens' keys and values before any head repetition, laid
	// out as KeyLayout and ValueLayout.
	Key, Value             string
	KeyLayout, ValueLayout GQALayout
	Heads, KVHeads         int64
	// Scale multiplies Q·Kᵀ before the softmax (the product of AttentionScale's factors).
	Scale float64
	// PastKey, PastValue, PresentKey and PresentValue name the new graph inputs and
	// outputs, [batch, KVHeads, sequence, head_dim].
	PastKey, PastValue, PresentKey, PresentValue string
}

// ScaleFactor is a scalar the attention scores are multiplied or divided by between their
// MatMul and the softmax.
type ScaleFactor struct {
	// Tensor is the scalar operand.
	Tensor string
	// Divide says that the scores are divided by it.
	Divide bool
	// Const says that Tensor is a constant, of value Value; otherwise it is computed (from
	// shapes, as GPT-2's torch.full([], value.size(-1) ** 0.5)) and callers evaluate it.
	Const bool
	Value float64
}

// AttentionScale returns the factors by which l's scores are scaled between its scores
// MatMul and its Softmax (over the last axis). It is an error when anything there is other
// than a multiplication or division by a scalar, a mask (Add, Sub or Where with a value
// not computed from the scores) or a Cast/Identity, or when the scores are read elsewhere
// than by Shape nodes.
func AttentionScale(g *onnxpb.GraphProto, l AttentionLayer) ([]ScaleFactor, error) {
	producers, consumers := Producers(g), Consumers(g)
	var factors []ScaleFactor
	cur := l.Scores.GetOutput()[0]
	for step := 0; step < 16; step++ {
		var next *onnxpb.NodeProto
		for _, c := range consumers[cur] {
			if c.GetOpType() == "Shape" {
				continue
			}
			if next != nil {
				return nil, fmt.Errorf("scores %q are read by %s and %s", cur, next.GetName(), c.GetName())
			}
			next = c
		}
		if next == nil {
			return nil, fmt.Errorf("scores %q do not reach a Softmax", cur)
		}
		in := next.GetInput()
		other := ""
		for _, x := range in {
			if x != cur {
				other = x
			}
		}
		switch op := next.GetOpType(); op {
		case "Softmax":
			if a := FindAttr(next, "axis"); a != nil && a.GetI() != -1 && a.GetI() != 3 {
				return nil, fmt.Errorf("softmax %s over axis %d, not the keys", next.GetName(), a.GetI())
			}
			return factors, nil
		case "Mul", "Div":
			if len(in) != 2 || other == "" || (op == "Div" && in[0] != cur) {
				return nil, fmt.Errorf("%s %s: not a scaling of the scores", op, next.GetName())
			}
			f := ScaleFactor{Tensor: other, Divide: op == "Div"}
			if t := constTensor(g, producers, other); t != nil {
				v, err := TensorFloats(t)
				if err != nil || len(v) != 1 {
					return nil, fmt.Errorf("%s %s: not a scaling by a scalar", op, next.GetName())
				}
				f.Const, f.Value = true, float64(v[0])
			}
			factors = append(factors, f)
		case "Add", "Sub":
			if len(in) != 2 || other == "" || (op == "Sub" && in[0] != cur) {
				return nil, fmt.Errorf("%s %s: not a mask", op, next.GetName())
			}
		case "Where":
			if len(in) != 3 || in[0] == cur {
				return nil, fmt.Errorf("where %s: not a mask", next.GetName())
			}
		case "Cast", "Identity":
		default:
			return nil, fmt.Errorf("%s %s between the scores and the softmax", op, next.GetName())
		}
		cur = next.GetOutput()[0]
	}
	return nil, errors.New("no Softmax within 16 nodes of the scores")
}

// RewriteGQA replaces the attention of each layer — from its query, keys and values to the
// output of its context MatMul — by one GroupQueryAttention node with past and present
// inputs and outputs. seqlens and total name new int64 inputs: [batch], each row's cached
// and new tokens less one, and a scalar, the largest of those counts plus one. The
// replaced nodes are left for Prune. A layer whose head size ONNX Runtime's kernel does
// not take (a multiple of 8) is an error.
func RewriteGQA(m *Model, layers []GQALayer, seqlens, total string) error {
	g := m.Graph()
	b := NewBuilder(g, m.Opset(""), "ortalign_gqa")
	m.SetOpset("com.microsoft", max(m.Opset("com.microsoft"), 1))
	if err := AddInput(g, seqlens, Int64, []Dim{DimParam("batch")}); err != nil {
		return err
	}
	if err := AddInput(g, total, Int64, nil); err != nil {
		return err
	}
	seq32, total32 := b.Cast(seqlens, Int32), b.Cast(total, Int32)
	consumers := Consumers(g)
	for i, l := range layers {
		if l.Heads <= 0 || l.KVHeads <= 0 || l.Heads%l.KVHeads != 0 {
			return fmt.Errorf("layer %d: %d heads and %d key/value heads", i, l.Heads, l.KVHeads)
		}
		kvDims := []Dim{DimParam("batch"), DimValue(l.KVHeads), DimParam("past_sequence"), DimUnknown()}
		for _, name := range []string{l.PastKey, l.PastValue} {
			if err := AddInput(g, name, Float, kvDims); err != nil {
				return err
			}
		}
		q := b.Reshape(b.Transpose(l.Query, []int64{0, 2, 1, 3}), b.ConstInt64s([]int64{0, 0, -1}))
		k, v := toBSX(b, l.Key, l.KeyLayout), toBSX(b, l.Value, l.ValueLayout)
		if math.IsNaN(l.Scale) || math.IsInf(l.Scale, 0) || l.Scale <= 0 {
			return fmt.Errorf("layer %d: scale %v", i, l.Scale)
		}
		outs := b.OpDomain("com.microsoft", "GroupQueryAttention",
			[]string{q, k, v, l.PastKey, l.PastValue, seq32, total32}, 3,
			AttrInt("num_heads", l.Heads), AttrInt("kv_num_heads", l.KVHeads), AttrFloat("scale", float32(l.Scale)))
		// The node writes the presents itself: bound to the past's buffer, they are
		// written in place (an Identity in between would copy them).
		node := g.Node[len(g.Node)-1]
		for j, name := range []string{l.PresentKey, l.PresentValue} {
			node.Output[j+1] = name
			if err := AddOutput(g, name, Float, kvDims); err != nil {
				return err
			}
		}
		heads := b.ConstInt64s([]int64{0, 0, l.Heads, -1})
		ctx := b.Transpose(b.Reshape(outs[0], heads), []int64{0, 2, 1, 3})
		old := l.Layer.Context.GetOutput()[0]
		for _, c := range consumers[old] {
			rewire(c, old, ctx)
		}
		for _, out := range g.GetOutput() {
			if out.GetName() == old {
				return fmt.Errorf("layer %d: attention output %q is a graph output", i, old)
			}
		}
	}
	return TopologicalSort(g)
}

// toBSX lays x out as [batch, sequence, heads·head_dim].
func toBSX(b *Builder, x string, layout GQALayout) string {
	flat := b.ConstInt64s([]int64{0, 0, -1})
	switch layout {
	case LayoutBSHD:
		return b.Reshape(x, flat)
	case LayoutBHSD:
		return b.Reshape(b.Transpose(x, []int64{0, 2, 1, 3}), flat)
	}
	return x
}
