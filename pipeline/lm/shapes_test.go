package lm

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
	"ortalign/onnx/ort"
)

func TestPadWidth(t *testing.T) {
	for _, c := range []struct{ width, multiple, want int }{
		{5, 0, 5}, {5, 1, 5}, {5, 8, 8}, {8, 8, 8}, {9, 8, 16}, {0, 64, 0}, {127, 64, 128}, {129, 64, 192},
	} {
		if got := padWidth(c.width, c.multiple); got != c.want {
			t.Errorf("padWidth(%d, %d) = %d, want %d", c.width, c.multiple, got, c.want)
		}
	}
}

// sumModel is y = ReduceSum(x, keepdims=0) over a [batch, seq] input, with a third,
// unnamed unknown dimension on a second input z ([?]) added to y's sum.
func sumModel(t *testing.T) *onnx.Model {
	t.Helper()
	g := &onnxpb.GraphProto{Name: proto.String("sum")}
	if err := onnx.AddInput(g, "x", onnx.Float, []onnx.Dim{{Param: "batch"}, {Param: "seq"}}); err != nil {
		t.Fatal(err)
	}
	if err := onnx.AddInput(g, "z", onnx.Float, []onnx.Dim{{Value: -1}}); err != nil {
		t.Fatal(err)
	}
	b := onnx.NewBuilder(g, 17, "")
	s := b.Add(b.Op("ReduceSum", []string{"x"}, onnx.AttrInt("keepdims", 0)), b.Op("ReduceSum", []string{"z"}, onnx.AttrInt("keepdims", 0)))
	AddIdentity(g, s, "y")
	if err := onnx.AddOutput(g, "y", onnx.Float, []onnx.Dim{}); err != nil {
		t.Fatal(err)
	}
	return onnx.NewModel(&onnxpb.ModelProto{IrVersion: proto.Int64(8), Graph: g,
		OpsetImport: []*onnxpb.OperatorSetIdProto{{Domain: proto.String(""), Version: proto.Int64(17)}}})
}

// The cache opens one session per input shape, keeps the most recent ones, gives every
// shape the right answer, and after maxStaticOpens openings serves every shape from one
// session with symbolic dimensions.
func TestShapeSessions(t *testing.T) {
	s := NewShapeSessions(sumModel(t), []string{"y"}, ort.Options{Threads: 1})
	defer s.Close()
	if len(s.inputs) != 2 {
		t.Fatalf("symbolic inputs %v, want x and z", s.inputs)
	}
	run := func(batch, seq, zlen int64) {
		t.Helper()
		x := make([]float32, batch*seq)
		for i := range x {
			x[i] = 1
		}
		z := make([]float32, zlen)
		for i := range z {
			z[i] = 2
		}
		feeds := map[string]*ort.Tensor{"x": {Shape: []int64{batch, seq}, F32: x}, "z": {Shape: []int64{zlen}, F32: z}}
		if got, want := runY(t, s, feeds), float32(batch*seq+2*zlen); got != want {
			t.Fatalf("shape %dx%d, z %d: y = %g, want %g", batch, seq, zlen, got, want)
		}
	}
	run(2, 8, 3)
	run(2, 8, 3)
	if s.opens != 1 || len(s.static) != 1 {
		t.Fatalf("one shape: %d openings, %d open sessions; want 1 and 1", s.opens, len(s.static))
	}
	run(2, 16, 3)
	run(2, 8, 3) // still open: no new opening
	if s.opens != 2 || len(s.static) != 2 {
		t.Fatalf("two shapes: %d openings, %d open; want 2 and 2", s.opens, len(s.static))
	}
	run(1, 8, 3) // a third shape evicts the least recently used (2x16)
	if s.opens != 3 || len(s.static) != maxStaticSessions || s.static[0].key == s.static[1].key {
		t.Fatalf("three shapes: %d openings, %d open; want 3 and %d", s.opens, len(s.static), maxStaticSessions)
	}
	for seq := int64(1); s.opens < maxStaticOpens; seq++ {
		run(3, seq, 1)
	}
	if s.dynamic != nil {
		t.Fatal("symbolic session opened before the limit")
	}
	run(4, 5, 6) // one shape too many: every shape now runs on the symbolic session
	run(2, 8, 3)
	if s.dynamic == nil || len(s.static) != 0 || s.opens != maxStaticOpens {
		t.Fatalf("after %d openings: dynamic %v, %d static open; want the symbolic session alone", s.opens, s.dynamic != nil, len(s.static))
	}
}

func TestShapeSessionsBadFeeds(t *testing.T) {
	s := NewShapeSessions(sumModel(t), []string{"y"}, ort.Options{Threads: 1})
	defer s.Close()
	if _, err := s.Session(map[string]*ort.Tensor{"x": {Shape: []int64{1, 1}, F32: []float32{1}}}); err == nil {
		t.Fatal("missing input z: no error")
	}
	if _, err := s.Session(map[string]*ort.Tensor{"x": {Shape: []int64{1}, F32: []float32{1}}, "z": {Shape: []int64{1}, F32: []float32{1}}}); err == nil {
		t.Fatal("x of rank 1: no error")
	}
}

// A large initializer is fed from Go memory, not embedded: the opened graph has it as an
// input, the caller's model keeps it, and the results are the embedded graph's.
func TestShapeSessionsFeedLargeInitializers(t *testing.T) {
	m := sumModel(t)
	g := m.Graph()
	w := make([]float32, FedMinElements)
	for i := range w {
		w[i] = float32(i%7) - 3
	}
	if err := onnx.AddInitializer(g, onnx.FloatTensor("w", []int64{int64(len(w))}, w)); err != nil {
		t.Fatal(err)
	}
	b := onnx.NewBuilder(g, 17, "w")
	y := g.GetNode()[len(g.GetNode())-1] // the Identity to y
	y.Input[0] = b.Add(y.GetInput()[0], b.Op("ReduceSum", []string{"w"}, onnx.AttrInt("keepdims", 0)))
	if err := onnx.TopologicalSort(g); err != nil {
		t.Fatal(err)
	}
	var want float32
	for _, v := range w {
		want += v
	}
	s := NewShapeSessions(m, []string{"y"}, ort.Options{Threads: 1})
	defer s.Close()
	if onnx.Initializer(s.model.Graph(), "w") != nil || len(s.fixed) != 1 || onnx.Initializer(m.Graph(), "w") == nil {
		t.Fatalf("w: fed %d, still embedded in the opened graph %v, kept in the caller's %v", len(s.fixed),
			onnx.Initializer(s.model.Graph(), "w") != nil, onnx.Initializer(m.Graph(), "w") != nil)
	}
	feeds := map[string]*ort.Tensor{"x": {Shape: []int64{1, 2}, F32: []float32{1, 1}}, "z": {Shape: []int64{1}, F32: []float32{2}}}
	if got := runY(t, s, feeds); got != 4+want {
		t.Fatalf("y = %g, want %g", got, 4+want)
	}
}

// runY runs feeds on the session s picks for them and returns sumModel's output y.
func runY(t *testing.T, s *ShapeSessions, feeds map[string]*ort.Tensor) float32 {
	t.Helper()
	sess, err := s.Session(feeds)
	if err != nil {
		t.Fatal(err)
	}
	out, err := sess.Run(feeds, nil)
	if err != nil {
		t.Fatal(err)
	}
	return out["y"].F32[0]
}
