package pipeline

import (
	"errors"
	"fmt"
	"math"
	"slices"

	"ortalign/onnx"
	"ortalign/onnx/ort"
)

// newDerivedCached derives a KV cache for a model exported without one: the attention
// layers' keys and values are found (onnx.FindAttention), a probe run of the model learns
// which axes of them are the batch and the sequence, and the past is concatenated there
// (onnx.AddKVCache); a model that computes its positions inside the graph gets a
// position_ids input (onnx.AddPositionIDs). The result is checked against decoding
// without the cache on a padded batch before it is used.
func newDerivedCached(path string, m *onnx.Model, o GeneratorOptions) (*Generator, error) {
	g := m.Graph()
	if !isFloatModel(g) {
		return nil, errors.New("the cache is fed from Go as float32; the model's logits are not float32")
	}
	if onnx.Input(g, attentionMask) == nil {
		return nil, errors.New("no attention_mask input")
	}
	layers := onnx.FindAttention(g)
	if len(layers) == 0 {
		return nil, errors.New("no attention pattern (MatMul, Softmax, MatMul) recognised")
	}
	axes, err := probeKVAxes(m, layers, o)
	if err != nil {
		return nil, err
	}
	d := m.Clone()
	dg := d.Graph()
	// The clone's layers: FindAttention is deterministic, so the same order.
	dl := onnx.FindAttention(dg)
	if len(dl) != len(layers) {
		return nil, errors.New("attention layers changed on clone")
	}
	var specs []onnx.KVCacheSpec
	var pasts []cachePast
	for i, l := range dl {
		for j, c := range []onnx.KVChain{l.Key, l.Value} {
			a := axes[2*i+j]
			kind := [2]string{"key", "value"}[j]
			past := fmt.Sprintf("past_key_values.%d.%s", i, kind)
			present := fmt.Sprintf("present.%d.%s", i, kind)
			specs = append(specs, onnx.KVCacheSpec{Point: c.Points[a.point], Axis: int64(a.seq), Past: past, Present: present,
				ElemType: onnx.Float, Rank: len(a.dims)})
			pasts = append(pasts, cachePast{name: past, present: present, dims: a.dims, batchAxis: a.batch, seqAxis: a.seq})
		}
	}
	if onnx.Input(dg, positionIDs) == nil {
		if _, err := onnx.AddPositionIDs(dg, positionIDs); err != nil {
			return nil, err
		}
	}
	if err := onnx.AddKVCache(dg, d.Opset(""), specs); err != nil {
		return nil, err
	}
	gen, err := newGenerator(path, d, pasts, true, "derived", o)
	if err != nil {
		return nil, err
	}
	if err := gen.checkCache(); err != nil {
		gen.Close()
		return nil, err
	}
	return gen, nil
}

// kvAxes is where a chain's past goes: the point (index into KVChain.Points), its batch
// and sequence axes and its dimensions from the probe.
type kvAxes struct {
	point, batch, seq int
	dims              []int64
}

// probeKVAxes runs the model on two batches of different sizes and lengths with every
// candidate point as an output, and picks for each chain the highest point with one axis
// that follows the batch size and one that follows the sequence length.
func probeKVAxes(m *onnx.Model, layers []onnx.AttentionLayer, o GeneratorOptions) ([]kvAxes, error) {
	p := m.Clone()
	g := p.Graph()
	var outs []string
	seen := map[string]bool{}
	for _, l := range layers {
		for _, c := range []onnx.KVChain{l.Key, l.Value} {
			for _, pt := range c.Points {
				if !seen[pt.Tensor] && onnx.Output(g, pt.Tensor) == nil {
					seen[pt.Tensor] = true
					if err := onnx.AddOutput(g, pt.Tensor, onnx.Float, nil); err != nil {
						return nil, err
					}
				}
				outs = append(outs, pt.Tensor)
			}
		}
	}
	outs = slices.Compact(slices.Sorted(slices.Values(outs)))
	sess, err := newModelSession(p, outs, ort.Options{Threads: o.Threads})
	if err != nil {
		return nil, fmt.Errorf("probe session: %w", err)
	}
	defer sess.Destroy()
	hasPos := onnx.Input(g, positionIDs) != nil
	run := func(b, t int) (map[string]*ort.Tensor, error) {
		shape := []int64{int64(b), int64(t)}
		ids := make([]int64, b*t)
		mask := make([]int64, b*t)
		pos := make([]int64, b*t)
		for i := range mask {
			mask[i], pos[i] = 1, int64(i%t)
		}
		feeds := map[string]*ort.Tensor{inputIDs: {Shape: shape, I64: ids}, attentionMask: {Shape: shape, I64: mask}}
		if hasPos {
			feeds[positionIDs] = &ort.Tensor{Shape: shape, I64: pos}
		}
		return sess.Run(feeds, nil)
	}
	r1, err := run(2, 5)
	if err != nil {
		return nil, fmt.Errorf("probe run: %w", err)
	}
	r2, err := run(3, 7)
	if err != nil {
		return nil, fmt.Errorf("probe run: %w", err)
	}
	var res []kvAxes
	for li, l := range layers {
		for j, c := range []onnx.KVChain{l.Key, l.Value} {
			found := false
			for pi := len(c.Points) - 1; pi >= 0 && !found; pi-- {
				a, b := r1[c.Points[pi].Tensor], r2[c.Points[pi].Tensor]
				if a == nil || b == nil || a.F32 == nil || len(a.Shape) != len(b.Shape) {
					continue
				}
				batch, seq := -1, -1
				ok := true
				for ax := range a.Shape {
					switch {
					case a.Shape[ax] == b.Shape[ax]:
					case a.Shape[ax] == 2 && b.Shape[ax] == 3 && batch < 0:
						batch = ax
					case a.Shape[ax] == 5 && b.Shape[ax] == 7 && seq < 0:
						seq = ax
					default:
						ok = false
					}
				}
				if ok && batch >= 0 && seq >= 0 {
					res = append(res, kvAxes{point: pi, batch: batch, seq: seq, dims: slices.Clone(a.Shape)})
					found = true
				}
			}
			if !found {
				return nil, fmt.Errorf("layer %d %s: no tensor with a batch and a sequence axis", li, [2]string{"key", "value"}[j])
			}
		}
	}
	return res, nil
}

// checkCache compares decoding with the derived cache against re-running the whole
// sequence, on a left-padded batch of two prompts for a few greedy steps.
func (gen *Generator) checkCache() error {
	v := int64(gen.vocab)
	seqs := [][]int64{{1 % v, 2 % v, 3 % v}, {4 % v, 5 % v, 6 % v, 7 % v, 8 % v}}
	c, logits, err := gen.prefill(seqs, true)
	if err != nil {
		return err
	}
	active := []bool{true, true}
	for step := 0; step < 4; step++ {
		full, err := gen.runFull(seqs)
		if err != nil {
			return err
		}
		want := full[NextLogitsOutput].F32
		worst := 0.0
		for i := range want {
			d := math.Abs(float64(logits[i]-want[i])) / (1 + math.Abs(float64(want[i])))
			worst = max(worst, d)
		}
		if !(worst <= 1e-3) {
			return fmt.Errorf("the derived cache's logits differ from a full run by %.2g at step %d", worst, step)
		}
		tokens := make([]int64, len(seqs))
		for i := range seqs {
			row := logits[i*gen.vocab : (i+1)*gen.vocab]
			best := 0
			for k, x := range row {
				if x > row[best] {
					best = k
				}
			}
			tokens[i] = int64(best)
			seqs[i] = append(seqs[i], tokens[i])
		}
		if logits, err = c.step(tokens, active); err != nil {
			return err
		}
	}
	return nil
}
