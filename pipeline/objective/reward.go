package objective

import (
	"encoding/binary"
	"fmt"
	"hash"
	"math"
	"strconv"
	"strings"

	"ortalign/onnx"
	"ortalign/onnx/ort"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/lm"
)

// MarginInput is the reward loss's float32 [pairs] input: each pair's margin (0 where
// the data gives none).
const MarginInput = "margin"

// Reward trains a reward model on preference pairs with the Bradley–Terry loss of TRL's
// RewardTrainer (v1.x):
//
//	loss = mean over pairs of −logσ(r_c − r_r − margin)
//	       + center_rewards_coefficient · mean((r_c + r_r)²)
//
// where r_c, r_r are the rewards of prompt+chosen and prompt+rejected, and margin is the
// pair's margin column (0 when absent). The engine's model must be a reward graph
// (NewRewardGraph): its rewards output is what the loss reads, and what Engine.Export
// writes is the trained reward model.
type Reward struct {
	// CenterRewardsCoefficient weighs the term that keeps rewards centred on 0 (TRL's
	// center_rewards_coefficient; 0 disables it, as TRL's None).
	CenterRewardsCoefficient float64
}

// Name implements Objective.
func (Reward) Name() string { return "reward" }

// Settings implements Objective.
func (r Reward) Settings() map[string]string {
	return map[string]string{"center_rewards_coefficient": strconv.FormatFloat(r.CenterRewardsCoefficient, 'g', -1, 64)}
}

// AppendLoss implements Objective: rewards holds the chosen rows then the rejected rows.
func (r Reward) AppendLoss(m *onnx.Model) error {
	g := m.Graph()
	if t, dims, ok := onnx.TensorType(onnx.Output(g, lm.RewardOutput)); !ok || t != onnx.Float || len(dims) != 1 {
		return fmt.Errorf("the model has no float [batch] %q output (outputs: %s): make it a reward model with NewRewardGraph first",
			lm.RewardOutput, strings.Join(lm.ValueNames(g.GetOutput()), ", "))
	}
	if err := onnx.AddInput(g, MarginInput, onnx.Float, []onnx.Dim{onnx.DimParam("pairs")}); err != nil {
		return err
	}
	b := onnx.NewBuilder(g, m.Opset(""), "ortalign_reward_loss")
	halves := b.Reshape(lm.RewardOutput, b.ConstInt64s([]int64{2, -1}))
	rc := b.Gather(halves, b.ConstScalarInt64(0), 0)
	rr := b.Gather(halves, b.ConstScalarInt64(1), 0)
	// −logσ(z) = softplus(−z)
	z := b.Sub(b.Sub(rc, rr), MarginInput)
	loss := b.ReduceMean(softplus(b, b.Neg(z)), nil, false)
	if c := r.CenterRewardsCoefficient; c != 0 {
		s := b.Add(rc, rr)
		loss = b.Add(loss, b.Mul(b.ConstFloat(float32(c)), b.ReduceMean(b.Mul(s, s), nil, false)))
	}
	lm.AddIdentity(g, loss, engine.LossOutput)
	return onnx.AddOutput(g, engine.LossOutput, onnx.Float, []onnx.Dim{})
}

// Outputs implements Objective: the rewards of the chosen rows then the rejected rows.
func (Reward) Outputs() []string { return []string{lm.RewardOutput} }

// Feeds implements Objective: input_ids and attention_mask of the chosen rows then the
// rejected rows (a reward graph takes nothing else), and the margins.
func (Reward) Feeds(in engine.ModelInputs, pairs []encode.EncodedPair) (map[string]*ort.Tensor, error) {
	b := in.Batch(encode.PairRows(pairs))
	margin := make([]float32, len(pairs))
	for i, p := range pairs {
		if p.Margin != nil {
			margin[i] = float32(*p.Margin)
		}
	}
	return map[string]*ort.Tensor{
		lm.InputIDs: b.IDs, lm.AttentionMask: b.AttentionMask,
		MarginInput: {Shape: []int64{int64(len(pairs))}, F32: margin},
	}, nil
}

// Weight implements Objective: the loss is a mean over pairs.
func (Reward) Weight(pairs []encode.EncodedPair) float64 { return float64(len(pairs)) }

// Metrics implements Objective with TRL's RewardTrainer names: loss, accuracy (the
// fraction of pairs with r_c > r_r), margin (mean r_c − r_r), min_reward, mean_reward,
// max_reward (over all rewards of the micro-batch; with accumulation the step logs their
// mean over micro-batches, as TRL averages what each micro-batch appended) and
// num_tokens (chosen and rejected tokens, summed over the run).
func (Reward) Metrics(pairs []encode.EncodedPair, out map[string]*ort.Tensor) (engine.Metrics, error) {
	rw := out[lm.RewardOutput].F32
	n := len(pairs)
	if len(rw) != 2*n {
		return nil, fmt.Errorf("%s has %d values for %d pairs", lm.RewardOutput, len(rw), n)
	}
	var acc, margin, sum float64
	lo, hi := math.Inf(1), math.Inf(-1)
	tokens := 0
	for i, p := range pairs {
		c, r := float64(rw[i]), float64(rw[n+i])
		if c > r {
			acc++
		}
		margin += c - r
		tokens += len(p.Chosen.IDs) + len(p.Rejected.IDs)
	}
	for _, v := range rw {
		x := float64(v)
		sum += x
		lo, hi = math.Min(lo, x), math.Max(hi, x)
	}
	return engine.Metrics{
		{Name: engine.LossOutput, Value: float64(out[engine.LossOutput].F32[0])},
		{Name: "accuracy", Value: acc / float64(n)},
		{Name: "margin", Value: margin / float64(n)},
		{Name: "min_reward", Value: lo},
		{Name: "mean_reward", Value: sum / float64(2*n)},
		{Name: "max_reward", Value: hi},
		{Name: "num_tokens", Value: float64(tokens), Sum: true},
	}, nil
}

// Samples implements Objective: pairs of token 0 of a few lengths.
func (Reward) Samples() (first, second []encode.EncodedPair) {
	pair := func(c, r int) encode.EncodedPair {
		return encode.EncodedPair{Chosen: lm.Sequence{IDs: make([]int64, c), CompletionStart: 1}, Rejected: lm.Sequence{IDs: make([]int64, r), CompletionStart: 1}}
	}
	first = []encode.EncodedPair{pair(5, 4), pair(3, 6)}
	second = []encode.EncodedPair{pair(7, 2), pair(7, 2), pair(7, 2)}
	return first, second
}

// Fingerprint implements Objective: the pair's ids and margin.
func (Reward) Fingerprint(h hash.Hash, p encode.EncodedPair) {
	fingerprintSequence(h, p.Chosen)
	fingerprintSequence(h, p.Rejected)
	v := math.NaN()
	if p.Margin != nil {
		v = *p.Margin
	}
	binary.Write(h, binary.LittleEndian, v)
}
