package ort

import (
	"slices"
	"strings"
	"testing"

	"ortalign/onnx"
)

// badTensors are malformed tensors, each with a fragment its error must contain.
var badTensors = []struct {
	name string
	t    *Tensor
	want []string
}{
	{"empty buffer, nonzero shape", &Tensor{Shape: []int64{2, 3}, F32: []float32{}}, []string{"[2 3]", "needs 6 elements", "length 0"}},
	{"nil buffer, nonzero shape", &Tensor{Shape: []int64{2, 3}}, []string{"[2 3]", "no data buffer"}},
	{"short buffer", &Tensor{Shape: []int64{2, 3}, F32: []float32{1, 2, 3, 4, 5}}, []string{"[2 3]", "needs 6", "length 5"}},
	{"long buffer", &Tensor{Shape: []int64{2, 3}, F32: make([]float32, 7)}, []string{"[2 3]", "needs 6", "length 7"}},
	{"negative dim", &Tensor{Shape: []int64{2, -3}, F32: make([]float32, 6)}, []string{"[2 -3]", "negative dimension -3"}},
	{"negative dim beside zero", &Tensor{Shape: []int64{0, -1}, F32: []float32{}}, []string{"[0 -1]", "negative"}},
	{"both buffers", &Tensor{Shape: []int64{2}, F32: []float32{1, 2}, I64: []int64{1, 2}}, []string{"[2]", "F32, I64", "exactly one"}},
	{"zero dim, nil buffer", &Tensor{Shape: []int64{2, 0, 3}}, []string{"[2 0 3]", "no data buffer"}},
	{"zero dim, data", &Tensor{Shape: []int64{2, 0}, I64: []int64{1}}, []string{"[2 0]", "needs 0", "length 1"}},
	{"scalar, empty", &Tensor{Shape: []int64{}, F32: []float32{}}, []string{"[]", "needs 1", "length 0"}},
	{"overflow", &Tensor{Shape: []int64{1 << 40, 1 << 40}, F32: []float32{1}}, []string{"more elements"}},
	{"nil tensor", nil, []string{"nil tensor"}},
}

func TestTensorCheck(t *testing.T) {
	for _, c := range badTensors {
		t.Run(c.name, func(t *testing.T) {
			err := c.t.Check()
			if err == nil {
				t.Fatalf("Check() = nil, want an error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Check() = %q, want it to contain %q", err, w)
				}
			}
		})
	}
	for _, ok := range []*Tensor{
		{Shape: []int64{2, 3}, F32: make([]float32, 6)},
		{Shape: []int64{2, 0, 8}, F32: []float32{}},
		{Shape: []int64{}, I64: []int64{4}},
		{Shape: nil, F64: []float64{4}},
	} {
		if err := ok.Check(); err != nil {
			t.Errorf("Check(%+v) = %v, want nil", ok, err)
		}
	}
}

func TestTensorConstructors(t *testing.T) {
	if x, err := NewFloatTensor([]int64{2, 3}, make([]float32, 6)); err != nil || x.F32 == nil || x.I64 != nil {
		t.Errorf("NewFloatTensor([2 3], 6 values) = %+v, %v", x, err)
	}
	if x, err := NewFloatTensor([]int64{2, 0, 8}, nil); err != nil || x.F32 == nil || len(x.F32) != 0 {
		t.Errorf("NewFloatTensor([2 0 8], nil) = %+v, %v; want an empty non-nil buffer", x, err)
	}
	if x, err := NewInt64Tensor([]int64{}, []int64{7}); err != nil || x.I64[0] != 7 {
		t.Errorf("NewInt64Tensor(scalar) = %+v, %v", x, err)
	}
	if x, err := NewDoubleTensor([]int64{1}, []float64{0.5}); err != nil || x.F64[0] != 0.5 {
		t.Errorf("NewDoubleTensor = %+v, %v", x, err)
	}
	shape := []int64{3}
	x, _ := NewInt64Tensor(shape, []int64{1, 2, 3})
	shape[0] = 5
	if x.Shape[0] != 3 {
		t.Errorf("the constructor kept the caller's shape slice")
	}
	for _, c := range []struct {
		name string
		err  func() error
		want []string
	}{
		{"float, nil buffer, nonzero shape", func() error { _, err := NewFloatTensor([]int64{2, 3}, nil); return err }, []string{"[2 3]", "needs 6", "length 0"}},
		{"float, mismatched", func() error { _, err := NewFloatTensor([]int64{2, 3}, make([]float32, 4)); return err }, []string{"[2 3]", "needs 6", "length 4"}},
		{"int64, negative dim", func() error { _, err := NewInt64Tensor([]int64{-1}, []int64{1}); return err }, []string{"[-1]", "negative"}},
		{"int64, mismatched", func() error { _, err := NewInt64Tensor([]int64{4}, []int64{1}); return err }, []string{"[4]", "needs 4", "I64 buffer has length 1"}},
		{"double, scalar without data", func() error { _, err := NewDoubleTensor(nil, nil); return err }, []string{"[]", "needs 1", "length 0"}},
	} {
		err := c.err()
		if err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not contain %q", c.name, err, w)
			}
		}
	}
}

// TestRunRejectsBadTensors feeds each malformed tensor as an input and as a preallocated
// output: Run must return an error naming it, never panic.
func TestRunRejectsBadTensors(t *testing.T) {
	s, err := NewSessionFromFile("testdata/addsum.onnx", nil, Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Destroy()
	good := func() map[string]*Tensor {
		return map[string]*Tensor{
			"x":   {Shape: []int64{2, 3}, F32: []float32{1, 2, 3, 4, 5, 6}},
			"ids": {Shape: []int64{2}, I64: []int64{7, 9}},
		}
	}
	for _, c := range badTensors {
		t.Run(c.name, func(t *testing.T) {
			in := good()
			in["x"] = c.t
			_, err := s.Run(in, nil)
			if err == nil || !strings.Contains(err.Error(), `input "x"`) || !strings.Contains(err.Error(), c.want[0]) {
				t.Errorf("bad input: Run error = %v, want one naming input \"x\" and containing %q", err, c.want[0])
			}
			_, err = s.Run(good(), map[string]*Tensor{"y": c.t})
			if err == nil || !strings.Contains(err.Error(), `output buffer "y"`) || !strings.Contains(err.Error(), c.want[0]) {
				t.Errorf("bad output buffer: Run error = %v, want one naming output \"y\" and containing %q", err, c.want[0])
			}
		})
	}
	// The session still runs after the refusals.
	if out, err := s.Run(good(), nil); err != nil || out["s"].F32[0] != 33 {
		t.Fatalf("good run after bad ones: %v, %v", out, err)
	}
	// A well-formed output buffer of the wrong shape is ORT's error, not a crash.
	if _, err := s.Run(good(), map[string]*Tensor{"y": {Shape: []int64{3, 2}, F32: make([]float32, 6)}}); err == nil {
		t.Error("output buffer of the wrong shape: no error")
	}
}

// TestRunEmptyBatch: a zero-size dimension with an empty buffer is well formed and runs.
func TestRunEmptyBatch(t *testing.T) {
	s, err := NewSessionFromFile("testdata/addsum.onnx", []string{"y", "idsf"}, Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Destroy()
	x, err := NewFloatTensor([]int64{0, 3}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := NewInt64Tensor([]int64{0}, nil)
	if err != nil {
		t.Fatal(err)
	}
	out, err := s.Run(map[string]*Tensor{"x": x, "ids": ids}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if y := out["y"]; len(y.Shape) != 2 || y.Shape[0] != 0 || len(y.F32) != 0 {
		t.Errorf("y = %+v, want shape [0 3] and no data", y)
	}
}

// TestSessionWithoutInputsOrOutputs: onnxruntime_go panics running a session without
// inputs or fetched outputs; NewSession refuses both, and Run refuses a destroyed session.
func TestSessionWithoutInputsOrOutputs(t *testing.T) {
	m, err := onnx.Load("testdata/addsum.onnx")
	if err != nil {
		t.Fatal(err)
	}
	g := m.Graph()
	onnx.RemoveInput(g, "x")
	onnx.RemoveInput(g, "ids")
	if err := onnx.AddInitializer(g, onnx.FloatTensor("x", []int64{1, 3}, []float32{1, 2, 3})); err != nil {
		t.Fatal(err)
	}
	if err := onnx.AddInitializer(g, onnx.Int64Tensor("ids", []int64{1}, []int64{5})); err != nil {
		t.Fatal(err)
	}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if s, err := NewSession(b, nil, Options{Threads: 1}); err == nil || !strings.Contains(err.Error(), "no inputs") {
		if s != nil {
			s.Destroy()
		}
		t.Errorf("model without inputs: NewSession error = %v, want one saying it has no inputs", err)
	}
	if s, err := NewSessionFromFile("testdata/addsum.onnx", []string{}, Options{Threads: 1}); err == nil || !strings.Contains(err.Error(), "no outputs") {
		if s != nil {
			s.Destroy()
		}
		t.Errorf("empty output list: NewSession error = %v, want one saying there are no outputs", err)
	}
	s, err := NewSessionFromFile("testdata/addsum.onnx", nil, Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	s.Destroy()
	if _, err := s.Run(map[string]*Tensor{}, nil); err == nil || !strings.Contains(err.Error(), "destroyed") {
		t.Errorf("Run on a destroyed session: %v", err)
	}
	if _, err := (&Session{}).Run(nil, nil); err == nil {
		t.Error("Run on a zero Session: no error")
	}
}

// TestNoScalarOutputs: an output whose rank the model does not declare runs as a tensor
// when the caller vouches that no output is a scalar (no shape-inference session), and
// as before without the option.
func TestNoScalarOutputs(t *testing.T) {
	m, err := onnx.Load("testdata/addsum.onnx")
	if err != nil {
		t.Fatal(err)
	}
	onnx.Output(m.Graph(), "y").GetType().GetTensorType().Shape = nil
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	in := map[string]*Tensor{
		"x":   {Shape: []int64{2, 3}, F32: []float32{1, 2, 3, 4, 5, 6}},
		"ids": {Shape: []int64{2}, I64: []int64{7, 9}},
	}
	for _, noScalars := range []bool{true, false} {
		s, err := NewSession(b, []string{"y"}, Options{Threads: 1, NoScalarOutputs: noScalars})
		if err != nil {
			t.Fatal(err)
		}
		// Without the option ONNX Runtime's inference gives y's rank; with it, none is
		// asked for.
		if dims, rank := s.Outputs()[0].Dims, map[bool]int{true: 1, false: 2}[noScalars]; len(dims) != rank {
			t.Errorf("NoScalarOutputs %v: y's dims %v, want rank %d", noScalars, dims, rank)
		}
		out, err := s.Run(in, nil)
		s.Destroy()
		if err != nil {
			t.Fatalf("NoScalarOutputs %v: %v", noScalars, err)
		}
		if y := out["y"]; !slices.Equal(y.Shape, []int64{2, 3}) || !slices.Equal(y.F32, []float32{2, 4, 6, 5, 7, 9}) {
			t.Errorf("NoScalarOutputs %v: y = %+v, want [2 3] 2 4 6 5 7 9", noScalars, y)
		}
	}
}
