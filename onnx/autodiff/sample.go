package autodiff

import (
	"fmt"
	"maps"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
	"ortalign/onnx/ort"
)

// sampled holds the shapes of values on two runs of the forward graph: a
// on Config.SampleFeeds (or a made-up sample), b on a made-up sample in
// which every dynamic dim has another size. b is nil when that run failed;
// it tells dims fixed at 1 from dynamic dims that were 1 in sample a.
type sampled struct{ a, b map[string][]int64 }

// sampleShapes runs the forward model on the samples and returns the shape
// of every value the active nodes read or write, plus the loss.
func sampleShapes(m *onnx.Model, p plan, cfg Config) (sampled, error) {
	g := m.Graph()
	var want []string
	seen := map[string]bool{}
	add := func(v string) {
		if v != "" && !seen[v] && onnx.Initializer(g, v) == nil {
			seen[v] = true
			want = append(want, v)
		}
	}
	add(cfg.Loss)
	for _, n := range p.active {
		for _, v := range n.GetInput() {
			add(v)
		}
		for _, v := range n.GetOutput() {
			add(v)
		}
	}
	threads := max(cfg.Threads, 1)
	feeds := cfg.SampleFeeds
	if feeds == nil {
		var err error
		if feeds, err = zeroFeeds(g, nil); err != nil {
			return sampled{}, err
		}
	}
	a, err := probeShapes(m, want, feeds, threads)
	if err != nil {
		if cfg.SampleFeeds == nil {
			err = fmt.Errorf("%w (the made-up zero sample may not suit this model: pass Config.SampleFeeds)", err)
		}
		return sampled{}, err
	}
	s := sampled{a: a}
	other := cfg.SecondSampleFeeds
	if other == nil {
		if other, err = zeroFeeds(g, feeds); err != nil {
			other = nil
		}
	}
	if other != nil {
		s.b, _ = probeShapes(m, want, other, threads) // without it, ambiguous dims are handled at run time
	}
	return s, nil
}

// probeShapes runs the forward model on feeds and returns the shapes of
// the wanted values, of the graph inputs, and of the initializers.
func probeShapes(m *onnx.Model, want []string, feeds map[string]*ort.Tensor, threads int) (map[string][]int64, error) {
	g := m.Graph()
	shapes := map[string][]int64{}
	for _, t := range g.GetInitializer() {
		shapes[t.GetName()] = append([]int64{}, t.GetDims()...)
	}
	for _, name := range feedable(g) {
		t, ok := feeds[name]
		if !ok {
			return nil, fmt.Errorf("SampleFeeds has no value for graph input %q", name)
		}
		shapes[name] = append([]int64{}, t.Shape...)
	}
	var fetch []string
	for _, v := range want {
		if _, known := shapes[v]; !known {
			fetch = append(fetch, v)
		}
	}
	if len(fetch) == 0 {
		return shapes, nil
	}

	// Fetch Shape(v) rather than v: always rank 1, any element type, and
	// little to copy.
	probe := m.Clone()
	pg := probe.Graph()
	pg.Output = nil
	pb := onnx.NewBuilder(pg, probe.Opset(""), "shape")
	outs := make([]string, len(fetch))
	for i, v := range fetch {
		outs[i] = pb.Shape(v)
		pg.Output = append(pg.Output, onnx.TensorValueInfo(outs[i], onnx.Int64, onnx.Dims(-1)))
	}
	if len(feedable(pg)) == 0 {
		// onnxruntime_go cannot run a session without inputs: add an unused one.
		dummy := onnx.UniqueName(pg, "autodiff_dummy")
		if err := onnx.AddInput(pg, dummy, onnx.Float, onnx.Dims(1)); err != nil {
			return nil, err
		}
		feeds = maps.Clone(feeds)
		if feeds == nil {
			feeds = map[string]*ort.Tensor{}
		}
		feeds[dummy] = &ort.Tensor{Shape: []int64{1}, F32: []float32{0}}
	}
	b, err := probe.Marshal()
	if err != nil {
		return nil, err
	}
	sess, err := ort.NewSession(b, outs, ort.Options{Threads: threads})
	if err != nil {
		return nil, fmt.Errorf("forward graph with intermediate outputs: %w", err)
	}
	defer sess.Destroy()
	in := map[string]*ort.Tensor{}
	for _, i := range sess.Inputs() {
		if t, ok := feeds[i.Name]; ok {
			in[i.Name] = t
		}
	}
	out, err := sess.Run(in, nil)
	if err != nil {
		return nil, fmt.Errorf("sample forward run: %w", err)
	}
	for i, v := range fetch {
		shapes[v] = append([]int64{}, out[outs[i]].I64...)
	}
	return shapes, nil
}

// zeroFeeds makes a zero-filled sample for each graph input that is not an
// initializer: each symbolic dim gets its own small size (2, 3, 4, ...)
// and unknown dims size 2. With base, a dim whose size would equal base's
// gets twice base's size instead, so that every dim that is not fixed
// differs between the two samples.
func zeroFeeds(g *onnxpb.GraphProto, base map[string]*ort.Tensor) (map[string]*ort.Tensor, error) {
	sizes := map[string]int64{}
	feeds := map[string]*ort.Tensor{}
	for _, name := range feedable(g) {
		in := onnx.Input(g, name)
		et, dims, ok := onnx.TensorType(in)
		if !ok || dims == nil {
			return nil, fmt.Errorf("graph input %q has no tensor type with a known rank: pass Config.SampleFeeds", name)
		}
		bt := base[name]
		if base != nil && (bt == nil || len(bt.Shape) != len(dims)) {
			return nil, fmt.Errorf("sample of graph input %q has no shape of rank %d", name, len(dims))
		}
		shape := make([]int64, len(dims))
		n := int64(1)
		for i, d := range dims {
			switch {
			case d.IsKnown():
				shape[i] = d.Value
			case d.IsParam():
				if _, ok := sizes[d.Param]; !ok {
					sizes[d.Param] = int64(2 + len(sizes))
				}
				shape[i] = sizes[d.Param]
			default:
				shape[i] = 2
			}
			if bt != nil && !d.IsKnown() && shape[i] == bt.Shape[i] {
				shape[i] = 2 * bt.Shape[i]
			}
			n *= shape[i]
		}
		t := &ort.Tensor{Shape: shape}
		switch et {
		case onnx.Float:
			t.F32 = make([]float32, n)
		case onnx.Double:
			t.F64 = make([]float64, n)
		case onnx.Int64:
			t.I64 = make([]int64, n)
		default:
			return nil, fmt.Errorf("graph input %q has type %s, which the made-up sample cannot fill: pass Config.SampleFeeds", name, et)
		}
		feeds[name] = t
	}
	return feeds, nil
}

// numel is the number of elements of a tensor of the given shape.
func numel(shape []int64) int64 {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	return n
}

// feedable returns the inputs of g that are not initializers.
func feedable(g *onnxpb.GraphProto) []string {
	inits := map[string]bool{}
	for _, t := range g.GetInitializer() {
		inits[t.GetName()] = true
	}
	var out []string
	for _, in := range g.GetInput() {
		if !inits[in.GetName()] {
			out = append(out, in.GetName())
		}
	}
	return out
}
