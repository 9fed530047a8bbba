package generate

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"ortalign/onnx"
	"ortalign/onnx/ort"
	"ortalign/pipeline/lm"
)

// newDerivedCached derives a KV cache for a model exported without one: the attention
// layers' keys and values are found (onnx.FindAttention), a probe run of the model learns
// which axes of them are the batch and the sequence, and the past is concatenated there
// (onnx.AddKVCache); a model that computes its positions inside the graph gets a
// position_ids input (onnx.AddPositionIDs); masks, positions and whatever else the graph
// builds from sequence lengths are computed over the past and the new tokens
// (onnx.FindMaskUses, onnx.ExtendMasksToPast). The result is checked against decoding
// without the cache on a padded batch before it is used.
func newDerivedCached(path string, m *onnx.Model, o GeneratorOptions) (*Generator, error) {
	gen, _, err := deriveCached(path, m, o)
	return gen, err
}

// deriveCached is newDerivedCached that also says what the surgery did.
func deriveCached(path string, m *onnx.Model, o GeneratorOptions) (*Generator, *derivation, error) {
	if !isFloatModel(m.Graph()) {
		return nil, nil, errors.New("the cache is fed from Go as float32; the model's logits are not float32")
	}
	if onnx.Input(m.Graph(), lm.AttentionMask) == nil {
		return nil, nil, errors.New("no attention_mask input")
	}
	dv, err := deriveCacheGraph(m, o)
	if err != nil {
		return nil, nil, err
	}
	if dv.inPlace != nil && !o.concatOnly {
		gen, err := dv.inPlace.open(path, o)
		if err == nil {
			return gen, dv, nil
		}
		dv.inPlaceErr, dv.inPlace = err, nil
	}
	gen, err := newGenerator(path, dv.model, cacheKind{pasts: dv.pasts, cached: true, mode: "derived"}, o)
	if err != nil {
		return nil, nil, fmt.Errorf("%w (%s)", err, dv)
	}
	if err := gen.checkCache(); err != nil {
		gen.Close()
		return nil, nil, fmt.Errorf("%w (%s)", err, dv)
	}
	return gen, dv, nil
}

// derivation is a derived cached decoding graph and what the surgery did to get it.
type derivation struct {
	model *onnx.Model
	pasts []cachePast
	// points are the tensors the pasts are joined to, in the order of pasts.
	points []string
	masks  onnx.KVMasks
	// positionsAdded: the graph computed its positions and now reads position_ids.
	positionsAdded bool
	// inPlace is the graph with its attention rewritten into GroupQueryAttention, tried
	// first; inPlaceErr says why there is none, or why it was not used.
	inPlace    *gqaDerived
	inPlaceErr error
}

// String summarises the surgery in one line for notices: where the pasts are joined and
// which mask and position values were extended to the past.
func (dv *derivation) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "past joined at %d tensors", len(dv.points))
	if len(dv.points) > 0 {
		p := dv.pasts[0]
		fmt.Fprintf(&b, ", e.g. %s %s at %q", p.name, p.layout(), dv.points[0])
	}
	if dv.positionsAdded {
		b.WriteString("; positions computed in the graph replaced by a position_ids input")
	}
	fmt.Fprintf(&b, "; %d mask/position uses extended to the past", len(dv.masks.Uses))
	for i, u := range dv.masks.Uses {
		if i == 3 {
			fmt.Fprintf(&b, ", and %d more", len(dv.masks.Uses)-i)
			break
		}
		sep := ", "
		if i == 0 {
			sep = ": "
		}
		fmt.Fprintf(&b, "%s%s query axis %d", sep, u, u.Axis)
	}
	return b.String()
}

// deriveCacheGraph derives from m a graph that takes and returns past keys and values.
func deriveCacheGraph(m *onnx.Model, o GeneratorOptions) (*derivation, error) {
	d := m.Clone()
	dg := d.Graph()
	dv := &derivation{model: d}
	if onnx.Input(dg, lm.PositionIDs) == nil {
		added, err := onnx.AddPositionIDs(dg, lm.PositionIDs)
		if err != nil {
			return nil, err
		}
		dv.positionsAdded = added
	}
	positions := ""
	if onnx.Input(dg, lm.PositionIDs) != nil {
		positions = lm.PositionIDs
	}
	layers := onnx.FindAttention(dg)
	if len(layers) == 0 {
		return nil, errors.New("no attention pattern (MatMul, Softmax, MatMul) recognised")
	}
	masks, err := onnx.FindMaskUses(dg, layers, lm.AttentionMask, positions)
	if err != nil {
		return nil, err
	}
	// Points above a head split or repeat sized by the new tokens' count need those sizes
	// for the whole sequence: probe the shapes they are computed from too (one analysis
	// of the graph for all of them).
	var shapeUses []onnx.KVMaskUse
	for _, l := range layers {
		for _, c := range []onnx.KVChain{l.Key, l.Value} {
			for _, pt := range c.Points {
				shapeUses = append(shapeUses, pt.ShapeUses(dg)...)
			}
		}
	}
	if err := masks.AddShapeReads(dg, shapeUses, lm.AttentionMask, positions); err != nil {
		return nil, err
	}
	scales, scaleErr := attentionScales(dg, layers)
	pr, err := probeKVAxes(d, layers, &masks, scaleInputs(scales), o)
	if err != nil {
		return nil, err
	}
	axes := pr.axes
	if dv.inPlaceErr = scaleErr; scaleErr == nil {
		dv.inPlace, dv.inPlaceErr = rewriteGQA(d, layers, scales, masks, positions, pr)
	}
	var specs []onnx.KVCacheSpec
	for i, l := range layers {
		for j, c := range []onnx.KVChain{l.Key, l.Value} {
			a := axes[2*i+j]
			kind := [2]string{"key", "value"}[j]
			past := fmt.Sprintf("past_key_values.%d.%s", i, kind)
			present := fmt.Sprintf("present.%d.%s", i, kind)
			pt := c.Points[a.point]
			specs = append(specs, onnx.KVCacheSpec{Point: pt, Axis: int64(a.seq), Past: past, Present: present,
				ElemType: onnx.Float, Rank: len(a.dims)})
			dv.pasts = append(dv.pasts, cachePast{name: past, present: present, dims: a.dims, batchAxis: a.batch, seqAxis: a.seq})
			dv.points = append(dv.points, pt.Tensor)
			masks.Uses = append(masks.Uses, pt.ShapeUses(dg)...)
		}
	}
	dv.masks = masks
	if err := onnx.AddKVCache(dg, d.Opset(""), specs); err != nil {
		return nil, err
	}
	if err := onnx.ExtendMasksToPast(dg, d.Opset(""), masks, lm.AttentionMask, lm.InputIDs, positions); err != nil {
		return nil, err
	}
	return dv, nil
}

// probed is what probeKVAxes learns: where each chain's past goes, the shapes of each
// layer's queries (the scores MatMul's first input) in its two runs, and the in-place
// cache check's reference logits (recordCheck).
type probed struct {
	axes              []kvAxes
	queries, queriesB [][]int64
	// scalars are the values of the extra scalars asked for, in the two runs.
	scalars map[string][2][]float32
	check   []checkStep
}

// kvAxes is where a chain's past goes: the point (index into KVChain.Points), its batch
// and sequence axes and its dimensions from the probe.
type kvAxes struct {
	point, batch, seq int
	dims              []int64
}

// The probe's two runs: batch sizes and sequence lengths that differ from each other and
// from the models' other dimensions.
const (
	probeBatchA, probeSeqA = 2, 5
	probeBatchB, probeSeqB = 3, 7
)

// probeKVAxes runs the model on two batches of different sizes and lengths with every
// candidate point, the mask uses' shapes and the shape reads as outputs. It picks for each
// chain, among the points with one axis that follows the batch size and one that follows
// the sequence length, the one with the fewest values per token (before a head repeat);
// at equal size one that needs no extended shapes (KVPoint.Extend), then the highest. It
// sets the mask uses' query axes and the shape reads' sequence
// entries in masks. The queries' shapes, the values of scalars (cast to float) and the
// check's reference logits come from the same session, which reads the weights where
// they are (no repacked copy).
func probeKVAxes(m *onnx.Model, layers []onnx.AttentionLayer, masks *onnx.KVMasks, scalars []string, o GeneratorOptions) (*probed, error) {
	p := m.Clone()
	g := p.Graph()
	var outs []string
	add := func(name string, dt onnx.DataType, dims []onnx.Dim) error {
		if !slices.Contains(outs, name) {
			outs = append(outs, name)
			if onnx.Output(g, name) == nil {
				return onnx.AddOutput(g, name, dt, dims)
			}
		}
		return nil
	}
	for _, l := range layers {
		for _, c := range []onnx.KVChain{l.Key, l.Value} {
			for _, pt := range c.Points {
				if err := add(pt.Tensor, onnx.Float, nil); err != nil {
					return nil, err
				}
			}
		}
		if err := add(l.Scores.GetInput()[0], onnx.Float, nil); err != nil {
			return nil, err
		}
	}
	if err := add(lm.LogitsOutput, onnx.Float, nil); err != nil {
		return nil, err
	}
	b := onnx.NewBuilder(g, p.Opset(""), "ortalign_probe")
	asFloat := map[string]string{}
	vector := []onnx.Dim{onnx.DimParam("rank")}
	for _, x := range scalars {
		// Flattened, so that no output is a scalar (ort.Options.NoScalarOutputs).
		asFloat[x] = b.Reshape(b.Cast(x, onnx.Float), b.ConstInt64s([]int64{-1}))
		if err := add(asFloat[x], onnx.Float, vector); err != nil {
			return nil, err
		}
	}
	shapeOf := map[string]string{}
	for _, v := range masks.Values {
		shapeOf[v] = b.Shape(v)
		if err := add(shapeOf[v], onnx.Int64, vector); err != nil {
			return nil, err
		}
	}
	for _, r := range masks.ShapeReads {
		if err := add(r, onnx.Int64, vector); err != nil {
			return nil, err
		}
	}
	so := o.sessionOptions()
	so.DisablePrepacking = true
	// The key and value points, the queries and the logits have batch and sequence
	// axes; the scalars and shapes are vectors.
	so.NoScalarOutputs = true
	sess, err := openSession(p, outs, so)
	if err != nil {
		return nil, fmt.Errorf("probe session: %w", err)
	}
	defer sess.Destroy()
	hasPos := onnx.Input(g, lm.PositionIDs) != nil
	run := func(b, t int) (map[string]*ort.Tensor, error) {
		shape := []int64{int64(b), int64(t)}
		ids := make([]int64, b*t)
		mask := make([]int64, b*t)
		pos := make([]int64, b*t)
		for i := range mask {
			mask[i], pos[i] = 1, int64(i%t)
		}
		feeds := map[string]*ort.Tensor{lm.InputIDs: ort.MustInt64Tensor(shape, ids), lm.AttentionMask: ort.MustInt64Tensor(shape, mask)}
		if hasPos {
			feeds[lm.PositionIDs] = ort.MustInt64Tensor(shape, pos)
		}
		return sess.Run(feeds, nil)
	}
	r1, err := run(probeBatchA, probeSeqA)
	if err != nil {
		return nil, fmt.Errorf("probe run: %w", err)
	}
	r2, err := run(probeBatchB, probeSeqB)
	if err != nil {
		return nil, fmt.Errorf("probe run: %w", err)
	}
	masks.SeqEntries = map[string][]bool{}
	for _, r := range masks.ShapeReads {
		masks.SeqEntries[r] = onnx.SeqEntries(r1[r].I64, r2[r].I64, probeSeqA, probeSeqB)
	}
	masks.Shapes, masks.SeqAxes = map[string][]int64{}, map[string][]bool{}
	for v, s := range shapeOf {
		masks.Shapes[v] = r1[s].I64
		masks.SeqAxes[v] = onnx.SeqEntries(r1[s].I64, r2[s].I64, probeSeqA, probeSeqB)
	}
	for i := range masks.Uses {
		u := &masks.Uses[i]
		s := shapeOf[u.Tensor]
		if s == "" {
			return nil, fmt.Errorf("mask used at %s: its shape was not probed", u)
		}
		if u.Axis, err = onnx.MaskUseAxis(*u, r1[s].I64, r2[s].I64, probeSeqA, probeSeqB); err != nil {
			return nil, err
		}
	}
	var res []kvAxes
	for li, l := range layers {
		for j, c := range []onnx.KVChain{l.Key, l.Value} {
			found := false
			var best kvAxes
			bestSize, bestExtend := int64(0), false
			for pi := len(c.Points) - 1; pi >= 0; pi-- {
				a, b := r1[c.Points[pi].Tensor], r2[c.Points[pi].Tensor]
				if a == nil || b == nil || a.F32 == nil || len(a.Shape) != len(b.Shape) {
					continue
				}
				batch, seq := -1, -1
				ok := true
				for ax := range a.Shape {
					switch {
					case a.Shape[ax] == b.Shape[ax]:
					case a.Shape[ax] == probeBatchA && b.Shape[ax] == probeBatchB && batch < 0:
						batch = ax
					case a.Shape[ax] == probeSeqA && b.Shape[ax] == probeSeqB && seq < 0:
						seq = ax
					default:
						ok = false
					}
				}
				if !ok || batch < 0 || seq < 0 {
					continue
				}
				// The smallest cache; at equal size a point needing no extended shapes,
				// then the highest.
				size := int64(1)
				for ax, d := range a.Shape {
					if ax != batch && ax != seq {
						size *= d
					}
				}
				extend := c.Points[pi].Extend
				if !found || size < bestSize || (size == bestSize && bestExtend && !extend) {
					best = kvAxes{point: pi, batch: batch, seq: seq, dims: slices.Clone(a.Shape)}
					bestSize, bestExtend, found = size, extend, true
				}
			}
			if !found {
				return nil, fmt.Errorf("layer %d %s: no tensor with a batch and a sequence axis", li, [2]string{"key", "value"}[j])
			}
			res = append(res, best)
		}
	}
	pr := &probed{axes: res, scalars: map[string][2][]float32{}}
	for x, f := range asFloat {
		pr.scalars[x] = [2][]float32{r1[f].F32, r2[f].F32}
	}
	for _, l := range layers {
		q := l.Scores.GetInput()[0]
		pr.queries, pr.queriesB = append(pr.queries, r1[q].Shape), append(pr.queriesB, r2[q].Shape)
	}
	// The reference of the in-place cache's check: the model's own logits, right-padded.
	pr.check, err = recordCheck(func(seqs [][]int64) ([]float32, error) {
		feeds, last, width := paddedFeeds(seqs, true, hasPos)
		out, err := sess.Run(feeds, nil)
		if err != nil {
			return nil, fmt.Errorf("probe run: %w", err)
		}
		logits := out[lm.LogitsOutput]
		vocab := int(logits.Shape[len(logits.Shape)-1])
		next := make([]float32, 0, len(seqs)*vocab)
		for i, t := range last {
			row := (i*width + int(t)) * vocab
			next = append(next, logits.F32[row:row+vocab]...)
		}
		return next, nil
	})
	if err != nil {
		return nil, err
	}
	return pr, nil
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

// KVCacheInfo says how generation decodes with a model: Mode is what
// Generator.CacheMode would say ("export", "derived" or "none").
type KVCacheInfo struct {
	Mode string
	// Reason says why there is no cache (Mode "none").
	Reason string
	// Detail describes the cache: its inputs, and for a derived one what the surgery did.
	Detail []string
}

// InspectKVCache tells how generation would decode with m (path labels messages): it
// builds the generator, deriving and checking a cache as NewGenerator does, and closes it.
// It needs ONNX Runtime; an error means the model cannot generate at all.
func InspectKVCache(path string, m *onnx.Model, threads int) (KVCacheInfo, error) {
	g := m.Graph()
	if err := lm.CheckInputs(g); err != nil {
		return KVCacheInfo{}, err
	}
	if onnx.Output(g, lm.LogitsOutput) == nil {
		return KVCacheInfo{}, fmt.Errorf("model has no output %q", lm.LogitsOutput)
	}
	pasts, err := lm.PastInputs(g)
	if err != nil {
		return KVCacheInfo{}, err
	}
	o := GeneratorOptions{Threads: threads}
	var info KVCacheInfo
	if len(pasts) > 0 {
		gen, err := newExportCached(path, m, pasts, o)
		if err != nil {
			return KVCacheInfo{Mode: "none", Reason: "the export's cache is not usable: " + err.Error()}, nil
		}
		defer gen.Close()
		info.Mode = gen.CacheMode()
		if gen.inPlace {
			info.Detail = append(info.Detail, "GroupQueryAttention: rows right-padded, the cache written in place")
		}
		for _, p := range gen.pasts {
			info.Detail = append(info.Detail, fmt.Sprintf("%s -> %s %v", p.name, p.present, p.dims))
		}
		return info, nil
	}
	gen, dv, err := deriveCached(path, m, o)
	if err != nil {
		return KVCacheInfo{Mode: "none", Reason: "no cache derived: " + err.Error()}, nil
	}
	defer gen.Close()
	info.Mode = gen.CacheMode()
	if gen.inPlace {
		info.Detail = append(info.Detail, fmt.Sprintf("attention of %d layers rewritten into GroupQueryAttention: rows right-padded, the cache written in place", dv.inPlace.layers))
		for _, p := range gen.pasts {
			info.Detail = append(info.Detail, fmt.Sprintf("%s -> %s %s", p.name, p.present, p.layout()))
		}
		info.Detail = append(info.Detail, "otherwise (the in-place cache failing its check) pasts would be concatenated:")
	} else if dv.inPlaceErr != nil {
		info.Detail = append(info.Detail, "not written in place (GroupQueryAttention): "+dv.inPlaceErr.Error())
	}
	for i, p := range dv.pasts {
		info.Detail = append(info.Detail, fmt.Sprintf("%s -> %s %s: joined at %s", p.name, p.present, p.layout(), dv.points[i]))
	}
	if dv.positionsAdded {
		info.Detail = append(info.Detail, "positions computed in the graph (arange) replaced by a position_ids input")
	}
	for _, u := range dv.masks.Uses {
		axis := "kept whole"
		if u.Axis >= 0 {
			axis = fmt.Sprintf("last q of axis %d", u.Axis)
		}
		info.Detail = append(info.Detail, fmt.Sprintf("extended to the past: %s, %s", u, axis))
	}
	return info, nil
}

// layout writes a past's dimensions with its batch and sequence axes named.
func (c cachePast) layout() string {
	parts := make([]string, len(c.dims))
	for i, d := range c.dims {
		switch i {
		case c.batchAxis:
			parts[i] = "batch"
		case c.seqAxis:
			parts[i] = "sequence"
		default:
			parts[i] = strconv.FormatInt(d, 10)
		}
	}
	return "[" + strings.Join(parts, ", ") + "]"
}
