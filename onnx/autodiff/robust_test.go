package autodiff

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
	"ortalign/onnx/ort"
)

// buildNoPanic runs Build and reports a panic as a test error (and as an
// error result), so that a panicking case fails instead of crashing the run.
func buildNoPanic(t *testing.T, m *onnx.Model, cfg Config) (res *Result, err error) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			t.Errorf("Build panicked: %v", r)
			res, err = nil, fmt.Errorf("panic: %v", r)
		}
	}()
	return Build(m, cfg)
}

// withRule replaces the rule of op for the rest of the test.
func withRule(t *testing.T, op string, r rule) {
	t.Helper()
	old, ok := ops[op]
	if !ok || old.grad == nil {
		t.Fatalf("no rule for %s to replace", op)
	}
	d := old
	d.grad = r
	ops[op] = d
	t.Cleanup(func() { ops[op] = old })
}

// mulModel is loss = ReduceSum(Mul(a, x)) with a = p or, when viaNeg,
// Neg(p), for a trainable p and a data input x. It returns the Mul node.
func mulModel(viaNeg bool) (*onnx.Model, *tc, string, *onnxpb.NodeProto) {
	m, c := newCase("mul")
	c.data([]int64{1})
	p := c.param(2, 3)
	x := c.data([]int64{2, 3})
	a := p
	if viaNeg {
		a = c.b.Neg(p)
	}
	y := c.b.Mul(a, x)
	mul := c.g.Node[len(c.g.Node)-1]
	setLoss(m, c.b.ReduceSum(y, nil, false))
	return m, c, m.Graph().GetOutput()[0].GetName(), mul
}

func TestRuleWithWrongGradientCountIsAnError(t *testing.T) {
	for _, tt := range []struct {
		name    string
		rule    rule
		unnamed bool
		want    []string
	}{
		{name: "too few", rule: func(e *emitter, n *node) []string { return []string{n.g()} },
			want: []string{`Mul node "Mul_0"`, "returned 1 gradients for 2 inputs"}},
		{name: "none", rule: func(e *emitter, n *node) []string { return nil },
			want: []string{`Mul node "Mul_0"`, "returned 0 gradients for 2 inputs"}},
		{name: "too many", rule: func(e *emitter, n *node) []string { return []string{n.g(), n.g(), n.g()} },
			want: []string{`Mul node "Mul_0"`, "returned 3 gradients for 2 inputs"}},
		{name: "unnamed node", unnamed: true, rule: func(e *emitter, n *node) []string { return []string{n.g()} },
			want: []string{"Mul node #0 (unnamed)", "returned 1 gradients for 2 inputs"}},
		{name: "panicking rule", rule: func(e *emitter, n *node) []string { return []string{n.gy[5]} },
			want: []string{`internal error in autodiff at Mul node "Mul_0"`, "index out of range"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			withRule(t, "Mul", tt.rule)
			m, c, loss, mul := mulModel(false)
			if tt.unnamed {
				mul.Name = nil
			}
			_, err := buildNoPanic(t, m, Config{Loss: loss, Trainable: c.trainable, SampleFeeds: c.feeds})
			for _, w := range tt.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("Build error = %v, want it to contain %q", err, w)
				}
			}
		})
	}
}

func TestDroppedGradientIsAnError(t *testing.T) {
	dropA := func(e *emitter, n *node) []string { return []string{"", e.b.Mul(n.g(), n.x(0))} }
	for _, tt := range []struct {
		name   string
		rule   rule
		viaNeg bool
		want   []string // empty: Build must succeed
	}{
		{name: "parameter", rule: dropA,
			want: []string{`Mul node "Mul_0"`, `input 0, trainable parameter "p2"`, "path to the loss"}},
		{name: "value behind the parameter", rule: dropA, viaNeg: true,
			want: []string{`Mul node "Mul_0"`, `input 0, value "Neg_0_out", which depends on trainable parameter "p2"`}},
		{name: "data input needs none", rule: func(e *emitter, n *node) []string {
			return []string{e.b.Mul(n.g(), n.x(1)), ""}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			withRule(t, "Mul", tt.rule)
			m, c, loss, _ := mulModel(tt.viaNeg)
			_, err := buildNoPanic(t, m, Config{Loss: loss, Trainable: c.trainable, SampleFeeds: c.feeds})
			if len(tt.want) == 0 && err != nil {
				t.Fatalf("Build: %v", err)
			}
			for _, w := range tt.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("Build error = %v, want it to contain %q", err, w)
				}
			}
		})
	}
}

// Parameters whose gradient is rightly zero build, and get zeros: one that
// reaches the loss only through Shape, and LayerNormalization's scale and
// bias when only its Mean output is used.
func TestZeroGradientsThatAreRight(t *testing.T) {
	for _, tt := range []struct {
		name  string
		build func(c *tc) (loss string, zero []string)
	}{
		{"only via Shape", func(c *tc) (string, []string) {
			p, q := c.param(2, 3), c.param(2)
			s := c.b.Cast(c.b.Shape(c.b.Mul(p, p)), onnx.Double)
			return c.b.ReduceSum(c.b.Mul(s, q), nil, false), []string{p}
		}},
		{"LayerNormalization mean only", func(c *tc) (string, []string) {
			x, scale, bias := c.f32(2, 3), c.f32(3), c.f32(3)
			outs := c.b.OpN("LayerNormalization", []string{x, scale, bias}, 3, onnx.AttrInt("axis", -1))
			return c.b.Cast(c.b.ReduceSum(c.b.Mul(outs[1], outs[1]), nil, false), onnx.Double), []string{scale, bias}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m, c := newCase("zero")
			c.data([]int64{1})
			loss, zero := tt.build(c)
			setLoss(m, loss)
			res, err := buildNoPanic(t, m, Config{Loss: loss, Trainable: c.trainable, SampleFeeds: c.feeds})
			if err != nil {
				t.Fatal(err)
			}
			in := map[string]*ort.Tensor{}
			for _, name := range c.trainable {
				in[name] = paramTensor(t, onnx.Initializer(m.Graph(), name))
			}
			outs := []string{loss}
			for _, name := range c.trainable {
				outs = append(outs, res.Grads[name])
			}
			got := runModel(t, res.Model, outs, in)
			nonzero := 0
			for _, name := range c.trainable {
				g := got[res.Grads[name]]
				vals := slices.Concat(g.F64, f64s(g.F32))
				isZero := !slices.ContainsFunc(vals, func(v float64) bool { return v != 0 })
				if !slices.Equal(g.Shape, in[name].Shape) {
					t.Errorf("grad %s has shape %v, want %v", name, g.Shape, in[name].Shape)
				}
				if slices.Contains(zero, name) && !isZero {
					t.Errorf("grad %s = %v, want zeros", name, vals)
				}
				if !isZero {
					nonzero++
				}
			}
			if nonzero == 0 {
				t.Errorf("every gradient is zero: the case checks nothing")
			}
		})
	}
}

func f64s(v []float32) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}

// f16Tensor is a float16 initializer of the given dims holding 0.5s.
func f16Tensor(t *testing.T, name string, dims ...int64) *onnxpb.TensorProto {
	t.Helper()
	tt := &onnxpb.TensorProto{Name: proto.String(name), DataType: proto.Int32(int32(onnx.Float16)), Dims: dims}
	v := make([]float32, numel(dims))
	for i := range v {
		v[i] = 0.5
	}
	if err := onnx.SetTensorFloats(tt, v); err != nil {
		t.Fatal(err)
	}
	return tt
}

// A float16 initializer off the loss path, trainable (it gets a zero
// float16 gradient) or frozen (read by a kept output), does not stop Build.
func TestFloat16InitializerOffTheLossPath(t *testing.T) {
	m, c := newCase("f16")
	c.data([]int64{1})
	p := c.param(2)
	h, frozen := f16Tensor(t, "h", 2, 2), f16Tensor(t, "frozen", 3)
	for _, init := range []*onnxpb.TensorProto{h, frozen} {
		if err := onnx.AddInitializer(c.g, init); err != nil {
			t.Fatal(err)
		}
	}
	metric := c.b.Cast(c.b.Neg("frozen"), onnx.Double)
	loss := c.b.ReduceSum(c.b.Mul(p, p), nil, false)
	setLoss(m, loss)
	res, err := buildNoPanic(t, m, Config{Loss: loss, Trainable: []string{p, "h"}, KeepOutputs: []string{metric}, SampleFeeds: c.feeds})
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Manifest.Params[1]; got.ElemType != "FLOAT16" || !slices.Equal(got.Dims, []int64{2, 2}) {
		t.Errorf("manifest param %+v, want FLOAT16 [2 2]", got)
	}
	// Run it, h fed by its initializer and its gradient read as float64.
	tm := res.Model.Clone()
	g := tm.Graph()
	if err := onnx.AddInitializer(g, h); err != nil {
		t.Fatal(err)
	}
	gh := onnx.NewBuilder(g, tm.Opset(""), "check").Cast(res.Grads["h"], onnx.Double)
	g.Output = append(g.Output, onnx.TensorValueInfo(gh, onnx.Double, nil))
	got := runModel(t, tm, []string{gh, metric}, map[string]*ort.Tensor{p: paramTensor(t, onnx.Initializer(m.Graph(), p))})
	if v := got[gh]; !slices.Equal(v.Shape, []int64{2, 2}) || slices.ContainsFunc(v.F64, func(x float64) bool { return x != 0 }) {
		t.Errorf("grad h = %v %v, want zeros [2 2]", v.Shape, v.F64)
	}
	if v := got[metric].F64; !slices.Equal(v, []float64{-0.5, -0.5, -0.5}) {
		t.Errorf("metric = %v, want -0.5s", v)
	}
}

// Malformed models are errors, never panics.
func TestOddModelsAreErrors(t *testing.T) {
	node := func(name, op string, in []string, out ...string) *onnxpb.NodeProto {
		return &onnxpb.NodeProto{Name: proto.String(name), OpType: proto.String(op), Input: in, Output: out}
	}
	for _, tt := range []struct {
		name string
		// edit changes the model loss = ReduceSum(Mul(p, p)), p trainable.
		edit func(m *onnx.Model, c *tc, p string) (*onnx.Model, Config)
		want string // "" means Build must succeed
	}{
		{"nil model", func(*onnx.Model, *tc, string) (*onnx.Model, Config) { return nil, Config{} }, "nil forward model"},
		{"zero model", func(*onnx.Model, *tc, string) (*onnx.Model, Config) { return &onnx.Model{}, Config{} }, "nil forward model"},
		{"no graph", func(m *onnx.Model, _ *tc, p string) (*onnx.Model, Config) {
			m.Proto().Graph = nil
			return m, Config{}
		}, "has no graph"},
		{"nil node", func(m *onnx.Model, c *tc, p string) (*onnx.Model, Config) {
			c.g.Node = append(c.g.Node, nil)
			return m, Config{}
		}, "node #2"},
		{"node without outputs", func(m *onnx.Model, c *tc, p string) (*onnx.Model, Config) {
			c.g.Node = append(c.g.Node, node("", "Neg", []string{p}))
			return m, Config{}
		}, "Neg node #2 (unnamed) of graph \"odd\" has no outputs"},
		{"node without inputs on the path", func(m *onnx.Model, c *tc, p string) (*onnx.Model, Config) {
			c.g.Node = append(c.g.Node, node("bad", "Neg", nil, "z"))
			loss := c.b.ReduceSum(c.b.Add(p, "z"), nil, false)
			return m, Config{Loss: loss}
		}, `"bad"`},
		{"value never produced", func(m *onnx.Model, c *tc, p string) (*onnx.Model, Config) {
			loss := c.b.ReduceSum(c.b.Mul(p, "ghost"), nil, false)
			return m, Config{Loss: loss}
		}, `Mul node "Mul_1" of graph "odd" reads "ghost", which is not a graph input`},
		{"cycle", func(m *onnx.Model, c *tc, p string) (*onnx.Model, Config) {
			c.g.Node = append(c.g.Node, node("a", "Add", []string{p, "b_out"}, "a_out"), node("b", "Neg", []string{"a_out"}, "b_out"))
			return m, Config{Loss: c.b.ReduceSum("a_out", nil, false)}
		}, "is on a cycle"},
		{"unknown dtype, trainable", func(m *onnx.Model, c *tc, p string) (*onnx.Model, Config) {
			c.g.Initializer = append(c.g.Initializer, &onnxpb.TensorProto{Name: proto.String("u"), DataType: proto.Int32(99), Dims: []int64{2}})
			return m, Config{Trainable: []string{"u"}}
		}, `trainable parameter "u" has type DataType(99)`},
		{"unknown dtype, frozen on the path", func(m *onnx.Model, c *tc, p string) (*onnx.Model, Config) {
			c.g.Initializer = append(c.g.Initializer, &onnxpb.TensorProto{Name: proto.String("u"), DataType: proto.Int32(99), Dims: []int64{2}})
			return m, Config{Loss: c.b.ReduceSum(c.b.Mul(p, "u"), nil, false)}
		}, "'u' does not have valid data type"},
		{"zero-sized parameter", func(m *onnx.Model, c *tc, p string) (*onnx.Model, Config) {
			z := c.param(0, 3)
			return m, Config{Loss: c.b.Add(c.b.ReduceSum(c.b.Mul(p, p), nil, false), c.b.ReduceSum(z, nil, false)), Trainable: []string{p, z}}
		}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m, c := newCase("odd")
			c.data([]int64{1})
			p := c.param(2)
			loss := c.b.ReduceSum(c.b.Mul(p, p), nil, false)
			m, cfg := tt.edit(m, c, p)
			if cfg.Loss == "" {
				cfg.Loss = loss
			}
			if cfg.Trainable == nil {
				cfg.Trainable = []string{p}
			}
			cfg.SampleFeeds = c.feeds
			_, err := buildNoPanic(t, m, cfg)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Build: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Build error = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}
