package autodiff

import (
	"fmt"
	"maps"
	"slices"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
	"ortalign/onnx/ort"
)

// sampleShapes runs the forward model once on a sample and returns the
// shape of every value the active nodes read or write, plus the loss.
func sampleShapes(m *onnx.Model, p plan, types map[string]onnx.DataType, cfg Config) (map[string][]int64, error) {
	g := m.Graph()
	shapes := map[string][]int64{}
	for _, t := range g.GetInitializer() {
		shapes[t.GetName()] = append([]int64{}, t.GetDims()...)
	}
	feeds := cfg.SampleFeeds
	if feeds == nil {
		var err error
		if feeds, err = zeroFeeds(g); err != nil {
			return nil, err
		}
	}
	for _, in := range g.GetInput() {
		if _, isInit := shapes[in.GetName()]; isInit {
			continue
		}
		t, ok := feeds[in.GetName()]
		if !ok {
			return nil, fmt.Errorf("SampleFeeds has no value for graph input %q", in.GetName())
		}
		shapes[in.GetName()] = append([]int64{}, t.Shape...)
	}

	var want []string
	add := func(v string) {
		if v == "" || slices.Contains(want, v) {
			return
		}
		if _, known := shapes[v]; known {
			return
		}
		want = append(want, v)
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
	if len(want) == 0 {
		return shapes, nil
	}

	// Fetch Shape(v) rather than v: always rank 1, any element type, and
	// little to copy.
	probe := m.Clone()
	pg := probe.Graph()
	pg.Output = nil
	pb := onnx.NewBuilder(pg, probe.Opset(""), "shape")
	outs := make([]string, len(want))
	for i, v := range want {
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
	threads := cfg.Threads
	if threads <= 0 {
		threads = 1
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
		hint := ""
		if cfg.SampleFeeds == nil {
			hint = " (the made-up zero sample may not suit this model: pass Config.SampleFeeds)"
		}
		return nil, fmt.Errorf("sample forward run: %w%s", err, hint)
	}
	for i, v := range want {
		shapes[v] = append([]int64{}, out[outs[i]].I64...)
	}
	return shapes, nil
}

// zeroFeeds makes a zero-filled sample for each graph input that is not an
// initializer, giving each symbolic dim its own small size (2, 3, 4, ...)
// and unknown dims size 2.
func zeroFeeds(g *onnxpb.GraphProto) (map[string]*ort.Tensor, error) {
	inits := map[string]bool{}
	for _, t := range g.GetInitializer() {
		inits[t.GetName()] = true
	}
	sizes := map[string]int64{}
	feeds := map[string]*ort.Tensor{}
	for _, in := range g.GetInput() {
		if inits[in.GetName()] {
			continue
		}
		et, dims, ok := onnx.TensorType(in)
		if !ok || dims == nil {
			return nil, fmt.Errorf("graph input %q has no tensor type with a known rank: pass Config.SampleFeeds", in.GetName())
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
			return nil, fmt.Errorf("graph input %q has type %s, which the made-up sample cannot fill: pass Config.SampleFeeds", in.GetName(), et)
		}
		feeds[in.GetName()] = t
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
