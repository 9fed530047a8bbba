package lm

import (
	"fmt"
	"sort"
	"strings"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
	"ortalign/onnx/ort"
)

// Shape-specialised sessions.
//
// ONNX Runtime plans a session's memory once, when it opens it, and its planner compares
// every value it frees with every one it allocates. With symbolic batch and sequence
// dimensions on a training graph that costs time quadratic in the graph's size: 9 of the
// 15 s it takes to open a SmolLM2-135M training graph (11.5k nodes after optimisation),
// more on larger graphs. With every input dimension fixed, ORT folds the shape
// arithmetic away (a third of the nodes) and sizes are plain numbers: the same graph
// opens in under 3 s. So the engine opens the training graph once per batch
// shape, with the shape written into the graph's inputs, and pads sequences to a
// multiple (TrainConfig.PadToMultipleOf) so that a run sees few shapes. A run that keeps
// bringing new shapes (online RL's varying completions) would pay an opening per shape:
// after maxStaticOpens openings it switches to one session with symbolic dimensions.

// DefaultPadToMultipleOf is the sequence-length multiple batches are padded to when
// TrainConfig.PadToMultipleOf is 0 (TRL's pad_to_multiple_of).
const DefaultPadToMultipleOf = 64

const (
	// maxStaticSessions is how many shape-specialised sessions stay open at once. Each
	// keeps its own memory arena, so more would multiply the activation memory.
	maxStaticSessions = 2
	// maxStaticOpens is how many shape-specialised sessions a run opens before it falls
	// back to a single session with symbolic dimensions.
	maxStaticOpens = 6
)

// shapeSessions opens and caches sessions of one graph for the shapes it is fed.
type ShapeSessions struct {
	model   *onnx.Model            // the graph, its large initializers turned into inputs
	fixed   map[string]*ort.Tensor // their values, fed on every run
	outputs []string
	opts    ort.Options
	inputs  []string       // inputs with a symbolic or unknown dimension, sorted
	rank    map[string]int // their ranks
	static  []keyedSession // most recently used first
	opens   int
	dynamic *ort.Session
}

type keyedSession struct {
	key  string
	sess *ort.Session
}

func NewShapeSessions(m *onnx.Model, outputs []string, o ort.Options) *ShapeSessions {
	m, fixed := FeedLargeInitializers(m)
	s := &ShapeSessions{model: m, fixed: fixed, outputs: outputs, opts: o, rank: map[string]int{}}
	for _, in := range m.Graph().GetInput() {
		if _, ok := fixed[in.GetName()]; ok {
			continue
		}
		dims := in.GetType().GetTensorType().GetShape().GetDim()
		for _, d := range dims {
			if d.GetDimParam() != "" || d.GetDimValue() <= 0 {
				s.inputs = append(s.inputs, in.GetName())
				s.rank[in.GetName()] = len(dims)
				break
			}
		}
	}
	sort.Strings(s.inputs)
	return s
}

// session returns a session for feeds: one specialised to their shapes while the run
// has opened few, else the symbolic one. It adds the graph's fixed weights to feeds.
func (s *ShapeSessions) Session(feeds map[string]*ort.Tensor) (*ort.Session, error) {
	for name, t := range s.fixed {
		feeds[name] = t
	}
	if s.dynamic != nil {
		return s.dynamic, nil
	}
	var key strings.Builder
	for _, name := range s.inputs {
		t, ok := feeds[name]
		if !ok {
			return nil, fmt.Errorf("missing input %q", name)
		}
		if len(t.Shape) != s.rank[name] {
			return nil, fmt.Errorf("input %q: shape %v, the graph wants rank %d", name, t.Shape, s.rank[name])
		}
		fmt.Fprintf(&key, "%s%v;", name, t.Shape)
	}
	for i, k := range s.static {
		if k.key == key.String() {
			copy(s.static[1:i+1], s.static[:i])
			s.static[0] = k
			return k.sess, nil
		}
	}
	if s.opens >= maxStaticOpens {
		s.Close()
		sess, err := NewModelSession(s.model, s.outputs, s.opts)
		if err != nil {
			return nil, err
		}
		s.dynamic = sess
		return sess, nil
	}
	if len(s.static) >= maxStaticSessions {
		last := len(s.static) - 1
		s.static[last].sess.Destroy()
		s.static = s.static[:last]
	}
	sess, err := NewModelSession(s.specialise(feeds), s.outputs, s.opts)
	if err != nil {
		return nil, err
	}
	s.opens++
	s.static = append([]keyedSession{{key.String(), sess}}, s.static...)
	return sess, nil
}

// specialise returns a copy of the graph whose inputs have the shapes of feeds.
func (s *ShapeSessions) specialise(feeds map[string]*ort.Tensor) *onnx.Model {
	m := s.model.Clone()
	for _, in := range m.Graph().GetInput() {
		t, ok := feeds[in.GetName()]
		if _, symbolic := s.rank[in.GetName()]; !ok || !symbolic {
			continue
		}
		for i, d := range in.GetType().GetTensorType().GetShape().GetDim() {
			d.Value = &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: t.Shape[i]}
		}
	}
	return m
}

// close destroys every open session.
func (s *ShapeSessions) Close() {
	for _, k := range s.static {
		k.sess.Destroy()
	}
	s.static = nil
	if s.dynamic != nil {
		s.dynamic.Destroy()
		s.dynamic = nil
	}
}

// fedMinElements is the size from which a float initializer of a training graph is fed
// as an input over Go memory rather than embedded in the graph.
const FedMinElements = 1 << 16

// feedLargeInitializers returns m with its large float32 initializers turned into graph
// inputs, and their values. A LoRA training graph holds the frozen base weights (2 GB for
// Qwen2.5-0.5B): embedded, every session would serialize them, ONNX Runtime would copy
// them, fold each Transpose of them into yet another copy and prepack them for MatMul —
// three copies per open session. Fed, they are read where they are: a view of the
// model's memory, or one aligned copy of a weight left unaligned in a mapped model file.
// m itself is not changed; without large initializers it is returned as is.
func FeedLargeInitializers(m *onnx.Model) (*onnx.Model, map[string]*ort.Tensor) {
	fixed := map[string]*ort.Tensor{}
	for _, t := range m.Graph().GetInitializer() {
		n, err := onnx.NumElements(t)
		if err != nil || n < FedMinElements || onnx.DataType(t.GetDataType()) != onnx.Float {
			continue
		}
		data, ok := onnx.FloatsView(t)
		if !ok {
			if data, err = onnx.TensorFloats(t); err != nil {
				continue // stays embedded; ONNX Runtime reports what is wrong with it
			}
		}
		w, err := ort.NewFloatTensor(t.GetDims(), data)
		if err != nil {
			continue // as above
		}
		fixed[t.GetName()] = w
	}
	if len(fixed) == 0 {
		return m, nil
	}
	fed := m.Clone()
	g := fed.Graph()
	inputs := map[string]bool{}
	for _, in := range g.GetInput() {
		inputs[in.GetName()] = true // an older model may list initializers as inputs too
	}
	kept := g.Initializer[:0]
	for _, t := range g.GetInitializer() {
		if _, ok := fixed[t.GetName()]; !ok {
			kept = append(kept, t)
			continue
		}
		if !inputs[t.GetName()] {
			g.Input = append(g.Input, onnx.TensorValueInfo(t.GetName(), onnx.Float, onnx.Dims(t.GetDims()...)))
		}
	}
	g.Initializer = kept
	return fed, fixed
}

// padWidth rounds a batch's sequence length up to a multiple of m (m <= 1: unchanged).
func padWidth(width, m int) int {
	if m <= 1 || width%m == 0 {
		return width
	}
	return (width/m + 1) * m
}
