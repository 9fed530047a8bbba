package objective

import (
	"encoding/binary"
	"fmt"
	"hash"
	"math"
	"slices"
	"strconv"
	"strings"

	"ortalign/onnx"
	"ortalign/onnx/ort"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/lm"
)

// Online RL algorithms (RLConfig.Algo).
const (
	AlgoGRPO = "grpo"
	AlgoRLOO = "rloo"
)

// GRPO loss types (RLConfig.LossType), TRL v1.x's GRPOConfig.loss_type: the first four
// are aggregations of the clipped loss; cispo and sapo change the per-token loss and
// aggregate as dapo and grpo do.
const (
	LossGRPO   = "grpo"    // mean over each sequence's tokens, then over sequences
	LossBNPO   = "bnpo"    // sum over the micro-batch's tokens / its number of tokens
	LossDrGRPO = "dr_grpo" // sum over tokens / (sequences × max completion length)
	LossDAPO   = "dapo"    // sum over tokens / tokens of the whole optimizer step
	LossCISPO  = "cispo"   // MiniMax-M1: −sg(min(ratio, ε_high))·A·log π, aggregated as dapo
	LossSAPO   = "sapo"    // soft gate: −σ(τ(ratio − 1))·(4/τ)·A, aggregated as grpo
)

// GRPOLossTypes lists GRPO's loss types.
var GRPOLossTypes = []string{LossDAPO, LossGRPO, LossBNPO, LossDrGRPO, LossCISPO, LossSAPO}

// Importance-sampling levels of GRPO (RLConfig.ImportanceSamplingLevel), TRL's
// importance_sampling_level.
const (
	ISToken    = "token"    // one ratio per token (GRPO)
	ISSequence = "sequence" // exp of the mean log-ratio over the sequence's tokens (GSPO)
)

// Defaults of SAPO's temperatures (TRL's sapo_temperature_pos and _neg).
const (
	DefaultSAPOTemperaturePos = 1.0
	DefaultSAPOTemperatureNeg = 1.05
)

// Reward scalings of GRPO advantages (RLConfig.ScaleRewards), TRL's scale_rewards.
const (
	ScaleGroup = "group"
	ScaleBatch = "batch"
	ScaleNone  = "none"
)

// Inputs the RL loss head adds beside the model's and the log-prob head's.
const (
	// RLOldLogpsInput is float32 [batch, seq]: the sampling policy's log-prob of each
	// completion token, laid out as TokenLogpsOutput (0 elsewhere).
	RLOldLogpsInput = "rl_old_logps"
	// RLRefLogpsInput is float32 [batch, seq]: the reference's, same layout (GRPO with
	// beta > 0 only).
	RLRefLogpsInput = "rl_ref_logps"
	// RLAdvantagesInput is float32 [batch]: each sequence's advantage.
	RLAdvantagesInput = "rl_advantages"
	// RLWeightsInput is float32 [batch, seq] (GRPO: each token's share of the loss, which
	// sets the aggregation) or [batch] (RLOO: each sequence's share).
	RLWeightsInput = "rl_weights"
	// RLCISPOWeights is the value of a cispo graph that holds min(ratio, ε_high), which
	// the backward pass treats as a constant (autodiff.StopGradientMetadata).
	RLCISPOWeights = "ortalign_rl/cispo_weights"
)

// RLConfig configures the policy-gradient loss of an online RL run, with TRL v1.x's
// option names (GRPOConfig, RLOOConfig).
type RLConfig struct {
	Algo     string  // AlgoGRPO or AlgoRLOO
	LossType string  // GRPO's aggregation ("" means LossDAPO, TRL's default); ignored by RLOO
	Beta     float64 // KL coefficient: GRPO, k3 KL in the loss; RLOO, KL taken off the reward
	// Epsilon and EpsilonHigh clip the importance ratio to [1 − Epsilon, 1 + EpsilonHigh]
	// (EpsilonHigh 0 means Epsilon).
	Epsilon, EpsilonHigh float64
	// Temperature divides the logits before the log-softmax, as TRL computes the policy's
	// log-probs (0 means 1).
	Temperature float64
	// MaxCompletionLength is dr_grpo's normaliser (TRL's max_completion_length).
	MaxCompletionLength int
	// ScaleRewards is GRPO's advantage scaling: ScaleGroup (default), ScaleBatch, ScaleNone.
	ScaleRewards string
	// NormalizeAdvantages standardises RLOO's advantages over the batch (TRL's
	// normalize_advantages).
	NormalizeAdvantages bool
	// ImportanceSamplingLevel is GRPO's ISToken ("" too) or ISSequence (GSPO).
	ImportanceSamplingLevel string
	// SAPOTemperaturePos and SAPOTemperatureNeg are sapo's τ for tokens of positive and
	// of other advantages (0 means the defaults).
	SAPOTemperaturePos, SAPOTemperatureNeg float64
}

func (c RLConfig) epsHigh() float64 {
	if c.EpsilonHigh > 0 {
		return c.EpsilonHigh
	}
	return c.Epsilon
}

func (c RLConfig) LogitTemperature() float64 {
	if c.Temperature == 0 {
		return 1
	}
	return c.Temperature
}

func (c RLConfig) lossType() string {
	if c.LossType == "" {
		return LossDAPO
	}
	return c.LossType
}

// aggregation is the loss type that says how GRPO's per-token losses combine: cispo's
// is dapo's, sapo's grpo's.
func (c RLConfig) aggregation() string {
	switch c.lossType() {
	case LossCISPO:
		return LossDAPO
	case LossSAPO:
		return LossGRPO
	}
	return c.lossType()
}

func (c RLConfig) sequenceLevel() bool { return c.ImportanceSamplingLevel == ISSequence }

// sapoTemperatures are sapo's τ for positive and other advantages.
func (c RLConfig) sapoTemperatures() (pos, neg float64) {
	pos, neg = c.SAPOTemperaturePos, c.SAPOTemperatureNeg
	if pos == 0 {
		pos = DefaultSAPOTemperaturePos
	}
	if neg == 0 {
		neg = DefaultSAPOTemperatureNeg
	}
	return pos, neg
}

func (c RLConfig) scaleRewards() string {
	if c.ScaleRewards == "" {
		return ScaleGroup
	}
	return c.ScaleRewards
}

// Validate reports settings out of range; messages name settings, not flags.
func (c RLConfig) Validate() error {
	switch c.Algo {
	case AlgoGRPO, AlgoRLOO:
	default:
		return fmt.Errorf("algorithm must be %s or %s, got %q", AlgoGRPO, AlgoRLOO, c.Algo)
	}
	if !slices.Contains(GRPOLossTypes, c.lossType()) {
		return fmt.Errorf("loss type must be one of %s, got %q", strings.Join(GRPOLossTypes, ", "), c.LossType)
	}
	if c.Algo != AlgoGRPO && (c.lossType() == LossCISPO || c.lossType() == LossSAPO) {
		return fmt.Errorf("loss type %s applies to grpo only", c.lossType())
	}
	switch c.ImportanceSamplingLevel {
	case "", ISToken:
	case ISSequence:
		if c.Algo != AlgoGRPO {
			return fmt.Errorf("importance sampling level %s applies to grpo only (rloo's ratio is already one per sequence)", ISSequence)
		}
	default:
		return fmt.Errorf("importance sampling level must be %s or %s, got %q", ISToken, ISSequence, c.ImportanceSamplingLevel)
	}
	pos, neg := c.sapoTemperatures()
	if !(pos > 0 && neg > 0) || math.IsInf(pos+neg, 0) {
		return fmt.Errorf("sapo temperatures must be positive, got %g and %g", pos, neg)
	}
	if (c.SAPOTemperaturePos != 0 || c.SAPOTemperatureNeg != 0) && c.lossType() != LossSAPO {
		return fmt.Errorf("sapo temperatures are options of the sapo loss only")
	}
	switch c.scaleRewards() {
	case ScaleGroup, ScaleBatch, ScaleNone:
	default:
		return fmt.Errorf("scale rewards must be %s, %s or %s, got %q", ScaleGroup, ScaleBatch, ScaleNone, c.ScaleRewards)
	}
	switch {
	case c.Beta < 0 || math.IsNaN(c.Beta):
		return fmt.Errorf("beta must be >= 0, got %g", c.Beta)
	case !(c.Epsilon >= 0 && c.Epsilon < 1):
		return fmt.Errorf("epsilon must be in [0, 1), got %g", c.Epsilon)
	case c.EpsilonHigh < 0:
		return fmt.Errorf("epsilon high must be >= 0, got %g", c.EpsilonHigh)
	case c.Temperature < 0 || math.IsNaN(c.Temperature):
		return fmt.Errorf("temperature must be > 0, got %g", c.Temperature)
	case c.Algo == AlgoGRPO && c.aggregation() == LossDrGRPO && c.MaxCompletionLength <= 0:
		return fmt.Errorf("dr_grpo needs the maximum completion length")
	}
	return nil
}

// Rollout is one sampled completion of a prompt with what a policy-gradient update needs.
type Rollout struct {
	Prompt, Completion []int64
	// Masked leaves the completion out of the loss (TRL's mask_truncated_completions: a
	// completion cut at the length limit). Its tokens still count in the batch's shape.
	Masked bool
	// Reward is the score the advantage came from (after RLOO's KL penalty).
	Reward    float64
	Advantage float64
	// OldLogps and RefLogps are the sampling policy's and the reference's log-probs of
	// each completion token (RefLogps is needed only by GRPO with Beta > 0).
	OldLogps, RefLogps []float64
}

// Sequence is the rollout's prompt + completion, with the completion's tokens counting
// unless the rollout is masked.
func (r Rollout) Sequence() lm.Sequence {
	ids := make([]int64, 0, len(r.Prompt)+len(r.Completion))
	ids = append(append(ids, r.Prompt...), r.Completion...)
	start := len(r.Prompt)
	if r.Masked {
		start = len(ids)
	}
	return lm.Sequence{IDs: ids, CompletionStart: start}
}

// tokens is the number of completion tokens in the loss.
func (r Rollout) tokens() int {
	if r.Masked {
		return 0
	}
	return len(r.Completion)
}

// RL is the online policy-gradient objective (GRPO or RLOO) over rollouts. The loss head
// is built on the log-prob head's per-token output token_logps (log π_θ of each completion
// token, of the logits divided by Temperature), with old = the sampling policy's and ref =
// the reference's per-token log-probs fed as inputs, A the rollouts' advantages and m the
// completion mask:
//
// GRPO (TRL v1.x GRPOTrainer._compute_loss):
//
//	ratio_t = exp(logp_t − old_t)                           (importance_sampling_level token)
//	ratio_t = exp(Σ_t m_t·(logp_t − old_t) / max(1, Σ_t m_t)) (sequence: GSPO, one per sequence)
//	ℓ_t     = pg_t + β·(exp(ref_t−logp_t) − (ref_t−logp_t) − 1), with pg by the loss type:
//	  grpo, bnpo, dr_grpo, dapo  −min(ratio_t·A, clip(ratio_t, 1−ε, 1+ε_high)·A)
//	  cispo                      −sg(min(ratio_t, ε_high))·A·logp_t (sg: no gradient; TRL caps
//	                             at epsilon_high itself, the ScaleRL paper's ε_max)
//	  sapo                       −σ(τ·(ratio_t − 1))·(4/τ)·A, τ = τ_pos if A > 0 else τ_neg
//	loss    = Σ_{b,t} w_{b,t}·ℓ_{b,t}, with w by the loss type's aggregation:
//	  grpo, sapo     m_{b,t} / (max(1, Σ_t m_{b,t}) · B)   (Weight: B sequences)
//	  bnpo           m_{b,t} / max(1, Σ_{b,t} m_{b,t})      (Weight: B)
//	  dr_grpo        m_{b,t} / (B · max_completion_length)  (Weight: B)
//	  dapo, cispo    m_{b,t} / max(1, Σ_{b,t} m_{b,t})      (Weight: the tokens, so that the
//	                 step's micro-batches combine into Σ ℓ / tokens of the whole step, TRL's
//	                 num_items_in_batch)
//
// RLOO (TRL v1.x RLOOTrainer._compute_loss: a sequence-level ratio of summed log-probs):
//
//	ρ_b  = exp(Σ_t m_{b,t}·(logp_{b,t} − old_{b,t}))
//	loss = (1/B) Σ_b −min(ρ_b·A_b, clip(ρ_b, 1−ε, 1+ε_high)·A_b)        (Weight: B)
//
// RLOO's KL enters through the reward (see Advantages), not the loss.
type RL struct {
	Config RLConfig
}

// Name implements Objective.
func (o RL) Name() string { return o.Config.Algo }

// Settings implements Objective: the options that shape the loss.
func (o RL) Settings() map[string]string {
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
	c := o.Config
	s := map[string]string{
		"beta": f(c.Beta), "epsilon": f(c.Epsilon), "epsilon_high": f(c.epsHigh()),
		"temperature": f(c.LogitTemperature()),
	}
	if c.Algo == AlgoGRPO {
		s["loss_type"] = c.lossType()
		s["scale_rewards"] = c.scaleRewards()
		if c.lossType() == LossDrGRPO {
			s["max_completion_length"] = strconv.Itoa(c.MaxCompletionLength)
		}
		// Set only off their defaults, so that the settings of earlier runs still match.
		if c.sequenceLevel() {
			s["importance_sampling_level"] = ISSequence
		}
		if c.lossType() == LossSAPO {
			pos, neg := c.sapoTemperatures()
			s["sapo_temperature_pos"], s["sapo_temperature_neg"] = f(pos), f(neg)
		}
	} else {
		s["normalize_advantages"] = strconv.FormatBool(c.NormalizeAdvantages)
	}
	return s
}

// refInLoss reports whether the loss reads the reference's log-probs.
func (o RL) refInLoss() bool { return o.Config.Algo == AlgoGRPO && o.Config.Beta != 0 }

// AppendLoss implements Objective with the GRPO or RLOO loss head.
func (o RL) AppendLoss(m *onnx.Model) error {
	c := o.Config
	if err := c.Validate(); err != nil {
		return err
	}
	if t := c.LogitTemperature(); t != 1 {
		if err := DivideLogits(m, t); err != nil {
			return err
		}
	}
	head, err := lm.AppendLogProbHeadWith(m, lm.HeadOptions{TokenLogps: true})
	if err != nil {
		return err
	}
	g := m.Graph()
	onnx.RemoveOutput(g, lm.VocabSizeOutput)
	onnx.RemoveOutput(g, lm.SequenceLogpsOutput)
	batchSeq := []onnx.Dim{onnx.DimParam("batch"), onnx.DimParam("sequence")}
	batch := []onnx.Dim{onnx.DimParam("batch")}
	if err := onnx.AddInput(g, RLOldLogpsInput, onnx.Float, batchSeq); err != nil {
		return err
	}
	if err := onnx.AddInput(g, RLAdvantagesInput, onnx.Float, batch); err != nil {
		return err
	}
	b := onnx.NewBuilder(g, m.Opset(""), "ortalign_rl")
	lo, hi := b.ConstFloat(float32(1-c.Epsilon)), b.ConstFloat(float32(1+c.epsHigh()))
	lp := head.TokenLogps
	var loss string
	if c.Algo == AlgoRLOO {
		if err := onnx.AddInput(g, RLWeightsInput, onnx.Float, batch); err != nil {
			return err
		}
		// token_logps and rl_old_logps are 0 off the completion, so the row sums are the
		// masked sums.
		ratio := b.Exp(b.ReduceSum(b.Sub(lp, RLOldLogpsInput), []int64{1}, false))
		l1 := b.Mul(ratio, RLAdvantagesInput)
		l2 := b.Mul(b.Clip(ratio, lo, hi), RLAdvantagesInput)
		loss = b.ReduceSum(b.Mul(b.Neg(b.Min(l1, l2)), RLWeightsInput), nil, false)
	} else {
		if err := onnx.AddInput(g, RLWeightsInput, onnx.Float, batchSeq); err != nil {
			return err
		}
		adv := b.Unsqueeze(RLAdvantagesInput, []int64{1})
		logRatio := b.Sub(lp, RLOldLogpsInput)
		if c.sequenceLevel() {
			// GSPO: the log-ratio averaged over the sequence's completion tokens, [batch, 1]
			// (token_logps and rl_old_logps are 0 off them).
			count := b.Max(b.ReduceSum(lm.CompletionMaskInput, []int64{1}, true), b.ConstFloat(1))
			logRatio = b.Div(b.ReduceSum(logRatio, []int64{1}, true), count)
		}
		ratio := b.Exp(logRatio)
		var per string
		switch c.lossType() {
		case LossCISPO:
			// The capped ratio is a constant to the gradient (TRL's .detach()).
			lm.AddIdentity(g, b.Min(ratio, b.ConstFloat(float32(c.epsHigh()))), RLCISPOWeights)
			markStopGradient(m, RLCISPOWeights)
			per = b.Neg(b.Mul(b.Mul(RLCISPOWeights, adv), lp))
		case LossSAPO:
			pos, neg := c.sapoTemperatures()
			tau := b.Where(b.Greater(adv, b.ConstFloat(0)), b.ConstFloat(float32(pos)), b.ConstFloat(float32(neg)))
			gate := b.Sigmoid(b.Mul(tau, b.Sub(ratio, b.ConstFloat(1))))
			per = b.Neg(b.Mul(b.Div(b.Mul(gate, b.ConstFloat(4)), tau), adv))
		default:
			l1 := b.Mul(ratio, adv)
			l2 := b.Mul(b.Clip(ratio, lo, hi), adv)
			per = b.Neg(b.Min(l1, l2))
		}
		if c.Beta != 0 {
			if err := onnx.AddInput(g, RLRefLogpsInput, onnx.Float, batchSeq); err != nil {
				return err
			}
			d := b.Sub(RLRefLogpsInput, lp)
			kl := b.Sub(b.Sub(b.Exp(d), d), b.ConstFloat(1))
			per = b.Add(per, b.Mul(b.ConstFloat(float32(c.Beta)), kl))
		}
		loss = b.ReduceSum(b.Mul(per, RLWeightsInput), nil, false)
	}
	lm.AddIdentity(g, loss, engine.LossOutput)
	return onnx.AddOutput(g, engine.LossOutput, onnx.Float, []onnx.Dim{})
}

// divideLogits makes the model's logits output its logits divided by t.
func DivideLogits(m *onnx.Model, t float64) error {
	g := m.Graph()
	const raw = "ortalign_raw_logits"
	n := onnx.Producers(g)[lm.LogitsOutput]
	if n == nil {
		return fmt.Errorf("model has no output %q", lm.LogitsOutput)
	}
	for i, out := range n.GetOutput() {
		if out == lm.LogitsOutput {
			n.Output[i] = raw
		}
	}
	for _, other := range g.GetNode() {
		for i, in := range other.GetInput() {
			if in == lm.LogitsOutput {
				other.Input[i] = raw
			}
		}
	}
	b := onnx.NewBuilder(g, m.Opset(""), "ortalign_temperature")
	scaled := raw
	if dt, _, _ := onnx.TensorType(onnx.Output(g, lm.LogitsOutput)); dt != onnx.Float {
		scaled = b.Cast(raw, onnx.Float)
		onnx.Output(g, lm.LogitsOutput).GetType().GetTensorType().ElemType = int32Ptr(int32(onnx.Float))
	}
	lm.AddIdentity(g, b.Div(scaled, b.ConstFloat(float32(t))), lm.LogitsOutput)
	return nil
}

func int32Ptr(v int32) *int32 { return &v }

// Outputs implements Objective: the per-token log-probs, for the clipping metrics.
func (RL) Outputs() []string { return []string{lm.TokenLogpsOutput} }

// Weight implements Objective (see RL's loss): the step's micro-batches combine in
// proportion to it.
func (o RL) Weight(batch []Rollout) float64 {
	if o.Config.Algo == AlgoGRPO && o.Config.aggregation() == LossDAPO {
		n := 0
		for _, r := range batch {
			n += r.tokens()
		}
		return float64(n)
	}
	return float64(len(batch))
}

// rolloutWidth is the padded width of a micro-batch (BatchInputs pads to the longest).
func RolloutWidth(batch []Rollout) int {
	w := 0
	for _, r := range batch {
		w = max(w, len(r.Prompt)+len(r.Completion))
	}
	return w
}

// UnpaddedRows marks RL as sized by its rollouts (see Unpadded).
func (RL) UnpaddedRows() {}

// Feeds implements Objective.
func (o RL) Feeds(in engine.ModelInputs, batch []Rollout) (map[string]*ort.Tensor, error) {
	c := o.Config
	seqs := make([]lm.Sequence, len(batch))
	for i, r := range batch {
		if len(r.Prompt) == 0 {
			return nil, fmt.Errorf("rollout %d has an empty prompt", i)
		}
		if len(r.OldLogps) != len(r.Completion) {
			return nil, fmt.Errorf("rollout %d has %d old log-probs for %d completion tokens", i, len(r.OldLogps), len(r.Completion))
		}
		if o.refInLoss() && len(r.RefLogps) != len(r.Completion) {
			return nil, fmt.Errorf("rollout %d has %d reference log-probs for %d completion tokens", i, len(r.RefLogps), len(r.Completion))
		}
		seqs[i] = r.Sequence()
	}
	feeds := in.Rows(seqs)
	n, w := len(batch), RolloutWidth(batch)
	shape := []int64{int64(n), int64(w)}
	old := make([]float32, n*w)
	adv := make([]float32, n)
	var ref []float32
	if o.refInLoss() {
		ref = make([]float32, n*w)
	}
	total := 0
	for _, r := range batch {
		total += r.tokens()
	}
	for i, r := range batch {
		adv[i] = float32(r.Advantage)
		if r.Masked {
			continue
		}
		base := i*w + len(r.Prompt)
		for j := range r.Completion {
			old[base+j] = float32(r.OldLogps[j])
			if ref != nil {
				ref[base+j] = float32(r.RefLogps[j])
			}
		}
	}
	feeds[RLOldLogpsInput] = ort.MustFloatTensor(shape, old)
	feeds[RLAdvantagesInput] = ort.MustFloatTensor([]int64{int64(n)}, adv)
	if ref != nil {
		feeds[RLRefLogpsInput] = ort.MustFloatTensor(shape, ref)
	}
	if c.Algo == AlgoRLOO {
		wts := make([]float32, n)
		for i := range wts {
			wts[i] = float32(1 / float64(n))
		}
		feeds[RLWeightsInput] = ort.MustFloatTensor([]int64{int64(n)}, wts)
		return feeds, nil
	}
	wts := make([]float32, n*w)
	for i, r := range batch {
		k := r.tokens()
		if k == 0 {
			continue
		}
		var v float64
		switch c.aggregation() {
		case LossGRPO:
			v = 1 / (float64(k) * float64(n))
		case LossBNPO, LossDAPO:
			v = 1 / math.Max(1, float64(total))
		case LossDrGRPO:
			v = 1 / (float64(n) * float64(c.MaxCompletionLength))
		}
		base := i*w + len(r.Prompt)
		for j := 0; j < k; j++ {
			wts[base+j] = float32(v)
		}
	}
	feeds[RLWeightsInput] = ort.MustFloatTensor(shape, wts)
	return feeds, nil
}

// Metrics implements Objective: loss, policy/clipfrac_avg and policy/approxkl_avg
// (½·mean (logp − old)² over completion tokens). The clip fraction is that of the units
// the ratio is taken over — completion tokens; sequences for RLOO and GRPO's sequence
// level, masked ones included as TRL's mean over them — whose ratio is clipped in the
// direction that stops the gradient: below 1−ε with A < 0 or above 1+ε_high with A > 0
// (TRL's clip_ratio/region); for cispo, above ε_high with A > 0 (TRL's
// cispo_clip_ratio). sapo clips nothing and logs no clip fraction.
func (o RL) Metrics(batch []Rollout, out map[string]*ort.Tensor) (engine.Metrics, error) {
	c := o.Config
	lp := out[lm.TokenLogpsOutput]
	n, w := len(batch), RolloutWidth(batch)
	if lp == nil || len(lp.F32) != n*w {
		return nil, fmt.Errorf("%s: want %d×%d values", lm.TokenLogpsOutput, n, w)
	}
	lo, hi := 1-c.Epsilon, 1+c.epsHigh()
	clipped := func(ratio, a float64) bool { return (ratio < lo && a < 0) || (ratio > hi && a > 0) }
	if c.Algo == AlgoGRPO && c.lossType() == LossCISPO {
		clipped = func(ratio, a float64) bool { return ratio > c.epsHigh() && a > 0 }
	}
	perSequence := c.Algo == AlgoRLOO || c.sequenceLevel()
	var clip, units, approx float64
	tokens := 0
	for i, r := range batch {
		if r.Masked {
			if perSequence {
				units++
			}
			continue
		}
		base := i*w + len(r.Prompt)
		seq := 0.0
		for j := range r.Completion {
			d := float64(lp.F32[base+j]) - r.OldLogps[j]
			seq += d
			approx += 0.5 * d * d
			tokens++
			if !perSequence {
				units++
				if clipped(math.Exp(d), r.Advantage) {
					clip++
				}
			}
		}
		if perSequence {
			if c.Algo == AlgoGRPO {
				seq /= math.Max(1, float64(len(r.Completion)))
			}
			units++
			if clipped(math.Exp(seq), r.Advantage) {
				clip++
			}
		}
	}
	m := engine.Metrics{{Name: engine.LossOutput, Value: float64(out[engine.LossOutput].F32[0])}}
	if c.Algo != AlgoGRPO || c.lossType() != LossSAPO {
		m = append(m, engine.Metric{Name: "policy/clipfrac_avg", Value: clip / math.Max(1, units)})
	}
	m = append(m, engine.Metric{Name: "policy/approxkl_avg", Value: approx / math.Max(1, float64(tokens))})
	return m, nil
}

// Samples implements Objective.
func (RL) Samples() (first, second []Rollout) {
	ro := func(p, c int) Rollout {
		return Rollout{Prompt: make([]int64, p), Completion: make([]int64, c), OldLogps: make([]float64, c), RefLogps: make([]float64, c)}
	}
	return []Rollout{ro(2, 3), ro(3, 1)}, []Rollout{ro(1, 5), ro(4, 2), ro(2, 2)}
}

// Fingerprint implements Objective: the rollout's ids, mask and advantage.
func (RL) Fingerprint(h hash.Hash, r Rollout) {
	fingerprintSequence(h, r.Sequence())
	binary.Write(h, binary.LittleEndian, r.Advantage)
}

// Advantages returns the rollouts' advantages from their rewards, the rollouts being
// groups of g consecutive completions of one prompt:
//
// GRPO (TRL v1.x): A_i = r_i − mean(group), divided by std + 1e-4 where std is the
// group's (ScaleGroup) or the whole batch's (ScaleBatch) unbiased standard deviation, or
// not divided (ScaleNone).
//
// RLOO (TRL v1.x): rewards are first lowered by β·KL_i with KL_i = Σ_t (old_t − ref_t)
// (the caller passes them lowered: see RLOOPenalized); A_i = r_i − (Σ_{j≠i} r_j)/(g − 1),
// 0 when g = 1; with NormalizeAdvantages, (A − mean A)/(std A + 1e-4) over the batch.
func Advantages(c RLConfig, rewards []float64, g int) ([]float64, error) {
	if g <= 0 || len(rewards)%g != 0 {
		return nil, fmt.Errorf("%d rewards are not groups of %d", len(rewards), g)
	}
	adv := make([]float64, len(rewards))
	for lo := 0; lo < len(rewards); lo += g {
		grp := rewards[lo : lo+g]
		sum := 0.0
		for _, r := range grp {
			sum += r
		}
		mean := sum / float64(g)
		for k, r := range grp {
			if c.Algo == AlgoRLOO {
				if g > 1 {
					adv[lo+k] = r - (sum-r)/float64(g-1)
				}
			} else {
				adv[lo+k] = r - mean
			}
		}
		if c.Algo == AlgoGRPO && c.scaleRewards() == ScaleGroup {
			std := Stddev(grp)
			for k := range grp {
				adv[lo+k] /= std + 1e-4
			}
		}
	}
	switch {
	case c.Algo == AlgoGRPO && c.scaleRewards() == ScaleBatch:
		std := Stddev(rewards)
		for i := range adv {
			adv[i] /= std + 1e-4
		}
	case c.Algo == AlgoRLOO && c.NormalizeAdvantages:
		mean, std := MeanOf(adv), Stddev(adv)
		for i := range adv {
			adv[i] = (adv[i] - mean) / (std + 1e-4)
		}
	}
	return adv, nil
}

// RLOOPenalized returns rewards − β·KL_i with KL_i = Σ_t (old_t − ref_t) over each
// rollout's completion tokens in the loss (TRL's RLOO reward with its KL penalty).
func RLOOPenalized(beta float64, rewards []float64, rollouts []Rollout) []float64 {
	out := make([]float64, len(rewards))
	for i, r := range rewards {
		out[i] = r
		if beta != 0 {
			out[i] -= beta * SequenceKL(rollouts[i])
		}
	}
	return out
}

// SequenceKL is Σ_t (old_t − ref_t) over the completion tokens in the loss: the sampled
// estimate of KL(π_old ‖ π_ref) of the sequence (TRL's k1).
func SequenceKL(r Rollout) float64 {
	if r.Masked || len(r.RefLogps) != len(r.OldLogps) {
		return 0
	}
	kl := 0.0
	for j := range r.OldLogps {
		kl += r.OldLogps[j] - r.RefLogps[j]
	}
	return kl
}

func MeanOf(x []float64) float64 {
	s := 0.0
	for _, v := range x {
		s += v
	}
	return s / math.Max(1, float64(len(x)))
}

// stddev is the unbiased standard deviation (torch.std); 0 for fewer than two values...
// torch gives NaN there, which TRL never reaches in training (groups of at least 2).
func Stddev(x []float64) float64 {
	if len(x) < 2 {
		return 0
	}
	m := MeanOf(x)
	s := 0.0
	for _, v := range x {
		s += (v - m) * (v - m)
	}
	return math.Sqrt(s / float64(len(x)-1))
}
