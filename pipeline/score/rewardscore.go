package score

import (
	"context"
	"fmt"
	"math"
	"time"

	"ortalign/onnx"
	"ortalign/onnx/ort"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/lm"
	"ortalign/pipeline/progress"
)

// RewardModel is a reward model loaded in ONNX Runtime for scoring.
type RewardModel struct {
	Path  string
	Kind  lm.RewardHeadKind
	sess  *ort.Session
	vocab int64
	pad   int64
}

// LoadRewardModel loads the reward model at path: a reward.onnx written by `ortalign
// reward` (or NewRewardGraph), or a sequence-classification export with a [batch, 1]
// output. A plain causal LM is refused: its head would be untrained.
func LoadRewardModel(path string, o lm.ModelOptions) (*RewardModel, error) {
	m, err := onnx.Load(path)
	if err != nil {
		return nil, err
	}
	return NewRewardModel(path, m, o)
}

// NewRewardModel prepares an already loaded reward model; path only labels errors.
func NewRewardModel(path string, m *onnx.Model, o lm.ModelOptions) (*RewardModel, error) {
	rg, err := lm.NewRewardGraph(m, lm.RewardHeadOptions{})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if rg.Kind == lm.RewardHeadGrafted {
		return nil, fmt.Errorf("%s is a causal LM, not a reward model (no rewards [batch] or [batch, 1] output): train one with `ortalign reward`", path)
	}
	rm := &RewardModel{Path: path, Kind: rg.Kind, vocab: lm.RewardVocab(rg.Model), pad: o.PadID}
	if rm.sess, err = lm.NewModelSession(rg.Model, []string{lm.RewardOutput}, ort.Options{Threads: o.Threads}); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return rm, nil
}

// VocabSize is the base model's vocabulary size as the reward graph records it (0 when
// unknown: ids are then not checked up front).
func (rm *RewardModel) VocabSize() int64 { return rm.vocab }

// Close releases the ONNX Runtime session.
func (rm *RewardModel) Close() {
	if rm.sess != nil {
		rm.sess.Destroy()
		rm.sess = nil
	}
}

// Rewards returns each row's reward; rows are right-padded to the longest in one batch.
func (rm *RewardModel) Rewards(rows []lm.Sequence) ([]float64, error) {
	width := 0
	for i, r := range rows {
		width = max(width, len(r.IDs))
		if len(r.IDs) == 0 {
			return nil, fmt.Errorf("%s: row %d is empty", rm.Path, i)
		}
		for t, id := range r.IDs {
			if id < 0 || (rm.vocab > 0 && id >= rm.vocab) {
				return nil, fmt.Errorf("%s: row %d position %d: token id %d outside the model's vocabulary [0, %d)", rm.Path, i, t, id, rm.vocab)
			}
		}
	}
	b := lm.BatchInputs(rows, rm.pad)
	out, err := rm.sess.Run(map[string]*ort.Tensor{lm.InputIDs: b.IDs, lm.AttentionMask: b.AttentionMask}, nil)
	if err != nil {
		return nil, fmt.Errorf("%s: batch of %d sequences of up to %d tokens (longer than the model's positions? lower the maximum length): %w", rm.Path, len(rows), width, err)
	}
	res := make([]float64, len(rows))
	for i, v := range out[lm.RewardOutput].F32 {
		res[i] = float64(v)
	}
	return res, nil
}

// RewardScoreConfig configures ScorePairRewards and ScoreSequenceRewards.
type RewardScoreConfig struct {
	BatchSize int                // pairs (or sequences) per forward pass
	Progress  *progress.Progress // advanced by one per pair (or sequence); the caller starts and ends it
}

// PairReward is the rewards of a pair's two sides.
type PairReward struct {
	Chosen, Rejected float64
}

// ScorePairRewards computes the reward of both sides of every pair, batching pairs of
// similar length (chosen rows then rejected rows, as the trainer feeds them). The
// summary's RewardAccuracy is the fraction of pairs with Chosen > Rejected and
// MeanMargin the mean Chosen − Rejected (HasRef is set: the rewards are real).
func ScorePairRewards(ctx context.Context, rm *RewardModel, pairs []encode.EncodedPair, cfg RewardScoreConfig) ([]PairReward, ScoreSummary, error) {
	start := time.Now()
	bs := cfg.BatchSize
	if bs <= 0 {
		bs = 8
	}
	scores := make([]PairReward, len(pairs))
	sum := ScoreSummary{Pairs: len(pairs), HasRef: true}
	for _, batch := range lm.LengthBatches(len(pairs), bs, func(i int) int { return max(len(pairs[i].Chosen.IDs), len(pairs[i].Rejected.IDs)) }) {
		if err := ctx.Err(); err != nil {
			return nil, sum, err
		}
		group := make([]encode.EncodedPair, len(batch))
		for k, i := range batch {
			group[k] = pairs[i]
			sum.Tokens += int64(len(pairs[i].Chosen.IDs) + len(pairs[i].Rejected.IDs))
		}
		r, err := rm.Rewards(encode.PairRows(group))
		if err != nil {
			return nil, sum, err
		}
		n := len(batch)
		for k, i := range batch {
			scores[i] = PairReward{Chosen: r[k], Rejected: r[n+k]}
		}
		cfg.Progress.Add(n)
	}
	correct := 0
	for _, s := range scores {
		sum.MeanMargin += s.Chosen - s.Rejected
		if s.Chosen > s.Rejected {
			correct++
		}
	}
	if len(scores) > 0 {
		sum.RewardAccuracy = float64(correct) / float64(len(scores))
		sum.MeanMargin /= float64(len(scores))
	}
	if math.IsNaN(sum.MeanMargin) {
		return nil, sum, fmt.Errorf("scoring produced NaN rewards: check the model's outputs")
	}
	sum.Elapsed = time.Since(start)
	return scores, sum, nil
}

// SequenceRewardSummary aggregates ScoreSequenceRewards.
type SequenceRewardSummary struct {
	Sequences  int
	MeanReward float64
	Tokens     int64
	Elapsed    time.Duration
}

// ScoreSequenceRewards computes the reward of every sequence (all its tokens: prompt and
// completion), batching sequences of similar length. Results are in sequence order.
func ScoreSequenceRewards(ctx context.Context, rm *RewardModel, seqs []lm.Sequence, cfg RewardScoreConfig) ([]float64, SequenceRewardSummary, error) {
	start := time.Now()
	bs := cfg.BatchSize
	if bs <= 0 {
		bs = 8
	}
	rewards := make([]float64, len(seqs))
	sum := SequenceRewardSummary{Sequences: len(seqs)}
	for _, batch := range lm.LengthBatches(len(seqs), bs, func(i int) int { return len(seqs[i].IDs) }) {
		if err := ctx.Err(); err != nil {
			return nil, sum, err
		}
		group := make([]lm.Sequence, len(batch))
		for k, i := range batch {
			group[k] = seqs[i]
			sum.Tokens += int64(len(seqs[i].IDs))
		}
		r, err := rm.Rewards(group)
		if err != nil {
			return nil, sum, err
		}
		for k, i := range batch {
			rewards[i] = r[k]
			sum.MeanReward += r[k]
		}
		cfg.Progress.Add(len(batch))
	}
	if len(seqs) > 0 {
		sum.MeanReward /= float64(len(seqs))
	}
	if math.IsNaN(sum.MeanReward) {
		return nil, sum, fmt.Errorf("scoring produced NaN rewards: check the model's outputs")
	}
	sum.Elapsed = time.Since(start)
	return rewards, sum, nil
}
