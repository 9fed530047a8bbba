package objective

import (
	"encoding/json"
	"fmt"
	"hash"
	"math"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
	"ortalign/onnx/ort"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/lm"
)

// Names of the values the ORPO head adds.
const (
	// ORPOResponseMaskInput is float32 [2n, seq]: 1 on each row's completion tokens (the
	// rows' own completion mask). ORPO feeds completion_mask with every token of the
	// chosen rows, whose NLL covers the prompt too, so it needs this second mask for the
	// completions' average log-probs.
	ORPOResponseMaskInput = "orpo_response_mask"
	// ORPOAvgLogpsOutput is float32 [2n]: each row's log-probs averaged over its
	// completion tokens, chosen rows then rejected rows.
	ORPOAvgLogpsOutput = "orpo_avg_logps"
	// ORPONLLOutput, ORPOLogOddsRatioOutput and ORPOLogOddsChosenOutput are the
	// micro-batch's nll_loss, log_odds_ratio and log_odds_chosen (scalars).
	ORPONLLOutput           = "orpo_nll_loss"
	ORPOLogOddsRatioOutput  = "orpo_log_odds_ratio"
	ORPOLogOddsChosenOutput = "orpo_log_odds_chosen"
)

// DefaultORPOBeta is ORPOConfig.beta's default (λ in the ORPO paper).
const DefaultORPOBeta = 0.1

// ORPO is odds-ratio preference optimisation, as TRL v1.x's ORPOTrainer: no reference
// model and no reference pass. With avg_c, avg_r the chosen and rejected log-probs
// averaged over completion tokens,
//
//	log_odds = (avg_c − avg_r) − (log(1 − exp(avg_c)) − log(1 − exp(avg_r)))
//	loss     = nll − β · mean over pairs of logσ(log_odds)
//
// where nll is the cross-entropy of every token of the chosen rows, prompt and
// completion (TRL: "orpo chosen nll loss is computed over the full prompt and
// response"), averaged over the micro-batch's chosen tokens. Items are encoded pairs; any
// reference log-probs they carry are ignored.
type ORPO struct {
	Beta float64 `json:"beta"`
}

// Validate reports a β that is not a positive number.
func (o ORPO) Validate() error {
	if !(o.Beta > 0) || math.IsInf(o.Beta, 0) {
		return fmt.Errorf("beta must be positive, got %g", o.Beta)
	}
	return nil
}

// Name implements Objective.
func (ORPO) Name() string { return "orpo" }

// Settings implements Objective: β.
func (o ORPO) Settings() map[string]string {
	b, _ := json.Marshal(o)
	return map[string]string{"orpo": string(b)}
}

// AppendLoss implements Objective with the ORPO head.
func (o ORPO) AppendLoss(m *onnx.Model) error {
	if err := o.Validate(); err != nil {
		return err
	}
	l, err := appendPairHead(m, "ortalign_orpo", true)
	if err != nil {
		return err
	}
	b, g := l.b, l.b.Graph()
	if err := onnx.AddInput(g, ORPOResponseMaskInput, onnx.Float, []onnx.Dim{onnx.DimParam("batch"), onnx.DimParam("sequence")}); err != nil {
		return err
	}
	// token_logps is 0 off completion_mask, which holds the response mask.
	sums := b.ReduceSum(b.Mul(lm.TokenLogpsOutput, ORPOResponseMaskInput), []int64{1}, false)
	avg := b.Div(sums, b.Max(predictedTokens(b, ORPOResponseMaskInput), b.ConstFloat(1)))
	c, r := l.halves(avg)
	logOdds := b.Sub(b.Sub(c, r), b.Sub(log1mexp(b, c), log1mexp(b, r)))
	ratio := b.Neg(softplus(b, b.Neg(logOdds))) // logσ(log_odds)
	meanRatio := b.ReduceMean(ratio, []int64{0}, false)
	nll := l.chosenNLL(lm.SequenceLogpsOutput)
	loss := b.Sub(nll, b.Mul(b.ConstFloat(float32(o.Beta)), meanRatio))
	return addScalarOutputs(g, []string{avg, nll, meanRatio, b.ReduceMean(logOdds, []int64{0}, false), loss},
		[]string{ORPOAvgLogpsOutput, ORPONLLOutput, ORPOLogOddsRatioOutput, ORPOLogOddsChosenOutput, engine.LossOutput})
}

// log1mexp is log(1 − exp(x)) for x < 0 without the cancellation of 1 − exp(x) near 0:
// with h = tanh(x/2), 1 − exp(x) = −2h / (1 − h), and tanh keeps its relative precision
// near 0 (TRL switches between log1p(−exp(x)) and log(−expm1(x)), which ONNX lacks).
func log1mexp(b *onnx.Builder, x string) string {
	h := b.Tanh(b.Mul(x, b.ConstFloat(0.5)))
	return b.Add(b.Sub(b.Log(b.Neg(h)), b.Log(b.Sub(b.ConstFloat(1), h))), b.ConstFloat(float32(math.Ln2)))
}

// SourceDigest implements engine.SourceDigester: a training graph cached by another
// build of the loss heads is rebuilt.
func (ORPO) SourceDigest() (string, error) { return sourceDigest() }

// Outputs implements Objective.
func (ORPO) Outputs() []string {
	return []string{ORPOAvgLogpsOutput, ORPONLLOutput, ORPOLogOddsRatioOutput, ORPOLogOddsChosenOutput}
}

// Weight implements Objective: the loss is a mean over pairs (the NLL a mean over the
// micro-batch's tokens, as TRL, which averages micro-batch losses).
func (ORPO) Weight(batch []encode.EncodedPair) float64 { return float64(len(batch)) }

// Feeds implements Objective: chosen rows counting every token (the NLL's), rejected rows
// counting their completions, and the response mask.
func (ORPO) Feeds(in engine.ModelInputs, pairs []encode.EncodedPair) (map[string]*ort.Tensor, error) {
	rows := encode.PairRows(pairs)
	all := make([]lm.Sequence, len(rows))
	copy(all, rows)
	for i := range pairs {
		all[i] = lm.Sequence{IDs: rows[i].IDs}
	}
	feeds := in.Rows(all)
	shape := feeds[lm.InputIDs].Shape
	w := int(shape[1])
	mask := make([]float32, len(rows)*w)
	for i, s := range rows {
		for t := range s.IDs {
			if s.Counts(t) {
				mask[i*w+t] = 1
			}
		}
	}
	feeds[ORPOResponseMaskInput] = ort.MustFloatTensor([]int64{shape[0], shape[1]}, mask)
	return feeds, nil
}

// Metrics implements Objective with TRL's ORPO names: rewards are β times the average
// log-probs.
func (o ORPO) Metrics(pairs []encode.EncodedPair, out map[string]*ort.Tensor) (engine.Metrics, error) {
	m, err := pairRewardMetrics(o.Beta, len(pairs), out, ORPOAvgLogpsOutput)
	if err != nil {
		return nil, err
	}
	for _, name := range [][2]string{{"nll_loss", ORPONLLOutput}, {"log_odds_ratio", ORPOLogOddsRatioOutput}, {"log_odds_chosen", ORPOLogOddsChosenOutput}} {
		m = append(m, engine.Metric{Name: name[0], Value: float64(out[name[1]].F32[0])})
	}
	return m, nil
}

// Samples implements Objective.
func (ORPO) Samples() (first, second []encode.EncodedPair) { return pairSamples() }

// Fingerprint implements Objective: the pair's ids and completion starts.
func (ORPO) Fingerprint(h hash.Hash, p encode.EncodedPair) { fingerprintPair(h, p) }

// appendPairHead adds the log-prob head (with token_logps when tokens) to m for 2n rows
// of n pairs, drops the model's and the head's outputs, and returns the loss builder
// over them (its n, halves and counts).
func appendPairHead(m *onnx.Model, prefix string, tokens bool) (*lossBuilder, error) {
	head, err := lm.AppendLogProbHeadWith(m, lm.HeadOptions{TokenLogps: tokens})
	if err != nil {
		return nil, err
	}
	g := m.Graph()
	for _, name := range []string{head.VocabSize, head.SequenceLogps, head.TokenLogps} {
		onnx.RemoveOutput(g, name)
	}
	b := onnx.NewBuilder(g, m.Opset(""), prefix)
	n := b.Div(b.Shape(lm.SequenceLogpsOutput), b.ConstInt64s([]int64{2}))
	return &lossBuilder{b: b, n: n}, nil
}

// predictedTokens is the number of each row's tokens that mask marks at positions ≥ 1
// (position 0 predicts nothing): TRL's labels[:, 1:] != −100, summed per row.
func predictedTokens(b *onnx.Builder, mask string) string {
	return b.ReduceSum(lm.ShiftLeft(b, mask), []int64{1}, false)
}

// chosenNLL is the cross-entropy of the chosen rows' counted tokens (seqLogps [2n] summed
// over completion_mask), averaged over all of them: TRL's nn.CrossEntropyLoss on the
// chosen half of the batch.
func (l *lossBuilder) chosenNLL(seqLogps string) string {
	b := l.b
	c, _ := l.halves(seqLogps)
	tokens, _ := l.halves(predictedTokens(b, lm.CompletionMaskInput))
	return b.Neg(b.Div(b.ReduceSum(c, []int64{0}, false), b.Max(b.ReduceSum(tokens, []int64{0}, false), b.ConstFloat(1))))
}

// addScalarOutputs names values the graph outputs names: the last one the scalar loss,
// the first a per-row [2n] value, the others scalars.
func addScalarOutputs(g *onnxpb.GraphProto, values, names []string) error {
	for i, v := range values {
		lm.AddIdentity(g, v, names[i])
		dims := []onnx.Dim{}
		if i == 0 {
			dims = []onnx.Dim{onnx.DimParam("batch")}
		}
		if err := onnx.AddOutput(g, names[i], onnx.Float, dims); err != nil {
			return err
		}
	}
	return nil
}

// pairRewardMetrics reads the reference-free objectives' shared metrics from logps [2n]
// (the log-probs the loss compares): loss, rewards/* (β·logps, TRL's) and logps/*.
func pairRewardMetrics(beta float64, n int, out map[string]*ort.Tensor, logps string) (engine.Metrics, error) {
	lp := out[logps]
	if lp == nil || len(lp.F32) != 2*n {
		return nil, fmt.Errorf("%s: want %d values for %d pairs", logps, 2*n, n)
	}
	var logC, logR, acc float64
	for i := 0; i < n; i++ {
		c, r := float64(lp.F32[i]), float64(lp.F32[n+i])
		logC += c
		logR += r
		if beta*c > beta*r {
			acc++
		}
	}
	logC, logR, acc = logC/float64(n), logR/float64(n), acc/float64(n)
	return engine.Metrics{
		{Name: engine.LossOutput, Value: float64(out[engine.LossOutput].F32[0])},
		{Name: "rewards/chosen", Value: beta * logC},
		{Name: "rewards/rejected", Value: beta * logR},
		{Name: "rewards/accuracies", Value: acc},
		{Name: "rewards/margins", Value: beta * (logC - logR)},
		{Name: "logps/chosen", Value: logC},
		{Name: "logps/rejected", Value: logR},
	}, nil
}

// pairSamples are pairs of token 0 of a few lengths, without reference log-probs.
func pairSamples() (first, second []encode.EncodedPair) {
	pair := func(c, cs, r, rs int) encode.EncodedPair {
		return encode.EncodedPair{
			Chosen:   lm.Sequence{IDs: make([]int64, c), CompletionStart: cs},
			Rejected: lm.Sequence{IDs: make([]int64, r), CompletionStart: rs},
		}
	}
	first = []encode.EncodedPair{pair(5, 2, 4, 2), pair(3, 1, 6, 3)}
	second = []encode.EncodedPair{pair(7, 1, 2, 1), pair(7, 1, 2, 1), pair(7, 1, 2, 1)}
	return first, second
}

// fingerprintPair writes a pair's ids and which of their tokens count.
func fingerprintPair(h hash.Hash, p encode.EncodedPair) {
	fingerprintSequence(h, p.Chosen)
	fingerprintSequence(h, p.Rejected)
}
