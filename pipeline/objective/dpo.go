package objective

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash"
	"math"

	"ortalign/onnx"
	"ortalign/onnx/ort"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/lm"
	"ortalign/pipeline/progress"
	"ortalign/pipeline/score"
)

// DPO is the preference-optimisation objective (DPO, IPO and TRL's other loss types):
// items are encoded pairs that carry their reference log-probs.
type DPO struct {
	Loss LossConfig
}

// Name implements Objective.
func (DPO) Name() string { return "dpo" }

// Settings implements Objective: the loss configuration.
func (d DPO) Settings() map[string]string {
	b, _ := json.Marshal(d.Loss)
	return map[string]string{"loss": string(b)}
}

// AppendLoss implements Objective with the preference-loss head.
func (d DPO) AppendLoss(m *onnx.Model) error {
	return AppendPreferenceLossWith(m, d.Loss, lm.HeadOptions{CompletionLogits: true})
}

// Outputs implements Objective: the policy's summed completion log-probs per row, and
// its completion logits (for TRL's logits/chosen and logits/rejected).
func (DPO) Outputs() []string { return []string{lm.SequenceLogpsOutput, lm.CompletionLogitsOutput} }

// Weight implements Objective: the loss is a mean over pairs.
func (DPO) Weight(batch []encode.EncodedPair) float64 { return float64(len(batch)) }

// Feeds implements Objective: chosen rows then rejected rows, and the reference
// log-probs, which every pair must carry.
func (d DPO) Feeds(in engine.ModelInputs, pairs []encode.EncodedPair) (map[string]*ort.Tensor, error) {
	feeds := in.Rows(encode.PairRows(pairs))
	n := int64(len(pairs))
	rc, rr := make([]float32, n), make([]float32, n)
	for i, p := range pairs {
		if p.RefChosenLogps == nil || p.RefRejectedLogps == nil {
			return nil, fmt.Errorf("pair of row %d has no reference log-probs", p.Row)
		}
		rc[i], rr[i] = float32(*p.RefChosenLogps), float32(*p.RefRejectedLogps)
	}
	feeds[RefChosenInput] = ort.MustFloatTensor([]int64{n}, rc)
	feeds[RefRejectedInput] = ort.MustFloatTensor([]int64{n}, rr)
	return feeds, nil
}

// Metrics implements Objective with TRL's DPO metric names.
func (d DPO) Metrics(pairs []encode.EncodedPair, out map[string]*ort.Tensor) (engine.Metrics, error) {
	lp := out[lm.SequenceLogpsOutput].F32
	n := len(pairs)
	if len(lp) != 2*n {
		return nil, fmt.Errorf("%s has %d values for %d pairs", lm.SequenceLogpsOutput, len(lp), n)
	}
	cl := out[lm.CompletionLogitsOutput].F32
	if len(cl) != 2*n {
		return nil, fmt.Errorf("%s has %d values for %d pairs", lm.CompletionLogitsOutput, len(cl), n)
	}
	var rewC, rewR, logC, logR, acc float64
	// TRL's logits/*: the mean of every logit that predicts a completion token, the
	// batch's chosen (rejected) tokens pooled.
	var logitsC, logitsR, tokC, tokR float64
	beta := d.Loss.Beta
	for i, p := range pairs {
		logitsC += float64(cl[i])
		logitsR += float64(cl[n+i])
		tokC += float64(p.Chosen.CompletionTokens())
		tokR += float64(p.Rejected.CompletionTokens())
		pc, pr := float64(lp[i]), float64(lp[n+i])
		rc, rr := beta*(pc-*p.RefChosenLogps), beta*(pr-*p.RefRejectedLogps)
		rewC += rc
		rewR += rr
		logC += pc
		logR += pr
		if rc > rr {
			acc++
		}
	}
	for _, v := range []*float64{&rewC, &rewR, &logC, &logR, &acc} {
		*v /= float64(n)
	}
	return engine.Metrics{
		{Name: engine.LossOutput, Value: float64(out[engine.LossOutput].F32[0])},
		{Name: "rewards/chosen", Value: rewC},
		{Name: "rewards/rejected", Value: rewR},
		{Name: "rewards/accuracies", Value: acc},
		{Name: "rewards/margins", Value: rewC - rewR},
		{Name: "logps/chosen", Value: logC},
		{Name: "logps/rejected", Value: logR},
		{Name: "logits/chosen", Value: logitsC / max(tokC, 1), Over: tokC},
		{Name: "logits/rejected", Value: logitsR / max(tokR, 1), Over: tokR},
	}, nil
}

// Samples implements Objective: pairs of token 0 of a few lengths.
func (DPO) Samples() (first, second []encode.EncodedPair) {
	zero := 0.0
	pair := func(c, cs, r, rs int) encode.EncodedPair {
		return encode.EncodedPair{
			Chosen:   lm.Sequence{IDs: make([]int64, c), CompletionStart: cs},
			Rejected: lm.Sequence{IDs: make([]int64, r), CompletionStart: rs},
			// The same zero for every pair: samples only teach shapes.
			RefChosenLogps: &zero, RefRejectedLogps: &zero,
		}
	}
	first = []encode.EncodedPair{pair(5, 2, 4, 2), pair(3, 1, 6, 3)}
	second = []encode.EncodedPair{pair(7, 1, 2, 1), pair(7, 1, 2, 1), pair(7, 1, 2, 1)}
	return first, second
}

// Fingerprint implements Objective: the pair's ids, completion starts and reference.
func (DPO) Fingerprint(h hash.Hash, p encode.EncodedPair) {
	fingerprintSequence(h, p.Chosen)
	fingerprintSequence(h, p.Rejected)
	for _, r := range []*float64{p.RefChosenLogps, p.RefRejectedLogps} {
		v := math.NaN()
		if r != nil {
			v = *r
		}
		binary.Write(h, binary.LittleEndian, v)
	}
}

// HasReference implements engine.Referenced: the pair carries both reference log-probs.
func (DPO) HasReference(p encode.EncodedPair) bool {
	return p.RefChosenLogps != nil && p.RefRejectedLogps != nil
}

// ForReference implements engine.Referenced: the pairs with reference log-probs 0, which
// the policy's log-probs do not depend on.
func (DPO) ForReference(pairs []encode.EncodedPair) []encode.EncodedPair {
	zeros := make([]float64, len(pairs))
	return WithReference(pairs, zeros, zeros)
}

// WithReference implements engine.Referenced: the pairs carrying the forward's sequence
// log-probs (chosen rows, then rejected), the log-probs the loss compares (LD-weighted
// with LDAlpha, so that LD-DPO's reference comes out right).
func (DPO) WithReference(pairs []encode.EncodedPair, out map[string]*ort.Tensor) ([]encode.EncodedPair, error) {
	lp := out[lm.SequenceLogpsOutput]
	n := len(pairs)
	if lp == nil || len(lp.F32) != 2*n {
		return nil, fmt.Errorf("reference log-probs: the forward gave no %d values of %s for %d pairs", 2*n, lm.SequenceLogpsOutput, n)
	}
	refC, refR := make([]float64, n), make([]float64, n)
	for i := range n {
		refC[i], refR[i] = float64(lp.F32[i]), float64(lp.F32[n+i])
	}
	return WithReference(pairs, refC, refR), nil
}

// WithReference returns a copy of pairs carrying the reference log-probs refC, refR.
func WithReference(pairs []encode.EncodedPair, refC, refR []float64) []encode.EncodedPair {
	out := make([]encode.EncodedPair, len(pairs))
	for i, p := range pairs {
		c, r := refC[i], refR[i]
		p.RefChosenLogps, p.RefRejectedLogps = &c, &r
		out[i] = p
	}
	return out
}

// ReferenceConfig says how AttachReference finds reference log-probs.
type ReferenceConfig struct {
	// Batches are the batches the pairs' values are computed in (lists of indexes):
	// Engine.TrainingBatches for training pairs, engine.ConsecutiveBatches for held-out
	// ones, as training computes them without Precompute, so the values are the same.
	Batches  [][]int
	Loss     LossConfig         // reference-free losses take the references as 0
	Progress *progress.Progress // advanced per pair; started and ended here
	// Precompute computes every pair's reference log-probs here, before training (TRL's
	// precompute_ref_log_probs). Without it, pairs that need computed ones come back
	// without any, and training computes them as its steps come (engine.Referenced;
	// give Reference to RunTrainingWithReference).
	Precompute bool
}

// Where reference log-probs come from (AttachReference).
const (
	RefFromNothing = "none (reference-free)"
	RefFromData    = "the dataset's ref_chosen_logps/ref_rejected_logps"
	RefFromModel   = "the reference model"
	RefFromPolicy  = "the starting model"
)

// AttachReference returns pairs ready for training with the reference log-probs they
// need, and where those come from: zeros for a reference-free loss; the dataset's
// ref_*_logps columns when every pair has them and no reference model is given; else the
// reference model ref when given, or the engine's own forward graph with its starting
// weights — the policy before training is the reference, so no second copy of the model
// is loaded. Those computed ones are computed here with c.Precompute (call it before
// training, before a resume restores trained weights: RunTraining does that); without it
// the pairs come back carrying none, for training to compute as its steps come.
func AttachReference(ctx context.Context, e *engine.Engine[encode.EncodedPair], ref *lm.LogProbModel, pairs []encode.EncodedPair, c ReferenceConfig) ([]encode.EncodedPair, string, error) {
	if c.Loss.ReferenceFree {
		zeros := make([]float64, len(pairs))
		return WithReference(pairs, zeros, zeros), RefFromNothing, nil
	}
	if ref == nil {
		fromData := len(pairs) > 0
		for _, p := range pairs {
			fromData = fromData && DPO{}.HasReference(p)
		}
		if fromData {
			return pairs, RefFromData, nil
		}
		return computeReference(ctx, e.StartingReference(), pairs, c, RefFromPolicy)
	}
	if c.Loss.LDAlpha != nil {
		return nil, "", fmt.Errorf("LD-DPO with a separate reference model needs its per-token log-probs, which reference scoring does not compute; use the starting model as the reference or give LD-weighted ref_chosen_logps/ref_rejected_logps columns")
	}
	return computeReference(ctx, ModelReference(ref), pairs, c, RefFromModel)
}

// computeReference is AttachReference's pairs with their values from ref, with
// c.Precompute; else carrying none.
func computeReference(ctx context.Context, ref engine.Reference[encode.EncodedPair], pairs []encode.EncodedPair, c ReferenceConfig, from string) ([]encode.EncodedPair, string, error) {
	if !c.Precompute {
		return withoutReference(pairs), from, nil
	}
	out, err := engine.ComputeReference(ctx, ref, pairs, c.Batches, c.Progress)
	if err != nil {
		return nil, "", fmt.Errorf("reference log-probs: %w", err)
	}
	return out, from, nil
}

// withoutReference returns a copy of pairs carrying no reference log-probs: a dataset's
// own are used only when every pair has them.
func withoutReference(pairs []encode.EncodedPair) []encode.EncodedPair {
	out := make([]encode.EncodedPair, len(pairs))
	for i, p := range pairs {
		p.RefChosenLogps, p.RefRejectedLogps = nil, nil
		out[i] = p
	}
	return out
}

// ModelReference is the engine.Reference of a separate reference model ref: each batch
// scored as one forward pass.
func ModelReference(ref *lm.LogProbModel) engine.Reference[encode.EncodedPair] {
	return modelReference{ref: ref}
}

// modelReference is ModelReference.
type modelReference struct{ ref *lm.LogProbModel }

func (m modelReference) Compute(ctx context.Context, batches [][]encode.EncodedPair, prog *progress.Progress) ([][]encode.EncodedPair, error) {
	out := make([][]encode.EncodedPair, len(batches))
	for k, b := range batches {
		refC, refR, err := score.ReferenceLogps(ctx, m.ref, b, score.ScoreConfig{BatchSize: len(b)})
		if err != nil {
			return nil, err
		}
		out[k] = WithReference(b, refC, refR)
		prog.Add(len(b))
	}
	return out, nil
}

// ReferenceFromPolicy returns pairs carrying reference log-probs computed by the engine's
// forward graph with its starting weights, in the batches training computes them in
// (Engine.TrainingBatches): before training, the starting model is the reference, so no
// second copy of the model is loaded.
func ReferenceFromPolicy(ctx context.Context, e *engine.Engine[encode.EncodedPair], pairs []encode.EncodedPair, prog *progress.Progress) ([]encode.EncodedPair, error) {
	return engine.ComputeReference(ctx, e.StartingReference(), pairs, e.TrainingBatches(len(pairs)), prog)
}
