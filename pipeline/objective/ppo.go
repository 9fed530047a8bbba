package objective

import (
	"encoding/binary"
	"fmt"
	"hash"
	"math"
	"math/rand"
	"strconv"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
	"ortalign/onnx/ort"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/generate"
	"ortalign/pipeline/lm"
)

// AlgoPPO is TRL's (experimental) PPOTrainer: a policy and a value head trained
// together on rollouts with GAE advantages.
const AlgoPPO = "ppo"

// KL estimators of PPO's per-token penalty (PPOConfig.KLEstimator), TRL's kl_estimator.
const (
	KLk1 = "k1" // old − ref
	KLk3 = "k3" // (exp(ref − old) − 1) − (ref − old)
)

// Names PPO adds to the policy's graph.
const (
	// PPOEntropyOutput is float32 [batch, seq]: the entropy of the (temperature-scaled)
	// next-token distribution that predicts each completion token, laid out as
	// TokenLogpsOutput (0 elsewhere); a metric, not differentiated.
	PPOEntropyOutput = "ppo_token_entropy"
	// PPOPolicyLossOutput and PPOValueLossOutput are the two scalar parts of the loss.
	PPOPolicyLossOutput = "ppo_policy_loss"
	PPOValueLossOutput  = "ppo_value_loss"

	// Inputs of the loss head. Token layout ([batch, seq], as TokenLogpsOutput): completion
	// token j of a row with a prompt of P tokens at column P + j. Value layout ([batch,
	// seq], as ValuesOutput): value step t at column P + t − 1.
	PPOOldLogpsInput     = "ppo_old_logps"      // token layout
	PPOAdvantagesInput   = "ppo_advantages"     // token layout, whitened
	PPOPolicyWeights     = "ppo_policy_weights" // token layout: 1 / policy tokens of the micro-batch
	PPOOldValuesInput    = "ppo_old_values"     // value layout
	PPOReturnsInput      = "ppo_returns"        // value layout
	PPOValueWeightsInput = "ppo_value_weights"  // value layout: 1 / value steps of the micro-batch
)

// PPOConfig holds PPO's loss and advantage options with TRL v1.x PPOConfig's names.
type PPOConfig struct {
	KLCoef      float64 // kl_coef: per-token reward −KLCoef·kl (TRL 0.05)
	KLEstimator string  // kl_estimator: KLk1 ("" too, TRL's default) or KLk3
	Cliprange   float64 // cliprange: the ratio's clip (TRL 0.2)
	// CliprangeValue clips the new values to old ± CliprangeValue (TRL 0.2).
	CliprangeValue float64
	VFCoef         float64 // vf_coef: loss = policy loss + VFCoef·value loss (TRL 0.1)
	Gamma, Lam     float64 // GAE's discount and λ (TRL 1 and 0.95)
	WhitenRewards  bool    // whiten_rewards (TRL false)
	// Temperature divides the logits before the log-softmax (TRL 0.7; 0 means 1).
	Temperature float64
}

// DefaultPPOConfig is TRL v1.x's PPOConfig defaults.
func DefaultPPOConfig() PPOConfig {
	return PPOConfig{KLCoef: 0.05, KLEstimator: KLk1, Cliprange: 0.2, CliprangeValue: 0.2, VFCoef: 0.1, Gamma: 1, Lam: 0.95, Temperature: 0.7}
}

func (c PPOConfig) LogitTemperature() float64 {
	if c.Temperature == 0 {
		return 1
	}
	return c.Temperature
}

func (c PPOConfig) klEstimator() string {
	if c.KLEstimator == "" {
		return KLk1
	}
	return c.KLEstimator
}

// Validate reports settings out of range; messages name settings, not flags.
func (c PPOConfig) Validate() error {
	bad := func(v float64) bool { return math.IsNaN(v) || math.IsInf(v, 0) }
	switch {
	case c.klEstimator() != KLk1 && c.klEstimator() != KLk3:
		return fmt.Errorf("kl estimator must be %s or %s, got %q", KLk1, KLk3, c.KLEstimator)
	case c.KLCoef < 0 || bad(c.KLCoef):
		return fmt.Errorf("kl coef must be >= 0, got %g", c.KLCoef)
	case !(c.Cliprange >= 0 && c.Cliprange < 1):
		return fmt.Errorf("cliprange must be in [0, 1), got %g", c.Cliprange)
	case c.CliprangeValue < 0 || bad(c.CliprangeValue):
		return fmt.Errorf("cliprange value must be >= 0, got %g", c.CliprangeValue)
	case c.VFCoef < 0 || bad(c.VFCoef):
		return fmt.Errorf("vf coef must be >= 0, got %g", c.VFCoef)
	case !(c.Gamma >= 0 && c.Gamma <= 1):
		return fmt.Errorf("gamma must be in [0, 1], got %g", c.Gamma)
	case !(c.Lam >= 0 && c.Lam <= 1):
		return fmt.Errorf("lam must be in [0, 1], got %g", c.Lam)
	case c.Temperature < 0 || bad(c.Temperature):
		return fmt.Errorf("temperature must be > 0, got %g", c.Temperature)
	}
	return nil
}

// PPORollout is one sampled completion with what PPO's update needs.
//
// Steps: the completion's n tokens are the policy's actions, token j predicted by the
// state ending at prompt+completion position P + j − 1. The value function has n steps,
// or n + 1 when the completion stopped before the length limit (Terminal): the extra step
// is the state that has read the whole completion, EOS included. This is TRL's layout
// with a pad token distinct from EOS and a batch padded to the length limit: its
// padding_mask_p1 keeps one value past the last token (sequence_lengths + 1) where there
// is room, and the score goes on that last value step.
type PPORollout struct {
	Prompt, Completion []int64
	Terminal           bool
	Score              float64
	// OldLogps and RefLogps are the sampling policy's and the reference's log-probs of the
	// completion tokens (n each).
	OldLogps, RefLogps []float64
	// OldValues, Returns (Steps each) and Advantages (n, whitened) come from PPOAdvantages.
	OldValues, Returns, Advantages []float64
}

// Steps is the number of value steps: n, or n + 1 for a Terminal rollout.
func (r PPORollout) Steps() int {
	if r.Terminal {
		return len(r.Completion) + 1
	}
	return len(r.Completion)
}

// Sequence is the rollout's prompt + completion, the completion counting.
func (r PPORollout) Sequence() lm.Sequence {
	ids := make([]int64, 0, len(r.Prompt)+len(r.Completion))
	ids = append(append(ids, r.Prompt...), r.Completion...)
	return lm.Sequence{IDs: ids, CompletionStart: len(r.Prompt)}
}

// PPO is TRL v1.x's PPOTrainer loss over PPORollouts, on a model with a value head
// (AddValueHead): one graph holds the policy and the value function, which share the
// backbone (TRL keeps a separate value model; see RunPPO). With lp the policy's
// per-token log-probs of logits / temperature, old, A (whitened advantages) in token
// layout and v the values, V_old and R (returns) in value layout, masked means over the
// micro-batch's completion tokens (policy) and value steps (value):
//
//	ratio = exp(lp − old)
//	pg    = mean_tokens max(−A·ratio, −A·clip(ratio, 1 − ε, 1 + ε))
//	v_c   = clamp(v, V_old − ε_v, V_old + ε_v)
//	vf    = ½·mean_steps max((v − R)², (v_c − R)²)
//	loss  = pg + vf_coef·vf
//
// Micro-batches of one optimizer step count equally (Weight 1), as accelerate's
// gradient accumulation divides each micro-batch's loss by their number.
type PPO struct {
	Config PPOConfig
}

// Name implements Objective.
func (PPO) Name() string { return AlgoPPO }

// Settings implements Objective.
func (o PPO) Settings() map[string]string {
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
	c := o.Config
	return map[string]string{
		"kl_coef": f(c.KLCoef), "kl_estimator": c.klEstimator(), "cliprange": f(c.Cliprange),
		"cliprange_value": f(c.CliprangeValue), "vf_coef": f(c.VFCoef), "gamma": f(c.Gamma), "lam": f(c.Lam),
		"whiten_rewards": strconv.FormatBool(c.WhitenRewards), "temperature": f(c.LogitTemperature()),
	}
}

// AppendLoss implements Objective: m must carry AddValueHead's head.
func (o PPO) AppendLoss(m *onnx.Model) error {
	c := o.Config
	if err := c.Validate(); err != nil {
		return err
	}
	g := m.Graph()
	// Keep the value head's nodes and weights: the log-prob head prunes what its outputs
	// do not need.
	if onnx.Initializer(g, lm.ValueHeadWeightName) == nil || onnx.Output(g, lm.ValuesOutput) == nil {
		return fmt.Errorf("PPO needs the model with its value head (AddValueHead)")
	}
	nodes, inits := lm.ValueHeadParts(g)
	for i, n := range nodes {
		nodes[i] = proto.Clone(n).(*onnxpb.NodeProto)
	}
	for i, t := range inits {
		inits[i] = proto.Clone(t).(*onnxpb.TensorProto)
	}
	lp, _, err := appendPPOHead(m, c.LogitTemperature())
	if err != nil {
		return err
	}
	for _, t := range inits {
		if onnx.Initializer(g, t.GetName()) == nil {
			if err := onnx.AddInitializer(g, t); err != nil {
				return err
			}
		}
	}
	produced := onnx.Producers(g)
	for _, n := range nodes {
		if produced[n.GetOutput()[0]] == nil {
			g.Node = append(g.Node, n)
		}
	}
	batchSeq := []onnx.Dim{onnx.DimParam("batch"), onnx.DimParam("sequence")}
	for _, in := range []string{PPOOldLogpsInput, PPOAdvantagesInput, PPOPolicyWeights, PPOOldValuesInput, PPOReturnsInput, PPOValueWeightsInput} {
		if err := onnx.AddInput(g, in, onnx.Float, batchSeq); err != nil {
			return err
		}
	}
	b := onnx.NewBuilder(g, m.Opset(""), "ortalign_ppo")
	ratio := b.Exp(b.Sub(lp, PPOOldLogpsInput))
	negA := b.Neg(PPOAdvantagesInput)
	pg1 := b.Mul(negA, ratio)
	pg2 := b.Mul(negA, b.Clip(ratio, b.ConstFloat(float32(1-c.Cliprange)), b.ConstFloat(float32(1+c.Cliprange))))
	pg := b.ReduceSum(b.Mul(b.Max(pg1, pg2), PPOPolicyWeights), nil, false)
	v := lm.ValuesOutput
	cv := b.ConstFloat(float32(c.CliprangeValue))
	vc := b.Min(b.Max(v, b.Sub(PPOOldValuesInput, cv)), b.Add(PPOOldValuesInput, cv))
	d1, d2 := b.Sub(v, PPOReturnsInput), b.Sub(vc, PPOReturnsInput)
	vf := b.Mul(b.ConstFloat(0.5), b.ReduceSum(b.Mul(b.Max(b.Mul(d1, d1), b.Mul(d2, d2)), PPOValueWeightsInput), nil, false))
	loss := b.Add(pg, b.Mul(b.ConstFloat(float32(c.VFCoef)), vf))
	lm.AddIdentity(g, loss, engine.LossOutput)
	lm.AddIdentity(g, pg, PPOPolicyLossOutput)
	lm.AddIdentity(g, vf, PPOValueLossOutput)
	for _, out := range []string{engine.LossOutput, PPOPolicyLossOutput, PPOValueLossOutput} {
		if err := onnx.AddOutput(g, out, onnx.Float, []onnx.Dim{}); err != nil {
			return err
		}
	}
	if err := onnx.AddOutput(g, lm.ValuesOutput, onnx.Float, batchSeq); err != nil {
		return err
	}
	return nil
}

// appendPPOHead adds the log-prob head with the per-token log-probs (TokenLogpsOutput)
// and entropies (PPOEntropyOutput) of logits / t as outputs; the model's own outputs are
// dropped. With a recognised float LM head the projection runs at completion positions
// only, its weight divided by t (the same logits / t).
func appendPPOHead(m *onnx.Model, t float64) (lp, ent string, err error) {
	g := m.Graph()
	head, sparse := lm.FindLMHead(g)
	logitsType, _, _ := onnx.TensorType(onnx.Output(g, lm.LogitsOutput))
	if t != 1 && (!sparse || logitsType != onnx.Float) {
		if err := DivideLogits(m, t); err != nil {
			return "", "", err
		}
		sparse, logitsType = false, onnx.Float
	}
	if onnx.Input(g, lm.InputIDs) == nil {
		return "", "", fmt.Errorf("model has no input %q", lm.InputIDs)
	}
	if err := onnx.AddInput(g, lm.CompletionMaskInput, onnx.Float, []onnx.Dim{onnx.DimParam("batch"), onnx.DimParam("sequence")}); err != nil {
		return "", "", err
	}
	inputs := lm.ValueNames(g.GetInput())
	b := onnx.NewBuilder(g, m.Opset(""), "ortalign_logp")
	var h lm.HeadValues
	if sparse {
		if t != 1 {
			inv := b.ConstFloat(float32(1 / t))
			head.Weight = b.Mul(head.Weight, inv)
			if head.Bias != "" {
				head.Bias = b.Mul(head.Bias, inv)
			}
		}
		h = lm.SparseSequenceLogps(b, head, logitsType, lm.InputIDs, lm.CompletionMaskInput)
	} else {
		logits := lm.LogitsOutput
		if logitsType != onnx.Float {
			logits = b.Cast(logits, onnx.Float)
		}
		h = lm.DenseSequenceLogps(b, logits, lm.InputIDs, lm.CompletionMaskInput)
	}
	// entropy = −Σ_v p_v·log p_v of the predicting distribution.
	e := b.Neg(b.ReduceSum(b.Mul(b.Exp(h.Lp), h.Lp), []int64{h.VocabAxis}, false))
	batchSeq := []onnx.Dim{onnx.DimParam("batch"), onnx.DimParam("sequence")}
	g.Output = nil
	lm.AddIdentity(g, h.PerPosition(b, h.Tok), lm.TokenLogpsOutput)
	lm.AddIdentity(g, h.PerPosition(b, e), PPOEntropyOutput)
	for _, out := range []string{lm.TokenLogpsOutput, PPOEntropyOutput} {
		if err := onnx.AddOutput(g, out, onnx.Float, batchSeq); err != nil {
			return "", "", err
		}
	}
	// Keep the value head (its output is re-added by the caller): prune against the
	// outputs so far plus the hidden state the head reads.
	onnx.Prune(g, inputs)
	return lm.TokenLogpsOutput, PPOEntropyOutput, nil
}

// Outputs implements Objective.
func (PPO) Outputs() []string {
	return []string{lm.TokenLogpsOutput, PPOEntropyOutput, lm.ValuesOutput, PPOPolicyLossOutput, PPOValueLossOutput}
}

// Weight implements Objective: micro-batches count equally (see PPO).
func (PPO) Weight([]PPORollout) float64 { return 1 }

func PpoWidth(batch []PPORollout) int {
	w := 0
	for _, r := range batch {
		w = max(w, len(r.Prompt)+len(r.Completion))
	}
	return w
}

// UnpaddedRows marks PPO as sized by its rollouts (see Unpadded).
func (PPO) UnpaddedRows() {}

// Feeds implements Objective. Missing old log-probs, advantages, values or returns are
// fed as zeros (a forward pass that reads log-probs and values only).
func (o PPO) Feeds(in engine.ModelInputs, batch []PPORollout) (map[string]*ort.Tensor, error) {
	seqs := make([]lm.Sequence, len(batch))
	tokens, steps := 0, 0
	for i, r := range batch {
		n := len(r.Completion)
		if len(r.Prompt) == 0 {
			return nil, fmt.Errorf("rollout %d has an empty prompt", i)
		}
		for name, v := range map[string][]float64{"old log-probs": r.OldLogps, "advantages": r.Advantages} {
			if v != nil && len(v) != n {
				return nil, fmt.Errorf("rollout %d has %d %s for %d completion tokens", i, len(v), name, n)
			}
		}
		for name, v := range map[string][]float64{"old values": r.OldValues, "returns": r.Returns} {
			if v != nil && len(v) != r.Steps() {
				return nil, fmt.Errorf("rollout %d has %d %s for %d value steps", i, len(v), name, r.Steps())
			}
		}
		seqs[i] = r.Sequence()
		tokens += n
		steps += r.Steps()
	}
	feeds := in.Rows(seqs)
	n, w := len(batch), PpoWidth(batch)
	shape := []int64{int64(n), int64(w)}
	old, adv, pw := make([]float32, n*w), make([]float32, n*w), make([]float32, n*w)
	oldV, ret, vw := make([]float32, n*w), make([]float32, n*w), make([]float32, n*w)
	pwv, vwv := float32(1/math.Max(1, float64(tokens))), float32(1/math.Max(1, float64(steps)))
	at := func(v []float64, j int) float32 {
		if v == nil {
			return 0
		}
		return float32(v[j])
	}
	for i, r := range batch {
		base := i*w + len(r.Prompt)
		for j := range r.Completion {
			old[base+j], adv[base+j], pw[base+j] = at(r.OldLogps, j), at(r.Advantages, j), pwv
		}
		for t := 0; t < r.Steps(); t++ {
			oldV[base+t-1], ret[base+t-1], vw[base+t-1] = at(r.OldValues, t), at(r.Returns, t), vwv
		}
	}
	for name, v := range map[string][]float32{PPOOldLogpsInput: old, PPOAdvantagesInput: adv, PPOPolicyWeights: pw,
		PPOOldValuesInput: oldV, PPOReturnsInput: ret, PPOValueWeightsInput: vw} {
		t, err := ort.NewFloatTensor(shape, v)
		if err != nil {
			return nil, fmt.Errorf("ppo feed %s: %w", name, err)
		}
		feeds[name] = t
	}
	return feeds, nil
}

// Metrics implements Objective with TRL's names, masked means over the micro-batch's
// completion tokens (policy) or value steps (value): loss, loss/policy_avg,
// loss/value_avg, policy/clipfrac_avg (−A·clip(ratio) > −A·ratio), val/clipfrac_avg
// ((v_c − R)² > (v − R)²), policy/approxkl_avg (½·(lp − old)²), policy/entropy_avg and
// val/ratio. TRL averages approxkl, entropy and ratio over every position of the padded
// batch, padding included; here padding does not count.
func (o PPO) Metrics(batch []PPORollout, out map[string]*ort.Tensor) (engine.Metrics, error) {
	c := o.Config
	n, w := len(batch), PpoWidth(batch)
	for _, name := range []string{lm.TokenLogpsOutput, PPOEntropyOutput, lm.ValuesOutput} {
		if t := out[name]; t == nil || len(t.F32) != n*w {
			return nil, fmt.Errorf("%s: want %d×%d values", name, n, w)
		}
	}
	lp, ent, val := out[lm.TokenLogpsOutput].F32, out[PPOEntropyOutput].F32, out[lm.ValuesOutput].F32
	var pgClip, approx, entropy, ratioSum, vfClip float64
	tokens, steps := 0, 0
	for i, r := range batch {
		base := i*w + len(r.Prompt)
		for j := range r.Completion {
			d := float64(lp[base+j])
			if r.OldLogps != nil {
				d -= r.OldLogps[j]
			}
			ratio := math.Exp(d)
			a := 0.0
			if r.Advantages != nil {
				a = r.Advantages[j]
			}
			if -a*math.Min(math.Max(ratio, 1-c.Cliprange), 1+c.Cliprange) > -a*ratio {
				pgClip++
			}
			approx += 0.5 * d * d
			entropy += float64(ent[base+j])
			ratioSum += ratio
			tokens++
		}
		if r.OldValues == nil || r.Returns == nil {
			continue
		}
		for t := 0; t < r.Steps(); t++ {
			v, old, ret := float64(val[base+t-1]), r.OldValues[t], r.Returns[t]
			vc := math.Min(math.Max(v, old-c.CliprangeValue), old+c.CliprangeValue)
			if (vc-ret)*(vc-ret) > (v-ret)*(v-ret) {
				vfClip++
			}
			steps++
		}
	}
	nt, ns := math.Max(1, float64(tokens)), math.Max(1, float64(steps))
	return engine.Metrics{
		{Name: engine.LossOutput, Value: float64(out[engine.LossOutput].F32[0])},
		{Name: "loss/policy_avg", Value: float64(out[PPOPolicyLossOutput].F32[0])},
		{Name: "loss/value_avg", Value: float64(out[PPOValueLossOutput].F32[0])},
		{Name: "policy/clipfrac_avg", Value: pgClip / nt},
		{Name: "val/clipfrac_avg", Value: vfClip / ns},
		{Name: "policy/approxkl_avg", Value: approx / nt},
		{Name: "policy/entropy_avg", Value: entropy / nt},
		{Name: "val/ratio", Value: ratioSum / nt},
	}, nil
}

// Samples implements Objective.
func (PPO) Samples() (first, second []PPORollout) {
	ro := func(p, c int, terminal bool) PPORollout {
		r := PPORollout{Prompt: make([]int64, p), Completion: make([]int64, c), Terminal: terminal}
		r.OldLogps, r.Advantages = make([]float64, c), make([]float64, c)
		r.OldValues, r.Returns = make([]float64, r.Steps()), make([]float64, r.Steps())
		return r
	}
	return []PPORollout{ro(2, 3, true), ro(3, 1, false)}, []PPORollout{ro(1, 5, false), ro(4, 2, true), ro(2, 2, true)}
}

// Fingerprint implements Objective: the rollout's ids and score.
func (PPO) Fingerprint(h hash.Hash, r PPORollout) {
	fingerprintSequence(h, r.Sequence())
	binary.Write(h, binary.LittleEndian, r.Score)
}

// ppoPermutation is the rollout order of PPO epoch k of a round (TRL's
// np.random.permutation), seeded so that a resumed run takes the same mini-batches.
func PpoPermutation(n int, seed int64, round, epoch int) []int {
	r := rand.New(rand.NewSource(int64(generate.Splitmix64(uint64(seed)*0x9e3779b97f4a7c15 ^ generate.Splitmix64(uint64(round)<<16|uint64(epoch)+7)))))
	return r.Perm(n)
}

// NewPPOEngine builds the PPO engine on the causal LM base (loaded from path): the policy
// with a value head (AddValueHead with valueInit, or a seeded fresh head) trained by the
// PPO objective. LoRA is refused: the value head would not train.
func NewPPOEngine(path string, base *onnx.Model, cfg engine.TrainConfig, c PPOConfig, valueInit []float32) (*engine.Engine[PPORollout], error) {
	if cfg.Adapter != nil {
		return nil, fmt.Errorf("PPO does not train adapters yet (the value head would stay at its initial weights)")
	}
	mv, err := lm.AddValueHead(base, valueInit, cfg.Seed)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return engine.NewEngine(path, mv, cfg, PPO{Config: c})
}

// PolicyModel returns the engine's current policy: its model without the value head.
func PolicyModel(e *engine.Engine[PPORollout]) (*onnx.Model, error) {
	m, err := e.Model()
	if err != nil {
		return nil, err
	}
	lm.RemoveValueHead(m)
	return m, nil
}
