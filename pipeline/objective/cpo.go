package objective

import (
	"encoding/json"
	"fmt"
	"hash"
	"math"
	"slices"
	"strings"

	"ortalign/onnx"
	"ortalign/onnx/ort"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/lm"
)

// CPO loss types (TRL v1.x's CPOConfig.loss_type). With c, r the chosen and rejected
// log-probs — summed over completion tokens, averaged for ipo and simpo — d = c − r,
// ε the label smoothing and σ the sigmoid, per pair:
const (
	CPOSigmoid = "sigmoid" // −(1−ε)·logσ(βd) − ε·logσ(−βd)
	CPOHinge   = "hinge"   // relu(1 − βd)
	CPOIPO     = "ipo"     // (d − 1/(2β))²
	CPOSimPO   = "simpo"   // the sigmoid loss on d − γ/β: −(1−ε)·logσ(βd − γ) − ε·logσ(γ − βd)
)

// CPOLossTypes lists the CPO loss types in TRL's order.
var CPOLossTypes = []string{CPOSigmoid, CPOHinge, CPOIPO, CPOSimPO}

// Defaults of CPOConfig (TRL's).
const (
	DefaultCPOBeta    = 0.1
	DefaultCPOAlpha   = 1.0
	DefaultSimPOGamma = 0.5
)

// Outputs of the CPO head besides the loss.
const (
	// CPOLogpsOutput is float32 [2n]: the log-probs the loss compares (summed, or
	// averaged over completion tokens for ipo and simpo), chosen rows then rejected rows.
	CPOLogpsOutput = "cpo_logps"
	// CPONLLOutput is the micro-batch's nll_loss (a scalar; 0 when Alpha is 0).
	CPONLLOutput = "cpo_nll_loss"
)

// CPO is contrastive preference optimisation and SimPO, as TRL v1.x's CPOTrainer: no
// reference model. The loss is the mean over pairs of the loss type's per-pair loss
// plus Alpha times the NLL of the chosen completions (their cross-entropy averaged over
// the micro-batch's chosen completion tokens; TRL's cpo_alpha). SimPO is Loss simpo with
// Alpha 0. Items are encoded pairs; reference log-probs they carry are ignored.
type CPO struct {
	Loss           string  `json:"loss_type"`
	Beta           float64 `json:"beta"`
	Alpha          float64 `json:"cpo_alpha"`
	SimPOGamma     float64 `json:"simpo_gamma,omitempty"` // simpo only
	LabelSmoothing float64 `json:"label_smoothing,omitempty"`
}

// loss is the loss type; "" means sigmoid.
func (c CPO) loss() string {
	if c.Loss == "" {
		return CPOSigmoid
	}
	return c.Loss
}

// averaged reports whether the loss compares log-probs averaged over completion tokens.
func (c CPO) averaged() bool { return c.loss() == CPOIPO || c.loss() == CPOSimPO }

// Validate reports unknown loss types and out-of-range or inapplicable settings;
// messages name settings, not flags.
func (c CPO) Validate() error {
	finite := func(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
	switch {
	case !slices.Contains(CPOLossTypes, c.loss()):
		return fmt.Errorf("unknown loss %q (want %s)", c.Loss, strings.Join(CPOLossTypes, ", "))
	case !(c.Beta > 0) || !finite(c.Beta):
		return fmt.Errorf("beta must be positive, got %g", c.Beta)
	case !(c.Alpha >= 0) || !finite(c.Alpha):
		return fmt.Errorf("cpo alpha must be >= 0, got %g", c.Alpha)
	case !finite(c.SimPOGamma):
		return fmt.Errorf("simpo gamma must be finite, got %g", c.SimPOGamma)
	case c.SimPOGamma != 0 && c.loss() != CPOSimPO:
		return fmt.Errorf("simpo gamma is an option of the simpo loss only")
	case !(c.LabelSmoothing >= 0 && c.LabelSmoothing < 0.5):
		return fmt.Errorf("label smoothing must be in [0, 0.5), got %g", c.LabelSmoothing)
	case c.LabelSmoothing != 0 && c.loss() != CPOSigmoid && c.loss() != CPOSimPO:
		return fmt.Errorf("label smoothing applies to the sigmoid and simpo losses only")
	}
	return nil
}

// Name implements Objective.
func (CPO) Name() string { return "cpo" }

// Settings implements Objective: the loss configuration.
func (c CPO) Settings() map[string]string {
	c.Loss = c.loss()
	b, _ := json.Marshal(c)
	return map[string]string{"cpo": string(b)}
}

// AppendLoss implements Objective with the CPO head.
func (c CPO) AppendLoss(m *onnx.Model) error {
	if err := c.Validate(); err != nil {
		return err
	}
	l, err := appendPairHead(m, "ortalign_cpo", false)
	if err != nil {
		return err
	}
	b := l.b
	l.cfg = LossConfig{Beta: c.Beta, LabelSmoothing: c.LabelSmoothing}
	logps := lm.SequenceLogpsOutput
	if c.averaged() {
		logps = b.Div(logps, b.Max(predictedTokens(b, lm.CompletionMaskInput), b.ConstFloat(1)))
	}
	ch, rj := l.halves(logps)
	z := b.Mul(b.ConstFloat(float32(c.Beta)), b.Sub(ch, rj)) // βd
	var per string
	switch c.loss() {
	case CPOHinge:
		per = b.Relu(b.Sub(b.ConstFloat(1), z))
	case CPOIPO:
		d := b.Sub(b.Sub(ch, rj), b.ConstFloat(float32(1/(2*c.Beta))))
		per = b.Mul(d, d)
	case CPOSimPO:
		per = l.smoothedDPO(b.Sub(z, b.ConstFloat(float32(c.SimPOGamma))))
	default:
		per = l.smoothedDPO(z)
	}
	loss := b.ReduceMean(per, []int64{0}, false)
	nll := b.ConstFloat(0) // TRL: 0 when cpo_alpha is 0
	if c.Alpha != 0 {
		nll = l.chosenNLL(lm.SequenceLogpsOutput)
		loss = b.Add(loss, b.Mul(b.ConstFloat(float32(c.Alpha)), nll))
	}
	return addScalarOutputs(b.Graph(), []string{logps, nll, loss}, []string{CPOLogpsOutput, CPONLLOutput, engine.LossOutput})
}

// SourceDigest implements engine.SourceDigester: a training graph cached by another
// build of the loss heads is rebuilt.
func (CPO) SourceDigest() (string, error) { return sourceDigest() }

// Outputs implements Objective.
func (CPO) Outputs() []string { return []string{CPOLogpsOutput, CPONLLOutput} }

// Weight implements Objective: the loss is a mean over pairs.
func (CPO) Weight(batch []encode.EncodedPair) float64 { return float64(len(batch)) }

// Feeds implements Objective: chosen rows then rejected rows.
func (CPO) Feeds(in engine.ModelInputs, pairs []encode.EncodedPair) (map[string]*ort.Tensor, error) {
	return in.Rows(encode.PairRows(pairs)), nil
}

// Metrics implements Objective with TRL's CPO names: rewards are β times the compared
// log-probs (summed, or averaged for ipo and simpo), and nll_loss.
func (c CPO) Metrics(pairs []encode.EncodedPair, out map[string]*ort.Tensor) (engine.Metrics, error) {
	m, err := pairRewardMetrics(c.Beta, len(pairs), out, CPOLogpsOutput)
	if err != nil {
		return nil, err
	}
	return append(m, engine.Metric{Name: "nll_loss", Value: float64(out[CPONLLOutput].F32[0])}), nil
}

// Samples implements Objective.
func (CPO) Samples() (first, second []encode.EncodedPair) { return pairSamples() }

// Fingerprint implements Objective: the pair's ids and completion starts.
func (CPO) Fingerprint(h hash.Hash, p encode.EncodedPair) { fingerprintPair(h, p) }
