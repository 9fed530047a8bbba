package pipeline

import (
	"math"
	"regexp"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
)

// TestLossFormulas checks each loss head's value against TRL's formula evaluated in Go
// on the policy log-probs the same graph reports. (Gradients of the heads are checked
// against PyTorch in the oracle tests.)
func TestLossFormulas(t *testing.T) {
	var o dpoOracle
	readOracle(t, "../testdata/expected/dpo_grads_llama.json.gz", &o)
	pairs, refC, refR := oracleBatch(&o)
	m, err := onnx.Load("../testdata/models/llama_opset17.onnx")
	if err != nil {
		t.Fatal(err)
	}
	logsig := func(x float64) float64 { return -math.Log1p(math.Exp(-x)) }
	cases := []struct {
		cfg  LossConfig
		loss func(h float64, beta, eps float64) float64
	}{
		{LossConfig{Type: LossSigmoid, Beta: 0.1}, func(h, b, _ float64) float64 { return -logsig(b * h) }},
		{LossConfig{Type: LossSigmoid, Beta: 0.5, LabelSmoothing: 0.2}, func(h, b, e float64) float64 { return -(1-e)*logsig(b*h) - e*logsig(-b*h) }},
		{LossConfig{Type: LossRobust, Beta: 0.3, LabelSmoothing: 0.1}, func(h, b, e float64) float64 { return (-(1-e)*logsig(b*h) + e*logsig(-b*h)) / (1 - 2*e) }},
		{LossConfig{Type: LossHinge, Beta: 0.1}, func(h, b, _ float64) float64 { return math.Max(0, 1-b*h) }},
		{LossConfig{Type: LossIPO, Beta: 0.1}, func(h, b, _ float64) float64 { return (h - 1/(2*b)) * (h - 1/(2*b)) }},
		{LossConfig{Type: LossIPO, Beta: 0.1, IPOSumLogps: true}, func(h, b, _ float64) float64 { return (h - 1/(2*b)) * (h - 1/(2*b)) }},
	}
	for _, c := range cases {
		name := c.cfg.Type
		if c.cfg.LabelSmoothing > 0 {
			name += "+smoothing"
		}
		if c.cfg.IPOSumLogps {
			name += "+sum"
		}
		t.Run(name, func(t *testing.T) {
			cfg := TrainConfig{Loss: c.cfg, Optim: OptimConfig{Name: OptimSGD}, LR: 1, BatchSize: 4, Threads: 1, PadID: o.PadID}
			tr, err := NewTrainer("llama", m, cfg, pairs)
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			got, err := tr.ComputeGradients(pairs, refC, refR)
			if err != nil {
				t.Fatal(err)
			}
			// Per-pair policy log-probs from the trainer's own metrics are means; recompute
			// them exactly with the scoring head.
			lm, err := NewLogProbModel("llama", m, ModelOptions{Threads: 1, PadID: o.PadID})
			if err != nil {
				t.Fatal(err)
			}
			defer lm.Close()
			lp := pairLogps(t, lm, pairs)
			n := len(pairs)
			want := 0.0
			for i := 0; i < n; i++ {
				pc, pr, rc, rr := lp[i], lp[n+i], refC[i], refR[i]
				if c.cfg.Type == LossIPO && !c.cfg.IPOSumLogps {
					nc, nr := float64(pairs[i].Chosen.CompletionTokens()), float64(pairs[i].Rejected.CompletionTokens())
					pc, rc, pr, rr = pc/nc, rc/nc, pr/nr, rr/nr
				}
				want += c.loss((pc-pr)-(rc-rr), c.cfg.Beta, c.cfg.LabelSmoothing) / float64(n)
			}
			if math.Abs(got.Loss-want) > 1e-5*math.Max(1, math.Abs(want)) {
				t.Fatalf("loss %.7f, TRL formula %.7f", got.Loss, want)
			}
		})
	}
}

func TestLossConfigValidate(t *testing.T) {
	bad := []LossConfig{
		{Type: "nope", Beta: 0.1},
		{Type: LossSigmoid, Beta: 0},
		{Type: LossSigmoid, Beta: 0.1, LabelSmoothing: 0.5},
		{Type: LossHinge, Beta: 0.1, LabelSmoothing: 0.1},
		{Type: LossSigmoid, Beta: 0.1, IPOSumLogps: true},
	}
	for _, c := range bad {
		if c.Validate() == nil {
			t.Errorf("%+v: want an error", c)
		}
	}
}

// TestTrainableNamesSkipExportConstants: weights train; a rotary-style buffer that only
// feeds Cos/Sin, a scalar, and frozen names do not.
func TestTrainableNamesSkipExportConstants(t *testing.T) {
	g := &onnxpb.GraphProto{Name: proto.String("t")}
	onnx.AddInput(g, "x", onnx.Float, onnx.Dims(2, 3))
	for _, init := range []*onnxpb.TensorProto{
		onnx.FloatTensor("w", []int64{3, 4}, make([]float32, 12)),
		onnx.FloatTensor("norm.weight", []int64{4}, make([]float32, 4)),
		onnx.FloatTensor("rotary_emb.inv_freq", []int64{4}, make([]float32, 4)),
		onnx.ScalarFloat("scale", 0.5),
	} {
		onnx.AddInitializer(g, init)
	}
	b := onnx.NewBuilder(g, 17, "")
	h := b.Mul(b.MatMul("x", "w"), "scale")
	rot := b.Op("Cos", []string{b.Mul(h, "rotary_emb.inv_freq")})
	addIdentity(g, b.Mul(b.Add(h, rot), "norm.weight"), "logits")
	onnx.AddOutput(g, "logits", onnx.Float, onnx.Dims(2, 4))
	m := onnx.NewModel(&onnxpb.ModelProto{Graph: g})
	got, err := TrainableNames(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "w,norm.weight" {
		t.Fatalf("trainable %v, want [w norm.weight]", got)
	}
	got, _ = TrainableNames(m, regexp.MustCompile(`norm`))
	if strings.Join(got, ",") != "w" {
		t.Fatalf("with --freeze norm: %v, want [w]", got)
	}
}
