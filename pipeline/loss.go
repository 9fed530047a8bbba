package pipeline

import (
	"fmt"
	"math"

	"ortalign/onnx"
)

// Names of the values a preference-loss head adds.
const (
	// RefChosenInput and RefRejectedInput are float32 [pairs]: reference log-probs.
	RefChosenInput   = "ref_chosen_logps"
	RefRejectedInput = "ref_rejected_logps"
	// LossOutput is the scalar training loss.
	LossOutput = "loss"
)

// Loss types, with TRL v1.x names and formulas.
const (
	LossSigmoid = "sigmoid" // DPO: -logσ(β·h); with label smoothing ε, cDPO (see LossConfig)
	LossIPO     = "ipo"     // IPO: (h − 1/(2β))², on length-normalised log-probs (TRL's default)
	LossHinge   = "hinge"   // SLiC: relu(1 − β·h)
	LossRobust  = "robust"  // rDPO: ((1−ε)·(−logσ(βh)) + ε·logσ(−βh)) / (1−2ε)
)

// LossConfig selects a preference loss. h is the log-ratio difference
// (π_c − π_r) − (ref_c − ref_r) of each pair.
type LossConfig struct {
	Type string  `json:"type"`
	Beta float64 `json:"beta"`
	// LabelSmoothing is the label noise ε of the robust loss (as in TRL v1.x) and, on the
	// sigmoid loss, of cDPO: -(1-ε)·logσ(βh) - ε·logσ(-βh), the cDPO paper's and TRL < 1.0's
	// formula (TRL v1.x ignores ε for sigmoid; with the default 0 the two agree).
	LabelSmoothing float64 `json:"label_smoothing"`
	// IPOSumLogps uses summed log-probs in the IPO loss, as the IPO paper writes it,
	// instead of TRL's average over completion tokens.
	IPOSumLogps bool `json:"ipo_sum_logps,omitempty"`
}

// Validate reports an unknown type or out-of-range parameters.
func (c LossConfig) Validate() error {
	switch c.Type {
	case LossSigmoid, LossIPO, LossHinge, LossRobust:
	default:
		return fmt.Errorf("unknown loss %q (want %s, %s, %s or %s)", c.Type, LossSigmoid, LossIPO, LossHinge, LossRobust)
	}
	if !(c.Beta > 0) {
		return fmt.Errorf("beta must be positive, got %g", c.Beta)
	}
	if c.LabelSmoothing < 0 || c.LabelSmoothing >= 0.5 {
		return fmt.Errorf("label smoothing must be in [0, 0.5), got %g", c.LabelSmoothing)
	}
	if c.LabelSmoothing != 0 && c.Type != LossSigmoid && c.Type != LossRobust {
		return fmt.Errorf("label smoothing applies to the sigmoid and robust losses only")
	}
	if c.IPOSumLogps && c.Type != LossIPO {
		return fmt.Errorf("summed log-probs are an option of the ipo loss only")
	}
	return nil
}

// AppendPreferenceLoss turns a causal LM into the forward graph of preference training:
// inputs input_ids/attention_mask/position_ids for 2n rows (n chosen rows, then n rejected
// rows), completion_mask, ref_chosen_logps and ref_rejected_logps [n]; outputs the scalar
// loss and sequence_logps [2n] (the policy's summed completion log-probs, for metrics).
// New loss types are a few lines in lossPerPair.
func AppendPreferenceLoss(m *onnx.Model, cfg LossConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if _, err := AppendLogProbHead(m); err != nil {
		return err
	}
	g := m.Graph()
	onnx.RemoveOutput(g, VocabSizeOutput)
	for _, name := range []string{RefChosenInput, RefRejectedInput} {
		if err := onnx.AddInput(g, name, onnx.Float, []onnx.Dim{onnx.DimParam("pairs")}); err != nil {
			return err
		}
	}
	b := onnx.NewBuilder(g, m.Opset(""), "ortalign_loss")
	logps, refC, refR := SequenceLogpsOutput, RefChosenInput, RefRejectedInput
	n := b.Shape(RefChosenInput) // [1] = number of pairs
	zero, end, axis0 := b.ConstInt64s([]int64{0}), b.ConstInt64s([]int64{math.MaxInt64}), b.ConstInt64s([]int64{0})
	if cfg.Type == LossIPO && !cfg.IPOSumLogps {
		// TRL's IPO averages log-probs over completion tokens, for policy and reference alike.
		// TRL counts the whole completion mask, at least 1.
		counts := b.Max(b.ReduceSum(CompletionMaskInput, []int64{1}, false), b.ConstFloat(1))
		logps = b.Div(logps, counts)
		refC = b.Div(refC, b.Op("Slice", []string{counts, zero, n, axis0}))
		refR = b.Div(refR, b.Op("Slice", []string{counts, n, end, axis0}))
	}
	chosen := b.Op("Slice", []string{logps, zero, n, axis0})
	rejected := b.Op("Slice", []string{logps, n, end, axis0})
	h := b.Sub(b.Sub(chosen, rejected), b.Sub(refC, refR))
	perPair := lossPerPair(b, h, cfg)
	addIdentity(g, b.ReduceMean(perPair, []int64{0}, false), LossOutput)
	return onnx.AddOutput(g, LossOutput, onnx.Float, []onnx.Dim{})
}

// lossPerPair is the table of loss formulas over h, the pairs' log-ratio differences.
func lossPerPair(b *onnx.Builder, h string, cfg LossConfig) string {
	beta := b.ConstFloat(float32(cfg.Beta))
	switch cfg.Type {
	case LossIPO:
		d := b.Sub(h, b.ConstFloat(float32(1/(2*cfg.Beta))))
		return b.Mul(d, d)
	case LossHinge:
		return b.Relu(b.Sub(b.ConstFloat(1), b.Mul(beta, h)))
	case LossRobust:
		eps := cfg.LabelSmoothing
		z := b.Mul(beta, h)
		// −logσ(z) = softplus(−z) and logσ(−z) = −softplus(z).
		loss := b.Sub(b.Mul(b.ConstFloat(float32(1-eps)), b.Op("Softplus", []string{b.Neg(z)})),
			b.Mul(b.ConstFloat(float32(eps)), b.Op("Softplus", []string{z})))
		return b.Div(loss, b.ConstFloat(float32(1-2*eps)))
	}
	// sigmoid: -(1-ε)·logσ(βh) - ε·logσ(-βh), with -logσ(z) = softplus(-z).
	z := b.Mul(beta, h)
	loss := b.Op("Softplus", []string{b.Neg(z)})
	if eps := cfg.LabelSmoothing; eps > 0 {
		loss = b.Add(b.Mul(b.ConstFloat(float32(1-eps)), loss), b.Mul(b.ConstFloat(float32(eps)), b.Op("Softplus", []string{z})))
	}
	return loss
}
