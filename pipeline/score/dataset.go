package score

import (
	"context"
	"errors"
	"fmt"
	"io"

	"ortalign/data"
	"ortalign/onnx/ort"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/lm"
	"ortalign/pipeline/progress"
)

// DatasetConfig configures ScoreDataset: what to score, with which models, into which
// file. Exactly one of Policy and Reward is set.
type DatasetConfig struct {
	// Data is the dataset (.parquet or .jsonl); Out the output file (.parquet or .jsonl),
	// written atomically.
	Data, Out string
	// DataOptions say how Data is read and encoded; Vocab is taken from the model.
	DataOptions encode.DataOptions
	// Policy is the causal LM whose log-probs of preference pairs are scored; Ref, when
	// set, the reference model of the implicit rewards (without it, the data's
	// ref_*_logps columns, if any).
	Policy, Ref string
	// Reward is a reward model (LoadRewardModel): its rewards of preference pairs, or
	// of one sequence a row when Data holds no pairs.
	Reward string
	// Model sets the ONNX Runtime threads and padding id of the models.
	Model lm.ModelOptions
	// Beta scales the implicit rewards (log-prob scoring).
	Beta      float64
	BatchSize int
	// Shard and Shards pick row groups, as in ScoreFileConfig.
	Shard, Shards int
	// InitRuntime loads ONNX Runtime; it is called once the dataset is open and checked,
	// before any model is loaded, so that a data error shows first (nil: ort.Init(""),
	// the library found where ort.FindLibrary looks).
	InitRuntime func() error
	// Progress receives progress lines ("score: 8/100 pairs ..."; nil: none).
	Progress io.Writer
}

// DatasetSummary is ScoreFile's summary and how the dataset was read.
type DatasetSummary struct {
	ScoreFileSummary
	// Use is data.UsePreference (pairs) or, for reward scoring of a file without pairs,
	// data.UseSFT (one sequence a row).
	Use data.Use
}

// Unit names what was scored: "pairs" or "sequences".
func (s DatasetSummary) Unit() string {
	if s.Use == data.UseSFT {
		return "sequences"
	}
	return "pairs"
}

// Scored is the number of pairs or sequences scored.
func (s DatasetSummary) Scored() int {
	if s.Use == data.UseSFT {
		return s.Sequences
	}
	return s.Pairs
}

// ScoreDataset scores the dataset at c.Data with the models at c.Policy (and c.Ref) or
// c.Reward, and writes c.Out (see ScoreFile): the dataset's schema and what its
// encoding needs are checked first, then ONNX Runtime and the models are loaded, and
// the tokenizer is checked against the model's vocabulary.
func ScoreDataset(ctx context.Context, c DatasetConfig) (DatasetSummary, error) {
	switch {
	case (c.Policy == "") == (c.Reward == ""):
		return DatasetSummary{}, errors.New("score: give a policy model (log-probs) or a reward model, not both")
	case c.Ref != "" && c.Reward != "":
		return DatasetSummary{}, errors.New("score: a reference model applies to a policy's log-probs, not to a reward model")
	}
	ds, err := encode.OpenDataset(c.Data, data.UsePreference, c.DataOptions)
	var missing *data.MissingColumnsError
	if c.Reward != "" && errors.As(err, &missing) {
		ds, err = encode.OpenDataset(c.Data, data.UseSFT, c.DataOptions)
	}
	if err != nil {
		return DatasetSummary{}, err
	}
	defer ds.Close()
	sum := DatasetSummary{ScoreFileSummary: ScoreFileSummary{Layout: ds.Layout}, Use: ds.Use}
	initRuntime := c.InitRuntime
	if initRuntime == nil {
		initRuntime = func() error { return ort.Init("") }
	}
	if err := initRuntime(); err != nil {
		return sum, err
	}
	if err := ctx.Err(); err != nil {
		return sum, err
	}
	fc := ScoreFileConfig{Out: c.Out, Data: c.DataOptions, Beta: c.Beta, BatchSize: c.BatchSize, Shard: c.Shard, Shards: c.Shards}
	if c.Reward != "" {
		if fc.Reward, err = LoadRewardModel(c.Reward, c.Model); err != nil {
			return sum, err
		}
		defer fc.Reward.Close()
		fc.Data.Vocab = fc.Reward.VocabSize()
	} else {
		if fc.Policy, err = lm.LoadLogProbModel(c.Policy, c.Model); err != nil {
			return sum, err
		}
		defer fc.Policy.Close()
		if c.Ref != "" {
			if fc.Ref, err = lm.LoadLogProbModel(c.Ref, c.Model); err != nil {
				return sum, err
			}
			defer fc.Ref.Close()
			if fc.Ref.VocabSize() != fc.Policy.VocabSize() {
				return sum, fmt.Errorf("reference model %s has vocabulary %d but the policy %s has %d", c.Ref, fc.Ref.VocabSize(), c.Policy, fc.Policy.VocabSize())
			}
		}
		fc.Data.Vocab = fc.Policy.VocabSize()
	}
	// Loading a model is not cancellable: a signal during it stops the run once it is done.
	if err := ctx.Err(); err != nil {
		return sum, err
	}
	if tok := c.DataOptions.Tokenizer; tok != nil {
		if err := encode.CheckTokenizerFits(tok, fc.Data.Vocab); err != nil {
			return sum, fmt.Errorf("tokenizer %s: %w", tok.Path(), err)
		}
	}
	if c.Progress != nil {
		fc.Progress = progress.NewProgress(c.Progress, "score", sum.Unit())
	}
	fsum, err := ScoreFile(ctx, ds, fc)
	sum.ScoreFileSummary = fsum
	sum.Layout = ds.Layout
	return sum, err
}
