package autodiff

import (
	"errors"
	"math"
	"testing"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
	"ortalign/onnx/ort"
)

// TestStopGradient: loss = Σ s·exp(p) with s = log Σ exp(p²) marked stop-gradient (by
// Config.StopGradient, or by the model's metadata property). The gradient is then
// s·exp(p) (s a constant), the central difference of the same loss with s fed as an
// input; without the mark it is not (and ReduceLogSumExp, which has no rule, is an
// error).
func TestStopGradient(t *testing.T) {
	build := func() (*onnx.Model, string, string) {
		m, c := newCase("stop_gradient")
		p := c.param(5)
		s := c.b.Identity(c.b.ReduceLogSumExp(c.b.Mul(p, p), []int64{0}, true))
		setLoss(m, c.b.ReduceSum(c.b.Mul(s, c.b.Exp(p)), nil, false))
		c.data([]int64{1})
		return m, p, s
	}
	m, p, s := build()
	loss := m.Graph().GetOutput()[0].GetName()
	var ue *UnsupportedError
	if _, err := Build(m, Config{Loss: loss, Trainable: []string{p}}); !errors.As(err, &ue) {
		t.Fatalf("without a stop-gradient: want an UnsupportedError for ReduceLogSumExp, got %v", err)
	}
	if _, err := Build(m, Config{Loss: loss, Trainable: []string{p}, StopGradient: []string{"nope"}}); err == nil {
		t.Fatal("an unknown stop-gradient value: want an error")
	}
	pv, err := onnx.TensorDoubles(onnx.Initializer(m.Graph(), p))
	if err != nil {
		t.Fatal(err)
	}
	// The reference: the same loss with s an input, differentiated by central differences.
	var sum float64
	for _, x := range pv {
		sum += math.Exp(x * x)
	}
	sv := []float64{math.Log(sum)}
	ref, rc := newCase("stop_gradient_ref")
	rp := rc.param(5)
	onnx.SetTensorDoubles(onnx.Initializer(ref.Graph(), rp), pv)
	sIn := rc.data([]int64{1})
	rc.feeds[sIn] = &ort.Tensor{Shape: []int64{1}, F64: sv}
	setLoss(ref, rc.b.ReduceSum(rc.b.Mul(sIn, rc.b.Exp(rp)), nil, false))
	if e := fdCheck(t, ref, []string{rp}, rc.feeds); e > 1e-6 {
		t.Fatalf("reference graph: finite-difference error %.1e", e)
	}
	for _, how := range []string{"config", "metadata"} {
		t.Run(how, func(t *testing.T) {
			m, p, s2 := build()
			if s2 != s {
				t.Fatalf("names differ: %s %s", s, s2)
			}
			cfg := Config{Loss: loss, Trainable: []string{p}}
			if how == "config" {
				cfg.StopGradient = []string{s}
			} else {
				m.Proto().MetadataProps = append(m.Proto().MetadataProps, &onnxpb.StringStringEntryProto{
					Key: proto.String(StopGradientMetadata), Value: proto.String(" " + s + " "),
				})
			}
			res, err := Build(m, cfg)
			if err != nil {
				t.Fatal(err)
			}
			in := map[string]*ort.Tensor{p: {Shape: []int64{5}, F64: pv}}
			for _, d := range res.Model.Graph().GetInput() {
				if d.GetName() != p {
					in[d.GetName()] = &ort.Tensor{Shape: []int64{1}, F64: []float64{0}}
				}
			}
			out := runModel(t, res.Model, []string{res.Grads[p]}, in)
			got := out[res.Grads[p]].F64
			for i := range pv {
				want := sv[0] * math.Exp(pv[i])
				if math.Abs(got[i]-want) > 1e-12*math.Max(1, math.Abs(want)) {
					t.Errorf("grad[%d] = %.15g, want s·exp(p) = %.15g", i, got[i], want)
				}
			}
		})
	}
}
