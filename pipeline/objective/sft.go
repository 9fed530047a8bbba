package objective

import (
	"encoding/binary"
	"hash"
	"math"

	"ortalign/onnx"
	"ortalign/onnx/ort"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/lm"
)

// SFT is supervised fine-tuning: items are token sequences, and the loss is the
// cross-entropy of their completion tokens, averaged over all completion tokens of the
// batch (TRL's SFTTrainer with completion_only_loss). Prompt and padding positions carry
// no loss.
type SFT struct{}

// Name implements Objective.
func (SFT) Name() string { return "sft" }

// Settings implements Objective: SFT has no options of its own.
func (SFT) Settings() map[string]string { return nil }

// AppendLoss implements Objective: loss = −Σ completion log-probs / number of
// completion tokens (at least 1), with the count of correctly predicted tokens beside it.
func (SFT) AppendLoss(m *onnx.Model) error {
	out, err := lm.AppendLogProbHeadWith(m, lm.HeadOptions{TokenCorrect: true})
	if err != nil {
		return err
	}
	g := m.Graph()
	onnx.RemoveOutput(g, lm.VocabSizeOutput)
	b := onnx.NewBuilder(g, m.Opset(""), "ortalign_sft")
	// Position 0 predicts nothing: count completion tokens from position 1 on.
	count := b.ReduceSum(b.Slice(lm.CompletionMaskInput, []int64{1}, []int64{math.MaxInt64}, []int64{1}, nil), nil, false)
	total := b.ReduceSum(out.SequenceLogps, nil, false)
	loss := b.Div(b.Neg(total), b.Max(count, b.ConstFloat(1)))
	lm.AddIdentity(g, loss, engine.LossOutput)
	return onnx.AddOutput(g, engine.LossOutput, onnx.Float, []onnx.Dim{})
}

// Outputs implements Objective.
func (SFT) Outputs() []string { return []string{lm.TokenCorrectOutput} }

// Feeds implements Objective.
func (SFT) Feeds(in engine.ModelInputs, batch []lm.Sequence) (map[string]*ort.Tensor, error) {
	return in.Rows(batch), nil
}

// Weight implements Objective: the loss is a mean over predicted completion tokens.
func (SFT) Weight(batch []lm.Sequence) float64 {
	n := 0
	for _, s := range batch {
		n += s.CompletionTokens()
	}
	return float64(n)
}

// Metrics implements Objective with TRL's SFT names: loss, mean_token_accuracy and
// num_tokens (all tokens of the batch, prompts included, as TRL counts them; the
// engine adds them up over the run).
func (SFT) Metrics(batch []lm.Sequence, out map[string]*ort.Tensor) (engine.Metrics, error) {
	correct := 0.0
	for _, v := range out[lm.TokenCorrectOutput].F32 {
		correct += float64(v)
	}
	predicted, tokens := 0, 0
	for _, s := range batch {
		predicted += s.CompletionTokens()
		tokens += len(s.IDs)
	}
	acc := 0.0
	if predicted > 0 {
		acc = correct / float64(predicted)
	}
	return engine.Metrics{
		{Name: engine.LossOutput, Value: float64(out[engine.LossOutput].F32[0])},
		{Name: "mean_token_accuracy", Value: acc},
		{Name: "num_tokens", Value: float64(tokens), Sum: true},
	}, nil
}

// Samples implements Objective.
func (SFT) Samples() (first, second []lm.Sequence) {
	first = []lm.Sequence{{IDs: make([]int64, 5), CompletionStart: 2}, {IDs: make([]int64, 3), CompletionStart: 1}}
	second = []lm.Sequence{{IDs: make([]int64, 7), CompletionStart: 1}, {IDs: make([]int64, 2), CompletionStart: 1}, {IDs: make([]int64, 4), CompletionStart: 3}}
	return first, second
}

// Fingerprint implements Objective.
func (SFT) Fingerprint(h hash.Hash, s lm.Sequence) { fingerprintSequence(h, s) }

// fingerprintSequence writes a sequence's ids and which of its tokens count.
func fingerprintSequence(h hash.Hash, s lm.Sequence) {
	binary.Write(h, binary.LittleEndian, int64(s.CompletionStart))
	binary.Write(h, binary.LittleEndian, int64(len(s.IDs)))
	binary.Write(h, binary.LittleEndian, s.IDs)
	if s.Mask != nil {
		binary.Write(h, binary.LittleEndian, s.Mask)
	}
}
