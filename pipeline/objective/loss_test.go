package objective

import (
	"math"
	"regexp"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/lm"
)

// TestLossFormulas checks each loss head's value against TRL's formula evaluated in Go
// on the policy log-probs the same graph reports. (Gradients of the heads are checked
// against PyTorch in the oracle tests.)
func TestLossFormulas(t *testing.T) {
	var o dpoOracle
	readOracle(t, "../../testdata/expected/dpo_grads_llama.json.gz", &o)
	pairs, refC, refR := oracleBatch(&o)
	m, err := onnx.Load("../../testdata/models/llama_opset17.onnx")
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
			cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimSGD}, LR: 1, BatchSize: 4, Threads: 1, PadID: o.PadID}
			tr, err := engine.NewEngine("llama", m, cfg, DPO{Loss: c.cfg})
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			got, err := tr.ComputeGradients(WithReference(pairs, refC, refR))
			if err != nil {
				t.Fatal(err)
			}
			// Per-pair policy log-probs from the trainer's own metrics are means; recompute
			// them exactly with the scoring head.
			lpm, err := lm.NewLogProbModel("llama", m, lm.ModelOptions{Threads: 1, PadID: o.PadID})
			if err != nil {
				t.Fatal(err)
			}
			defer lpm.Close()
			lp := pairLogps(t, lpm, pairs)
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
			if !(math.Abs(got.Value("loss")-want) <= 1e-5*math.Max(1, math.Abs(want))) {
				t.Fatalf("loss %.7f, TRL formula %.7f", got.Value("loss"), want)
			}
		})
	}
}

func TestLossConfigValidate(t *testing.T) {
	alpha := func(v float64) *float64 { return &v }
	bad := []LossConfig{
		{Type: "nope", Beta: 0.1},
		{Beta: 0.1},
		{Type: LossSigmoid, Beta: 0},
		{Type: LossSigmoid, Beta: 0.1, LabelSmoothing: 0.5},
		{Type: LossHinge, Beta: 0.1, LabelSmoothing: 0.1},
		{Type: LossSigmoid, Beta: 0.1, IPOSumLogps: true},
		{Type: LossIPO, Types: []string{LossHinge}, Beta: 0.1},
		{Types: []string{LossSigmoid, "kto_pair"}, Beta: 0.1},
		{Types: []string{LossSigmoid, LossSFT}, Weights: []float64{1}, Beta: 0.1},
		{Types: []string{LossSigmoid}, Weights: []float64{math.NaN()}, Beta: 0.1},
		{Type: LossExoPair, Beta: 0.1},
		{Type: LossSigmoid, Beta: 0.1, FDivergence: "kl"},
		{Type: LossSigmoid, Beta: 0.1, FAlphaCoef: 0.5},
		{Type: LossSigmoid, Beta: 0.1, DiscoPopTau: 0.1},
		{Type: LossDiscoPop, Beta: 0.1, DiscoPopTau: -1},
		{Type: LossAOT, Beta: 0.1, UseWeighting: true},
		{Type: LossSigmoid, Beta: 0.1, LDAlpha: alpha(1.5)},
	}
	for _, c := range bad {
		err := c.Validate()
		if err == nil {
			t.Errorf("%+v: want an error", c)
			continue
		}
		if strings.Contains(err.Error(), "--") {
			t.Errorf("%+v: error %q names a command-line flag", c, err)
		}
	}
	good := []LossConfig{
		{Type: LossSigmoid, Beta: 0.1},
		{Types: []string{LossSigmoid, LossSFT}, Weights: []float64{1, 0.5}, Beta: 0.1, UseWeighting: true},
		{Type: LossExoPair, Beta: 0.1, LabelSmoothing: 1e-3},
		{Type: LossAOTUnpaired, Beta: 0.1, LabelSmoothing: 0.1, LDAlpha: alpha(0)},
		{Type: LossNCAPair, Beta: 0.1, FDivergence: FDivAlpha, FAlphaCoef: 0.5, ReferenceFree: true},
		{Type: LossDiscoPop, Beta: 0.1, DiscoPopTau: 0.1},
	}
	for _, c := range good {
		if err := c.Validate(); err != nil {
			t.Errorf("%+v: %v", c, err)
		}
	}
}

func TestParseLossTypesAndWeights(t *testing.T) {
	got, err := ParseLossTypes("sigmoid, sft,apo_zero")
	if err != nil || !slices.Equal(got, []string{LossSigmoid, LossSFT, LossAPOZero}) {
		t.Fatalf("ParseLossTypes: %v, %v", got, err)
	}
	if _, err := ParseLossTypes("sigmoid,,ipo"); err == nil {
		t.Error("an empty loss type: want an error")
	}
	if _, err := ParseLossTypes("kto_pair"); err == nil || !strings.Contains(err.Error(), "kto_pair") {
		t.Errorf("unknown loss type: %v", err)
	}
	w, err := ParseWeights("1, 0.5")
	if err != nil || !slices.Equal(w, []float64{1, 0.5}) {
		t.Fatalf("ParseWeights: %v, %v", w, err)
	}
	if w, err := ParseWeights(""); err != nil || w != nil {
		t.Errorf(`ParseWeights(""): %v, %v`, w, err)
	}
	for _, s := range []string{"1,x", "inf", "1,,2"} {
		if _, err := ParseWeights(s); err == nil {
			t.Errorf("ParseWeights(%q): want an error", s)
		}
	}
}

func TestLDLogps(t *testing.T) {
	c, r := LDLogps([]float64{-1, -2, -3, -4}, []float64{-10, -20}, 0.25)
	if c != -3+0.25*-7 || r != -30 {
		t.Fatalf("LDLogps = %g, %g; want %g, -30", c, r, -3+0.25*-7)
	}
}

// TestPreferenceGraphContract: whatever the loss configuration, the preference graph's
// inputs are the model's, completion_mask and the two reference inputs, and its outputs
// loss and sequence_logps (plus the head outputs AppendPreferenceLossWith keeps).
func TestPreferenceGraphContract(t *testing.T) {
	m, err := onnx.Load("../../testdata/models/llama_opset17.onnx")
	if err != nil {
		t.Fatal(err)
	}
	names := func(vs []*onnxpb.ValueInfoProto) []string {
		var out []string
		for _, v := range vs {
			out = append(out, v.GetName())
		}
		slices.Sort(out)
		return out
	}
	alpha := 0.5
	for _, cfg := range []LossConfig{
		{Type: LossSigmoid, Beta: 0.1},
		{Types: LossTypes, Beta: 0.1, LabelSmoothing: 0.1, FDivergence: FDivJS, LDAlpha: &alpha, ReferenceFree: true},
		{Types: []string{LossSigmoid, LossSFT}, Beta: 0.1, UseWeighting: true, LDAlpha: &alpha},
	} {
		for _, keep := range []lm.HeadOptions{{}, {TokenCorrect: true, TokenLogps: true}} {
			fwd := m.Clone()
			if err := AppendPreferenceLossWith(fwd, cfg, keep); err != nil {
				t.Fatalf("%+v: %v", cfg, err)
			}
			wantIn := []string{lm.AttentionMask, lm.CompletionMaskInput, lm.InputIDs, lm.PositionIDs, RefChosenInput, RefRejectedInput}
			wantOut := []string{engine.LossOutput, lm.SequenceLogpsOutput}
			if keep.TokenCorrect {
				wantOut = append(wantOut, lm.TokenCorrectOutput, lm.TokenLogpsOutput)
			}
			slices.Sort(wantIn)
			slices.Sort(wantOut)
			var in []string
			for _, v := range fwd.Graph().GetInput() {
				if onnx.Initializer(fwd.Graph(), v.GetName()) == nil {
					in = append(in, v.GetName())
				}
			}
			slices.Sort(in)
			if !slices.Equal(in, wantIn) || !slices.Equal(names(fwd.Graph().GetOutput()), wantOut) {
				t.Errorf("%v %+v: inputs %v outputs %v; want %v and %v", cfg.LossTypes(), keep, in, names(fwd.Graph().GetOutput()), wantIn, wantOut)
			}
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
	lm.AddIdentity(g, b.Mul(b.Add(h, rot), "norm.weight"), "logits")
	onnx.AddOutput(g, "logits", onnx.Float, onnx.Dims(2, 4))
	m := onnx.NewModel(&onnxpb.ModelProto{Graph: g})
	got, err := lm.TrainableNames(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "w,norm.weight" {
		t.Fatalf("trainable %v, want [w norm.weight]", got)
	}
	got, _ = lm.TrainableNames(m, regexp.MustCompile(`norm`))
	if strings.Join(got, ",") != "w" {
		t.Fatalf("with --freeze norm: %v, want [w]", got)
	}
}
