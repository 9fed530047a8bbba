package autodiff

import (
	"fmt"
	"slices"
	"unsafe"

	"google.golang.org/protobuf/proto"

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
	inits := make(map[string]bool, len(g.GetInitializer()))
	for _, t := range g.GetInitializer() {
		inits[t.GetName()] = true
	}
	var want []string
	seen := map[string]bool{}
	add := func(v string) {
		if v != "" && !seen[v] && !inits[v] {
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
	pr, err := newProbe(m, want, threads, cfg.Values)
	var a map[string][]int64
	if err == nil {
		defer pr.close()
		a, err = pr.shapes(feeds)
	}
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
		s.b, _ = pr.shapes(other) // without it, ambiguous dims are handled at run time
	}
	return s, nil
}

// probe runs the forward model, with the Shape of each intermediate value
// as an output, to learn those shapes. One session serves both samples.
// The large float initializers are not in the probe model's bytes: they are
// fed as inputs over the model's own memory, so that neither Go nor ONNX
// Runtime copies the weights, and graph optimizations are off (the probe
// runs once or twice on a few tokens; optimizing a large graph costs more).
type probe struct {
	g       *onnxpb.GraphProto
	known   map[string][]int64 // shapes of the initializers
	fetch   []string           // values whose shape the probe fetches
	outs    []string           // Shape(fetch[i])
	weights map[string]*ort.Tensor
	sess    *ort.Session
}

// probeFedElements is the size from which a float initializer is fed to
// the probe session rather than embedded in its model.
const probeFedElements = 1024

func newProbe(m *onnx.Model, want []string, threads int, values map[string][]float32) (*probe, error) {
	g := m.Graph()
	pr := &probe{g: g, known: map[string][]int64{}, weights: map[string]*ort.Tensor{}}
	for _, t := range g.GetInitializer() {
		pr.known[t.GetName()] = append([]int64{}, t.GetDims()...)
	}
	inputs := map[string]bool{}
	for _, in := range g.GetInput() {
		inputs[in.GetName()] = true
	}
	for _, v := range want {
		if _, known := pr.known[v]; !known && !(inputs[v] && !pr.isInit(v)) {
			pr.fetch = append(pr.fetch, v)
		}
	}
	if len(pr.fetch) == 0 {
		return pr, nil
	}

	// The probe model shares the forward model's nodes, value infos and
	// small initializers (read only); its node list, inputs, outputs and
	// initializer list are its own.
	mp := m.Proto()
	saved := mp.Graph
	mp.Graph = nil
	pp := proto.Clone(mp).(*onnxpb.ModelProto)
	mp.Graph = saved
	pg := &onnxpb.GraphProto{
		Name:              g.Name,
		Node:              slices.Clone(g.GetNode()),
		Input:             slices.Clone(g.GetInput()),
		ValueInfo:         g.GetValueInfo(),
		SparseInitializer: g.GetSparseInitializer(),
	}
	pp.Graph = pg
	for _, t := range g.GetInitializer() {
		if data := fedFloats(t, values[t.GetName()]); data != nil {
			w, err := ort.NewFloatTensor(pr.known[t.GetName()], data)
			if err != nil {
				return nil, fmt.Errorf("initializer %q: %w", t.GetName(), err)
			}
			pr.weights[t.GetName()] = w
			if !inputs[t.GetName()] {
				pg.Input = append(pg.Input, onnx.TensorValueInfo(t.GetName(), onnx.Float, onnx.Dims(t.GetDims()...)))
			}
			continue
		}
		pg.Initializer = append(pg.Initializer, t)
	}
	// A fed weight's transpose (MatMul(x, Transpose(W)), as torch.onnx.export writes
	// every projection of a model near 2 GB) is fed too: W's own bytes read with the
	// transposed shape. The probe learns shapes only, and running the Transposes would
	// copy every weight on each sample run (14 s of the Qwen2.5-0.5B shape's probe).
	kept := pg.Node[:0]
	for _, n := range pg.Node {
		if w, ok := transposedWeight(n, pr.weights); ok && !inputs[n.GetOutput()[0]] {
			out := n.GetOutput()[0]
			pr.weights[out] = w
			pg.Input = append(pg.Input, onnx.TensorValueInfo(out, onnx.Float, onnx.Dims(w.Shape...)))
			continue
		}
		kept = append(kept, n)
	}
	pg.Node = kept
	probeModel := onnx.NewModel(pp)

	// Fetch Shape(v) rather than v: always rank 1, any element type, and
	// little to copy.
	pb := onnx.NewBuilder(pg, probeModel.Opset(""), "shape")
	pr.outs = make([]string, len(pr.fetch))
	for i, v := range pr.fetch {
		pr.outs[i] = pb.Shape(v)
		pg.Output = append(pg.Output, onnx.TensorValueInfo(pr.outs[i], onnx.Int64, onnx.Dims(-1)))
	}
	if len(feedable(pg)) == 0 {
		// onnxruntime_go cannot run a session without inputs: add an unused one.
		dummy := onnx.UniqueName(pg, "autodiff_dummy")
		if err := onnx.AddInput(pg, dummy, onnx.Float, onnx.Dims(1)); err != nil {
			return nil, err
		}
		w, err := ort.NewZeroFloatTensor([]int64{1})
		if err != nil {
			return nil, err
		}
		pr.weights[dummy] = w
	}
	b, err := probeModel.Marshal()
	if err != nil {
		return nil, err
	}
	pr.sess, err = ort.NewSession(b, pr.outs, ort.Options{Threads: threads, DisableOptimizations: true})
	if err != nil {
		return nil, fmt.Errorf("forward graph with intermediate outputs: %w", err)
	}
	return pr, nil
}

// transposedWeight returns the fed weight n transposes, viewed with the transposed
// shape (the values are not transposed: the probe only needs shapes), when n is a
// Transpose of a fed matrix.
func transposedWeight(n *onnxpb.NodeProto, fed map[string]*ort.Tensor) (*ort.Tensor, bool) {
	if n.GetOpType() != "Transpose" || n.GetDomain() != "" || len(n.GetInput()) != 1 || len(n.GetOutput()) != 1 {
		return nil, false
	}
	w, ok := fed[n.GetInput()[0]]
	if !ok || len(w.Shape) != 2 {
		return nil, false
	}
	for _, a := range n.GetAttribute() {
		if a.GetName() == "perm" && !slices.Equal(a.GetInts(), []int64{1, 0}) {
			return nil, false
		}
	}
	t, err := ort.NewFloatTensor([]int64{w.Shape[1], w.Shape[0]}, w.F32)
	return t, err == nil
}

func (pr *probe) isInit(v string) bool {
	_, ok := pr.known[v]
	return ok
}

func (pr *probe) close() {
	if pr.sess != nil {
		pr.sess.Destroy()
		pr.sess = nil
	}
}

// shapes runs the forward model on feeds and returns the shapes of the
// wanted values, of the graph inputs, and of the initializers.
func (pr *probe) shapes(feeds map[string]*ort.Tensor) (map[string][]int64, error) {
	shapes := make(map[string][]int64, len(pr.known)+len(pr.fetch))
	for k, v := range pr.known {
		shapes[k] = append([]int64{}, v...)
	}
	for _, name := range feedable(pr.g) {
		t, ok := feeds[name]
		if !ok {
			return nil, fmt.Errorf("SampleFeeds has no value for graph input %q", name)
		}
		shapes[name] = append([]int64{}, t.Shape...)
	}
	if len(pr.fetch) == 0 {
		return shapes, nil
	}
	in := map[string]*ort.Tensor{}
	for _, i := range pr.sess.Inputs() {
		if t, ok := pr.weights[i.Name]; ok {
			in[i.Name] = t
		} else if t, ok := feeds[i.Name]; ok {
			in[i.Name] = t
		}
	}
	out, err := pr.sess.Run(in, nil)
	if err != nil {
		return nil, fmt.Errorf("sample forward run: %w", err)
	}
	for i, v := range pr.fetch {
		shapes[v] = append([]int64{}, out[pr.outs[i]].I64...)
	}
	return shapes, nil
}

// littleEndian is whether float32s can be read in place from a tensor's
// raw (little-endian) bytes.
var littleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

// fedFloats returns the data of a large float initializer to feed the
// probe: given when it has t's size (Config.Values), else t's own data,
// read in place where it can be, copied where it is unaligned; nil when t
// is small, of another type or unreadable (then the probe model embeds it).
func fedFloats(t *onnxpb.TensorProto, given []float32) []float32 {
	if onnx.DataType(t.GetDataType()) != onnx.Float || len(t.GetDims()) == 0 {
		return nil
	}
	n := numel(t.GetDims())
	if n < probeFedElements {
		return nil
	}
	if int64(len(given)) == n {
		return given
	}
	if len(t.GetFloatData()) > 0 {
		if int64(len(t.GetFloatData())) != n {
			return nil
		}
		return t.GetFloatData()
	}
	raw := t.GetRawData()
	if int64(len(raw)) != 4*n {
		return nil
	}
	if !littleEndian || uintptr(unsafe.Pointer(&raw[0]))%4 != 0 {
		// A weight left unaligned in a mapped model file: one copy, still cheaper
		// than embedding it in the probe model for ONNX Runtime to copy again.
		data, err := onnx.TensorFloats(t)
		if err != nil {
			return nil
		}
		return data
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&raw[0])), n)
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
		}
		var t *ort.Tensor
		var err error
		switch et {
		case onnx.Float:
			t, err = ort.NewZeroFloatTensor(shape)
		case onnx.Double:
			t, err = ort.NewZeroDoubleTensor(shape)
		case onnx.Int64:
			t, err = ort.NewZeroInt64Tensor(shape)
		default:
			return nil, fmt.Errorf("graph input %q has type %s, which the made-up sample cannot fill: pass Config.SampleFeeds", name, et)
		}
		if err != nil {
			return nil, fmt.Errorf("graph input %q: %w", name, err)
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
