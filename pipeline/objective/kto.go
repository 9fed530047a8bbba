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
)

// KTO's loss types (TRL's KTOConfig.loss_type).
const (
	// KTOLossKTO is the KTO paper's loss (Eq. 7), with the KL reference point estimated
	// from mismatched prompt–completion pairs of the micro-batch.
	KTOLossKTO = "kto"
	// KTOLossAPOZeroUnpaired is the unpaired APO-zero loss: no KL estimate.
	KTOLossAPOZeroUnpaired = "apo_zero_unpaired"
)

// KTOLossTypes lists KTO's loss types, in TRL's order.
var KTOLossTypes = []string{KTOLossKTO, KTOLossAPOZeroUnpaired}

// Names of the values the KTO head adds.
const (
	// KTOLabelInput is float32 [n]: 1 where a row's completion is desirable, 0 where not.
	KTOLabelInput = "label"
	// KTORefInput and KTORefKLInput are float32 [n]: the reference log-probs of the rows
	// and of their KL sequences (TRL's reference_logps and reference_KL_logps); the second
	// only with the kto loss.
	KTORefInput   = "reference_logps"
	KTORefKLInput = "reference_KL_logps"
	// KTOKLOutput is the scalar KL estimate the loss uses: the mean over the micro-batch
	// of the KL sequences' log-ratios, clamped at 0. It is a constant to the backward pass
	// (TRL computes the policy's KL log-probs under torch.no_grad and detaches the mean).
	KTOKLOutput = "ortalign_kto/kl"
)

// Defaults of KTOConfig (TRL's KTOConfig).
const (
	DefaultKTOBeta   = 0.1
	DefaultKTOWeight = 1.0
)

// KTOConfig is KTO's loss configuration, recorded in checkpoints (JSON).
type KTOConfig struct {
	LossType          string  `json:"loss_type"` // KTOLossKTO ("" too) or KTOLossAPOZeroUnpaired
	Beta              float64 `json:"beta"`
	DesirableWeight   float64 `json:"desirable_weight"`
	UndesirableWeight float64 `json:"undesirable_weight"`
}

// UsesKL reports whether the loss needs the KL estimate (and so KL sequences and their
// reference log-probs).
func (c KTOConfig) UsesKL() bool { return c.LossType != KTOLossAPOZeroUnpaired }

// Validate reports an unknown loss type, a β that is not positive, a negative weight.
func (c KTOConfig) Validate() error {
	switch c.LossType {
	case "", KTOLossKTO, KTOLossAPOZeroUnpaired:
	default:
		return fmt.Errorf("unknown KTO loss %q (want %s or %s)", c.LossType, KTOLossKTO, KTOLossAPOZeroUnpaired)
	}
	if !(c.Beta > 0) || math.IsInf(c.Beta, 0) {
		return fmt.Errorf("beta must be positive, got %g", c.Beta)
	}
	for _, w := range []float64{c.DesirableWeight, c.UndesirableWeight} {
		if !(w >= 0) || math.IsInf(w, 0) {
			return fmt.Errorf("desirable and undesirable weights must be finite and >= 0, got %g", w)
		}
	}
	return nil
}

// KTO is Kahneman–Tversky optimisation as TRL's KTOTrainer: items are unpaired rows (a
// completion and whether it is desirable) carrying their KL sequences and reference
// log-probs (KTOReference). With lr = log π(y|x) − log π_ref(y|x) per row and z_0 the KL
// estimate, max(0, mean over the micro-batch of the KL sequences' log-ratios) without
// gradient, the loss is the mean over the micro-batch's rows of
//
//	kto:               desirable: w_d·(1 − σ(β(lr − z_0)))   undesirable: w_u·(1 − σ(β(z_0 − lr)))
//	apo_zero_unpaired: desirable: w_d·(1 − σ(β·lr))          undesirable: w_u·σ(β·lr)
//
// w_d, w_u the desirable and undesirable weights. A micro-batch's rows are fed as the
// rows' sequences then (kto) their KL sequences, whose log-probs are computed in the same
// forward pass and kept out of the backward pass.
type KTO struct {
	Config KTOConfig
}

// Name implements Objective.
func (KTO) Name() string { return "kto" }

// Settings implements Objective: the loss configuration.
func (k KTO) Settings() map[string]string {
	b, _ := json.Marshal(k.Config)
	return map[string]string{"loss": string(b)}
}

// AppendLoss implements Objective with the KTO head: inputs label, reference_logps (and
// with the kto loss reference_KL_logps), all [n], for n rows (2n model rows with the kto
// loss: the rows, then their KL sequences); outputs the loss, sequence_logps and, with
// the kto loss, KTOKLOutput.
func (k KTO) AppendLoss(m *onnx.Model) error {
	c := k.Config
	if err := c.Validate(); err != nil {
		return err
	}
	head, err := lm.AppendLogProbHeadWith(m, lm.HeadOptions{})
	if err != nil {
		return err
	}
	g := m.Graph()
	onnx.RemoveOutput(g, head.VocabSize)
	inputs := []string{KTOLabelInput, KTORefInput}
	if c.UsesKL() {
		inputs = append(inputs, KTORefKLInput)
	}
	for _, name := range inputs {
		if err := onnx.AddInput(g, name, onnx.Float, []onnx.Dim{onnx.DimParam("rows")}); err != nil {
			return err
		}
	}
	b := onnx.NewBuilder(g, m.Opset(""), "ortalign_kto")
	l := &lossBuilder{b: b, n: b.Shape(KTORefInput)}
	logps := head.SequenceLogps
	beta := b.ConstFloat(float32(c.Beta))
	var desirable, undesirable string
	if c.UsesKL() {
		var klLogps string
		logps, klLogps = l.halves(logps)
		kl := b.Max(b.ReduceMean(b.Sub(klLogps, KTORefKLInput), []int64{0}, false), b.ConstFloat(0))
		lm.AddIdentity(g, kl, KTOKLOutput)
		markStopGradient(m, KTOKLOutput)
		if err := onnx.AddOutput(g, KTOKLOutput, onnx.Float, []onnx.Dim{}); err != nil {
			return err
		}
		lr := b.Sub(logps, KTORefInput)
		// 1 − σ(x) = σ(−x)
		desirable = b.Sigmoid(b.Neg(b.Mul(beta, b.Sub(lr, KTOKLOutput))))
		undesirable = b.Sigmoid(b.Neg(b.Mul(beta, b.Sub(KTOKLOutput, lr))))
	} else {
		z := b.Mul(beta, b.Sub(logps, KTORefInput))
		desirable, undesirable = b.Sigmoid(b.Neg(z)), b.Sigmoid(z)
	}
	wd, wu := b.ConstFloat(float32(c.DesirableWeight)), b.ConstFloat(float32(c.UndesirableWeight))
	perRow := b.Add(b.Mul(b.Mul(wd, KTOLabelInput), desirable), b.Mul(b.Mul(wu, b.Sub(b.ConstFloat(1), KTOLabelInput)), undesirable))
	lm.AddIdentity(g, b.ReduceMean(perRow, []int64{0}, false), engine.LossOutput)
	return onnx.AddOutput(g, engine.LossOutput, onnx.Float, []onnx.Dim{})
}

// Outputs implements Objective: the rows' summed completion log-probs (and their KL
// sequences' after them), and with the kto loss the KL estimate.
func (k KTO) Outputs() []string {
	if k.Config.UsesKL() {
		return []string{lm.SequenceLogpsOutput, KTOKLOutput}
	}
	return []string{lm.SequenceLogpsOutput}
}

// Weight implements Objective: the loss is a mean over rows.
func (KTO) Weight(batch []encode.EncodedUnpaired) float64 { return float64(len(batch)) }

// Feeds implements Objective: the rows, then (kto) their KL sequences; labels and
// reference log-probs, which every row must carry.
func (k KTO) Feeds(in engine.ModelInputs, batch []encode.EncodedUnpaired) (map[string]*ort.Tensor, error) {
	n := len(batch)
	kl := k.Config.UsesKL()
	rows := make([]lm.Sequence, 0, 2*n)
	label, ref, refKL := make([]float32, n), make([]float32, n), make([]float32, n)
	for i, r := range batch {
		if r.RefLogps == nil || kl && r.RefKLLogps == nil {
			return nil, fmt.Errorf("row %d has no reference log-probs", r.Row)
		}
		if kl && len(r.KL.IDs) == 0 {
			return nil, fmt.Errorf("row %d has no KL sequence", r.Row)
		}
		rows = append(rows, r.Seq)
		if r.Desirable {
			label[i] = 1
		}
		ref[i] = float32(*r.RefLogps)
		if kl {
			refKL[i] = float32(*r.RefKLLogps)
		}
	}
	if kl {
		for _, r := range batch {
			rows = append(rows, r.KL)
		}
	}
	feeds := in.Rows(rows)
	shape := []int64{int64(n)}
	feeds[KTOLabelInput] = ort.MustFloatTensor(shape, label)
	feeds[KTORefInput] = ort.MustFloatTensor(shape, ref)
	if kl {
		feeds[KTORefKLInput] = ort.MustFloatTensor(shape, refKL)
	}
	return feeds, nil
}

// Metrics implements Objective with the names TRL's KTOTrainer stores per batch: loss,
// kl (0 for apo_zero_unpaired), and for desirable (chosen) and undesirable (rejected)
// rows the sums of their rewards β·(log π − log π_ref) and log-probs and their counts.
// TRL logs rewards/chosen = rewards/chosen_sum / count/chosen (and so on) over each
// logging interval; here every line is one optimizer step, whose micro-batches' values
// are combined in proportion to their rows (exact with one micro-batch a step).
func (k KTO) Metrics(batch []encode.EncodedUnpaired, out map[string]*ort.Tensor) (engine.Metrics, error) {
	lp := out[lm.SequenceLogpsOutput].F32
	n := len(batch)
	want := n
	if k.Config.UsesKL() {
		want = 2 * n
	}
	if len(lp) != want {
		return nil, fmt.Errorf("%s has %d values for %d rows, want %d", lm.SequenceLogpsOutput, len(lp), n, want)
	}
	kl := 0.0
	if t := out[KTOKLOutput]; t != nil {
		kl = float64(t.F32[0])
	}
	var sums [2]struct{ rewards, logps, count float64 } // undesirable, desirable
	for i, r := range batch {
		s := &sums[0]
		if r.Desirable {
			s = &sums[1]
		}
		p := float64(lp[i])
		s.rewards += k.Config.Beta * (p - *r.RefLogps)
		s.logps += p
		s.count++
	}
	c, r := sums[1], sums[0]
	return engine.Metrics{
		{Name: engine.LossOutput, Value: float64(out[engine.LossOutput].F32[0])},
		{Name: "kl", Value: kl},
		{Name: "rewards/chosen_sum", Value: c.rewards},
		{Name: "logps/chosen_sum", Value: c.logps},
		{Name: "count/chosen", Value: c.count},
		{Name: "rewards/rejected_sum", Value: r.rewards},
		{Name: "logps/rejected_sum", Value: r.logps},
		{Name: "count/rejected", Value: r.count},
	}, nil
}

// Samples implements Objective: rows of token 0 of a few lengths, both labels.
func (KTO) Samples() (first, second []encode.EncodedUnpaired) {
	zero := 0.0
	row := func(n, start int, desirable bool, kn, kstart int) encode.EncodedUnpaired {
		return encode.EncodedUnpaired{
			Seq:       lm.Sequence{IDs: make([]int64, n), CompletionStart: start},
			KL:        lm.Sequence{IDs: make([]int64, kn), CompletionStart: kstart},
			Desirable: desirable,
			// The same zero for every row: samples only teach shapes.
			RefLogps: &zero, RefKLLogps: &zero,
		}
	}
	first = []encode.EncodedUnpaired{row(5, 2, true, 4, 2), row(4, 2, false, 5, 2)}
	second = []encode.EncodedUnpaired{row(7, 1, true, 3, 1), row(3, 1, false, 7, 1), row(2, 1, true, 2, 1)}
	return first, second
}

// Fingerprint implements Objective: the row's ids, KL ids, label and reference.
func (KTO) Fingerprint(h hash.Hash, r encode.EncodedUnpaired) {
	fingerprintSequence(h, r.Seq)
	fingerprintSequence(h, r.KL)
	ref := []float64{math.NaN(), math.NaN()} // absent
	if r.RefLogps != nil {
		ref[0] = *r.RefLogps
	}
	if r.RefKLLogps != nil {
		ref[1] = *r.RefKLLogps
	}
	binary.Write(h, binary.LittleEndian, r.Desirable)
	binary.Write(h, binary.LittleEndian, ref)
}

// HasReference implements engine.Referenced: the row carries the reference log-probs of
// its sequence and, with the kto loss, of its KL sequence.
func (k KTO) HasReference(r encode.EncodedUnpaired) bool {
	return r.RefLogps != nil && (!k.Config.UsesKL() || r.RefKLLogps != nil)
}

// ForReference implements engine.Referenced: the rows with reference log-probs 0, which
// the sequence log-probs do not depend on.
func (KTO) ForReference(rows []encode.EncodedUnpaired) []encode.EncodedUnpaired {
	zero := 0.0
	out := make([]encode.EncodedUnpaired, len(rows))
	for i, r := range rows {
		r.RefLogps, r.RefKLLogps = &zero, &zero
		out[i] = r
	}
	return out
}

// WithReference implements engine.Referenced: the rows carrying the forward's sequence
// log-probs as their reference: the rows', then (kto) their KL sequences'.
func (k KTO) WithReference(rows []encode.EncodedUnpaired, out map[string]*ort.Tensor) ([]encode.EncodedUnpaired, error) {
	t := out[lm.SequenceLogpsOutput]
	if t == nil {
		return nil, fmt.Errorf("no %s output", lm.SequenceLogpsOutput)
	}
	lp := make([]float64, len(t.F32))
	for i, v := range t.F32 {
		lp[i] = float64(v)
	}
	return ktoWithReference(rows, lp, k.Config.UsesKL())
}

// ktoWithReference returns a copy of rows carrying the log-probs lp: the rows', then
// (kl) their KL sequences'.
func ktoWithReference(rows []encode.EncodedUnpaired, lp []float64, kl bool) ([]encode.EncodedUnpaired, error) {
	n := len(rows)
	want := n
	if kl {
		want = 2 * n
	}
	if len(lp) != want {
		return nil, fmt.Errorf("%d reference log-probs for %d rows, want %d", len(lp), n, want)
	}
	out := make([]encode.EncodedUnpaired, n)
	for i, r := range rows {
		v := lp[i]
		r.RefLogps, r.RefKLLogps = &v, nil
		if kl {
			w := lp[n+i]
			r.RefKLLogps = &w
		}
		out[i] = r
	}
	return out, nil
}

// ktoSequences returns the sequences of a batch of rows as a model scores them: the
// rows', then (kl) their KL sequences.
func ktoSequences(rows []encode.EncodedUnpaired, kl bool) []lm.Sequence {
	seqs := make([]lm.Sequence, 0, 2*len(rows))
	for _, r := range rows {
		seqs = append(seqs, r.Seq)
	}
	if kl {
		for _, r := range rows {
			seqs = append(seqs, r.KL)
		}
	}
	return seqs
}

// KTOWithoutReference returns a copy of rows carrying no reference log-probs, for
// training to compute as its steps come (engine.Referenced).
func KTOWithoutReference(rows []encode.EncodedUnpaired) []encode.EncodedUnpaired {
	out := make([]encode.EncodedUnpaired, len(rows))
	for i, r := range rows {
		r.RefLogps, r.RefKLLogps = nil, nil
		out[i] = r
	}
	return out
}

// KTOModelReference is the engine.Reference of a separate reference model ref: each batch
// scored as one forward pass, with its KL sequences when kl.
func KTOModelReference(ref *lm.LogProbModel, kl bool) engine.Reference[encode.EncodedUnpaired] {
	return ktoModelReference{ref: ref, kl: kl}
}

// ktoModelReference is KTOModelReference.
type ktoModelReference struct {
	ref *lm.LogProbModel
	kl  bool
}

func (m ktoModelReference) Compute(ctx context.Context, batches [][]encode.EncodedUnpaired, prog *progress.Progress) ([][]encode.EncodedUnpaired, error) {
	out := make([][]encode.EncodedUnpaired, len(batches))
	for k, b := range batches {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		lp, err := m.ref.SequenceLogps(ktoSequences(b, m.kl))
		if err != nil {
			return nil, fmt.Errorf("reference log-probs: %w", err)
		}
		if out[k], err = ktoWithReference(b, lp, m.kl); err != nil {
			return nil, fmt.Errorf("reference log-probs: %w", err)
		}
		prog.Add(len(b))
	}
	return out, nil
}

// KTOReference returns rows carrying the reference log-probs of their sequences and, with
// kl, of their KL sequences, and where they came from: the reference model ref when
// given, else the engine's own forward graph with its starting weights — before training
// the policy is the reference (with LoRA the adapters are still zero), so no second copy
// of the model is loaded. It computes them all up front (TRL's precompute_ref_log_probs)
// in batches: Engine.TrainingBatches for training rows, engine.ConsecutiveBatches for
// held-out ones, the batches training computes them in as its steps come, so the values
// are the same. Call it before training (a resume restores trained weights after).
func KTOReference(ctx context.Context, e *engine.Engine[encode.EncodedUnpaired], ref *lm.LogProbModel, rows []encode.EncodedUnpaired, kl bool, batches [][]int, prog *progress.Progress) ([]encode.EncodedUnpaired, string, error) {
	var r engine.Reference[encode.EncodedUnpaired]
	from := RefFromModel
	if ref != nil {
		r = KTOModelReference(ref, kl)
	} else {
		r, from = e.StartingReference(), RefFromPolicy
	}
	out, err := engine.ComputeReference(ctx, r, rows, batches, prog)
	if err != nil {
		return nil, "", fmt.Errorf("reference log-probs: %w", err)
	}
	return out, from, nil
}

// KTOWeightAdvice is TRL's advice when the desirable and undesirable rows are not equal
// in number and neither weight lies in the range Eq. 8 of the KTO paper suggests (the
// weighted counts in a ratio from 1:1 to 4:3); "" when the weights are fine.
func KTOWeightAdvice(desirable, undesirable int, c KTOConfig) string {
	nd, nu := float64(max(desirable, 1)), float64(max(undesirable, 1))
	if nd == nu {
		return ""
	}
	round := func(x float64) float64 { return math.Round(x*100) / 100 }
	dLo, dHi := round(nu*c.UndesirableWeight/nd), round(nu*c.UndesirableWeight/nd*1.33)
	uLo, uHi := round(nd*c.DesirableWeight/nu/1.33), round(nd*c.DesirableWeight/nu)
	if dLo <= c.DesirableWeight && c.DesirableWeight <= dHi || uLo <= c.UndesirableWeight && c.UndesirableWeight <= uHi {
		return ""
	}
	return fmt.Sprintf("%d desirable and %d undesirable rows, but the weights on their losses do not seem to be in an ideal range: "+
		"use EITHER a desirable weight in [%g, %g] or an undesirable weight in [%g, %g] (but not both)", desirable, undesirable, dLo, dHi, uLo, uHi)
}
