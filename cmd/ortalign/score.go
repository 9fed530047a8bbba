package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"

	"strconv"
	"strings"

	"github.com/spf13/cobra"

	dataset "ortalign/data"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/lm"
	"ortalign/pipeline/progress"
	"ortalign/pipeline/score"
)

// scoreOptions are the flags of `ortalign score`.
type scoreOptions struct {
	*globalOptions
	dataFlags
	model, ref, reward, dataPath, tokenizer, out string
	beta                                         float64
	batchSize                                    int
	shard                                        string
	shardI, shards                               int // parsed --shard
}

func newScoreCmd(g *globalOptions) *cobra.Command {
	o := &scoreOptions{globalOptions: g}
	cmd := &cobra.Command{
		Use:   "score (--model M.onnx | --reward R.onnx) --data D.parquet --out S.parquet",
		Short: "Score preference pairs: completion log-probs, implicit rewards and margins, or a reward model's rewards",
		Long: `score computes, for every preference pair, the summed log-probs of the chosen and
rejected completions under the policy model and, with --ref (or ref_chosen_logps /
ref_rejected_logps columns in the data), the implicit rewards beta·(policy − reference)
and their margin, as TRL defines them. One output row per input row, in input order;
rows that could not be scored have null scores: rows skipped because a value is null or
empty (an empty message or token id list, an empty completion, a completion with no
token) — each with a warning naming the file, row and column, and counted in the
summary; --strict makes them an error instead — and rows whose prompt alone fills
--max-length.

With --reward R.onnx (a reward model from ortalign reward, or a sequence-classification
export with a [batch, 1] output) instead of --model: on preference pairs,
rewards_chosen, rewards_rejected and margin (their difference) per pair and the
accuracy (rewards_chosen > rewards_rejected) in the summary; on one sequence a row
(prompt/completion, messages or text, or their _input_ids forms), a reward column (the
reward of the whole sequence). Same streaming, batching, sharding and skip rules.`,
		Example: `  ortalign score --model policy.onnx --ref ref.onnx --data pairs.parquet \
      --tokenizer tokenizer.json --out scores.parquet
  ortalign score --model model.onnx --data tokenized.parquet --out scores.jsonl --shard 0/4
  ortalign score --reward rm1/reward.onnx --data pairs.parquet --tokenizer tokenizer.json --out rewards.parquet`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runScore(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.model, "model", "", "policy model (ONNX causal LM with input_ids and logits)")
	f.StringVar(&o.ref, "ref", "", "reference model; default: ref_*_logps columns of the data, if any")
	f.StringVar(&o.reward, "reward", "", "reward model (reward.onnx of ortalign reward): score rewards instead of log-probs")
	f.StringVar(&o.dataPath, "data", "", "preference pairs (.parquet or .jsonl) in a TRL layout; with --reward also prompt/completion, messages or text")
	f.StringVar(&o.tokenizer, "tokenizer", "", "HuggingFace tokenizer.json (needed for text datasets)")
	f.StringVar(&o.out, "out", "", "output file, .parquet or .jsonl")
	f.Float64Var(&o.beta, "beta", 0.1, "scale of the implicit rewards")
	f.IntVar(&o.batchSize, "batch-size", 8, "pairs (or sequences) per forward pass")
	addDataFlags(f, &o.dataFlags)
	f.StringVar(&o.shard, "shard", "", "score only shard i of N (i/N, over Parquet row groups)")
	for _, name := range []string{"data", "out"} {
		_ = cmd.MarkFlagRequired(name)
	}
	cmd.MarkFlagsOneRequired("model", "reward")
	cmd.MarkFlagsMutuallyExclusive("model", "reward")
	cmd.MarkFlagsMutuallyExclusive("ref", "reward")
	return cmd
}

func (o *scoreOptions) validate() error {
	switch {
	case o.model == "" && o.reward == "":
		return fmt.Errorf("give --model (log-probs) or --reward (a reward model)")
	case o.model != "" && o.reward != "":
		return fmt.Errorf("--model and --reward exclude each other")
	case o.ref != "" && o.reward != "":
		return fmt.Errorf("--ref applies to --model's log-probs, not to --reward")
	}
	if o.batchSize <= 0 {
		return fmt.Errorf("--batch-size must be positive, got %d", o.batchSize)
	}
	if err := o.dataFlags.validate(); err != nil {
		return err
	}
	if o.beta <= 0 {
		return fmt.Errorf("--beta must be positive, got %g", o.beta)
	}
	if !strings.HasSuffix(o.out, ".parquet") && !strings.HasSuffix(o.out, ".jsonl") {
		return fmt.Errorf("--out %s: use a .parquet or .jsonl file name", o.out)
	}
	var err error
	o.shardI, o.shards, err = parseShard(o.shard)
	return err
}

// parseShard reads "i/N".
func parseShard(s string) (i, n int, err error) {
	if s == "" {
		return 0, 1, nil
	}
	a, b, ok := strings.Cut(s, "/")
	if ok {
		i, err = strconv.Atoi(a)
		if err == nil {
			n, err = strconv.Atoi(b)
		}
	}
	if !ok || err != nil || n <= 0 || i < 0 || i >= n {
		return 0, 0, fmt.Errorf("--shard %q: want i/N with 0 <= i < N", s)
	}
	return i, n, nil
}

func runScore(ctx context.Context, o *scoreOptions, stdout, stderr io.Writer) error {
	// Everything that can fail without a model fails first: the flags, the tokenizer, the
	// dataset's schema and what encoding it needs; then ONNX Runtime and the models.
	if err := o.validate(); err != nil {
		return err
	}
	data, err := o.dataFlags.options(o.tokenizer)
	if err != nil {
		return err
	}
	if o.reward != "" {
		return runRewardScore(ctx, o, data, stdout, stderr)
	}
	ds, err := encode.OpenDataset(o.dataPath, dataset.UsePreference, data)
	if err != nil {
		return flagHints(err)
	}
	defer ds.Close()
	if err := o.initORT(); err != nil {
		return err
	}
	mo := lm.ModelOptions{Threads: o.threads, PadID: padID(data.Tokenizer)}
	policy, err := lm.LoadLogProbModel(o.model, mo)
	if err != nil {
		return err
	}
	defer policy.Close()
	var ref *lm.LogProbModel
	if o.ref != "" {
		if ref, err = lm.LoadLogProbModel(o.ref, mo); err != nil {
			return err
		}
		defer ref.Close()
		if ref.VocabSize() != policy.VocabSize() {
			return fmt.Errorf("--ref %s has vocabulary %d but --model %s has %d", o.ref, ref.VocabSize(), o.model, policy.VocabSize())
		}
	}
	if err := encode.CheckTokenizerFits(data.Tokenizer, policy.VocabSize()); err != nil {
		return fmt.Errorf("--tokenizer %s: %w", o.tokenizer, err)
	}
	data.Vocab, data.Warn = policy.VocabSize(), stderr
	sum, err := score.ScoreFile(ctx, ds, score.ScoreFileConfig{
		Out: o.out, Data: data, Policy: policy, Ref: ref, Beta: o.beta, BatchSize: o.batchSize,
		Shard: o.shardI, Shards: o.shards, Progress: progress.NewProgress(stderr, "score", "pairs"),
	})
	if err != nil {
		return flagHints(err)
	}
	fmt.Fprintf(stdout, "scored %d pairs from %s (%s layout) -> %s\n", sum.Pairs, o.dataPath, ds.Layout, o.out)
	fmt.Fprintf(stdout, "  skipped %d rows (null or empty values; see the warnings), dropped %d (prompt fills --max-length), truncated %d\n", sum.Skipped, sum.Dropped, sum.Truncated)
	if sum.HasRef {
		fmt.Fprintf(stdout, "  reward accuracy: %.1f%%   mean margin: %.4f   (beta %g)\n", 100*sum.RewardAccuracy, sum.MeanMargin, o.beta)
	} else {
		fmt.Fprintf(stdout, "  chosen log-prob > rejected: %.1f%% (no reference: pass --ref for rewards)\n", 100*sum.RewardAccuracy)
	}
	fmt.Fprintf(stdout, "  %d tokens in %.2fs: %.0f tokens/s\n", sum.Tokens, sum.Elapsed.Seconds(), sum.TokensPerSecond())
	return nil
}

// runRewardScore is score --reward: preference pairs get both sides' rewards, files with
// one sequence a row (prompt–completion, messages, text) a reward column.
func runRewardScore(ctx context.Context, o *scoreOptions, data encode.DataOptions, stdout, stderr io.Writer) error {
	ds, err := encode.OpenDataset(o.dataPath, dataset.UsePreference, data)
	var missing *dataset.MissingColumnsError
	if errors.As(err, &missing) {
		ds, err = encode.OpenDataset(o.dataPath, dataset.UseSFT, data)
	}
	if err != nil {
		return flagHints(err)
	}
	defer ds.Close()
	if err := o.initORT(); err != nil {
		return err
	}
	rm, err := score.LoadRewardModel(o.reward, lm.ModelOptions{Threads: o.threads, PadID: padID(data.Tokenizer)})
	if err != nil {
		return err
	}
	defer rm.Close()
	if err := encode.CheckTokenizerFits(data.Tokenizer, rm.VocabSize()); err != nil {
		return fmt.Errorf("--tokenizer %s: %w", o.tokenizer, err)
	}
	data.Vocab, data.Warn = rm.VocabSize(), stderr
	unit := "pairs"
	if ds.Use == dataset.UseSFT {
		unit = "sequences"
	}
	sum, err := score.ScoreFile(ctx, ds, score.ScoreFileConfig{
		Out: o.out, Data: data, Reward: rm, BatchSize: o.batchSize,
		Shard: o.shardI, Shards: o.shards, Progress: progress.NewProgress(stderr, "score", unit),
	})
	if err != nil {
		return flagHints(err)
	}
	n := sum.Pairs
	if ds.Use == dataset.UseSFT {
		n = sum.Sequences
	}
	fmt.Fprintf(stdout, "scored %d %s from %s (%s layout) with the reward model %s -> %s\n", n, unit, o.dataPath, ds.Layout, o.reward, o.out)
	fmt.Fprintf(stdout, "  skipped %d rows (null or empty values; see the warnings), dropped %d (prompt fills --max-length), truncated %d\n", sum.Skipped, sum.Dropped, sum.Truncated)
	if ds.Use == dataset.UseSFT {
		fmt.Fprintf(stdout, "  mean reward: %.4f\n", sum.MeanReward)
	} else {
		fmt.Fprintf(stdout, "  accuracy (rewards_chosen > rewards_rejected): %.1f%% (%d of %d pairs)   mean margin: %.4f\n",
			100*sum.RewardAccuracy, int(math.Round(sum.RewardAccuracy*float64(sum.Pairs))), sum.Pairs, sum.MeanMargin)
	}
	fmt.Fprintf(stdout, "  %d tokens in %.2fs: %.0f tokens/s\n", sum.Tokens, sum.Elapsed.Seconds(), sum.TokensPerSecond())
	return nil
}
