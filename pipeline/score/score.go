package score

import (
	"context"
	"fmt"
	"math"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/lm"
	"ortalign/pipeline/progress"
	"time"
)

// ScoreConfig configures ScorePairs.
type ScoreConfig struct {
	Beta      float64            // scale of the implicit rewards (TRL's beta)
	BatchSize int                // pairs per forward pass (2×BatchSize rows)
	Progress  *progress.Progress // advanced by one per pair; the caller starts and ends it
}

// PairScore is the result for one pair. Reference fields are set when HasRef.
type PairScore struct {
	ChosenLogps, RejectedLogps       float64
	ChosenTokens, RejectedTokens     int
	HasRef                           bool
	RefChosenLogps, RefRejectedLogps float64
	RewardsChosen, RewardsRejected   float64 // beta·(policy − reference) log-ratios
	Margin                           float64 // RewardsChosen − RewardsRejected
}

// ScoreSummary aggregates a scoring run.
type ScoreSummary struct {
	Pairs          int
	HasRef         bool
	RewardAccuracy float64 // fraction with RewardsChosen > RewardsRejected (or chosen > rejected log-prob without a reference)
	MeanMargin     float64
	Tokens         int64 // tokens fed to the policy, padding excluded
	Elapsed        time.Duration
}

// Merge adds another run's summary to s (e.g. the next window of a streamed file).
func (s *ScoreSummary) Merge(o ScoreSummary) {
	if o.Pairs == 0 {
		s.Elapsed += o.Elapsed
		return
	}
	if s.Pairs == 0 {
		s.HasRef = o.HasRef
	}
	n := float64(s.Pairs + o.Pairs)
	s.RewardAccuracy = (s.RewardAccuracy*float64(s.Pairs) + o.RewardAccuracy*float64(o.Pairs)) / n
	s.MeanMargin = (s.MeanMargin*float64(s.Pairs) + o.MeanMargin*float64(o.Pairs)) / n
	s.Pairs += o.Pairs
	s.HasRef = s.HasRef && o.HasRef
	s.Tokens += o.Tokens
	s.Elapsed += o.Elapsed
}

// TokensPerSecond is the policy's scoring throughput.
func (s ScoreSummary) TokensPerSecond() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Tokens) / s.Elapsed.Seconds()
}

// ScorePairs computes policy (and reference) log-probs of every pair, batching pairs of
// similar length. ref may be nil: then reference log-probs come from the pairs
// themselves (dataset columns) when every pair has them. Results are in pair order.
func ScorePairs(ctx context.Context, policy, ref *lm.LogProbModel, pairs []encode.EncodedPair, cfg ScoreConfig) ([]PairScore, ScoreSummary, error) {
	start := time.Now()
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 8
	}
	scores := make([]PairScore, len(pairs))
	sum := ScoreSummary{Pairs: len(pairs)}
	for _, batch := range PairBatches(pairs, cfg.BatchSize) {
		if err := ctx.Err(); err != nil {
			return nil, sum, err
		}
		group := make([]encode.EncodedPair, len(batch))
		for k, i := range batch {
			group[k] = pairs[i]
		}
		rows := encode.PairRows(group)
		lp, err := policy.SequenceLogps(rows)
		if err != nil {
			return nil, sum, err
		}
		var refLp []float64
		if ref != nil {
			if refLp, err = ref.SequenceLogps(rows); err != nil {
				return nil, sum, err
			}
		}
		n := len(batch)
		for k, i := range batch {
			s := &scores[i]
			s.ChosenLogps, s.RejectedLogps = lp[k], lp[n+k]
			s.ChosenTokens, s.RejectedTokens = pairs[i].Chosen.CompletionTokens(), pairs[i].Rejected.CompletionTokens()
			switch {
			case ref != nil:
				s.HasRef, s.RefChosenLogps, s.RefRejectedLogps = true, refLp[k], refLp[n+k]
			case pairs[i].RefChosenLogps != nil && pairs[i].RefRejectedLogps != nil:
				s.HasRef, s.RefChosenLogps, s.RefRejectedLogps = true, *pairs[i].RefChosenLogps, *pairs[i].RefRejectedLogps
			}
			sum.Tokens += int64(len(pairs[i].Chosen.IDs) + len(pairs[i].Rejected.IDs))
		}
		cfg.Progress.Add(len(batch))
	}
	allRef := len(scores) > 0
	for _, s := range scores {
		allRef = allRef && s.HasRef
	}
	sum.HasRef = allRef
	correct := 0
	for i := range scores {
		s := &scores[i]
		if s.HasRef {
			s.RewardsChosen = cfg.Beta * (s.ChosenLogps - s.RefChosenLogps)
			s.RewardsRejected = cfg.Beta * (s.RejectedLogps - s.RefRejectedLogps)
			s.Margin = s.RewardsChosen - s.RewardsRejected
		}
		if allRef {
			sum.MeanMargin += s.Margin
			if s.RewardsChosen > s.RewardsRejected {
				correct++
			}
		} else if s.ChosenLogps > s.RejectedLogps {
			correct++
		}
	}
	if len(scores) > 0 {
		sum.RewardAccuracy = float64(correct) / float64(len(scores))
		sum.MeanMargin /= float64(len(scores))
	}
	if math.IsNaN(sum.MeanMargin) {
		return nil, sum, fmt.Errorf("scoring produced NaN margins: check the model's outputs")
	}
	sum.Elapsed = time.Since(start)
	return scores, sum, nil
}

// PairBatches is how ScorePairs batches pairs: size pairs of similar length a batch
// (lm.LengthBatches of each pair's longer sequence), as lists of indexes. A batch it
// made, batched again with its own size, comes back as it is.
func PairBatches(pairs []encode.EncodedPair, size int) [][]int {
	return lm.LengthBatches(len(pairs), size, func(i int) int {
		return max(len(pairs[i].Chosen.IDs), len(pairs[i].Rejected.IDs))
	})
}

// ReferenceLogps returns the completion log-probs of each pair's chosen and rejected
// sequences under the reference model ref, in pair order (ScorePairs with ref as the
// policy): the reference log-probs of DPO's loss.
func ReferenceLogps(ctx context.Context, ref *lm.LogProbModel, pairs []encode.EncodedPair, cfg ScoreConfig) (chosen, rejected []float64, err error) {
	cfg.Beta = 1
	scores, _, err := ScorePairs(ctx, ref, nil, pairs, cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("reference log-probs: %w", err)
	}
	chosen, rejected = make([]float64, len(pairs)), make([]float64, len(pairs))
	for i, s := range scores {
		chosen[i], rejected[i] = s.ChosenLogps, s.RejectedLogps
	}
	return chosen, rejected, nil
}
