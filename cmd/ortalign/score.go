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
	"ortalign/pipeline/engine"
	"ortalign/pipeline/lm"
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

// newScoreCmd builds the command; runF replaces runScore in tests of flag parsing.
func newScoreCmd(g *globalOptions, runF func(*scoreOptions) error) *cobra.Command {
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
		RunE: runner(o, runF, runScore),
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

// runScore is `ortalign score`: score.ScoreDataset with the flags' options, then its
// summary.
func runScore(ctx context.Context, o *scoreOptions, stdout, stderr io.Writer) error {
	// Everything that can fail without a model fails first: the flags, the tokenizer, the
	// dataset's schema and what encoding it needs (ScoreDataset checks them before it
	// calls initORT); then ONNX Runtime and the models.
	if err := o.validate(); err != nil {
		return err
	}
	data, err := o.dataFlags.options(o.tokenizer)
	if err != nil {
		return err
	}
	data.Warn = stderr
	sum, err := score.ScoreDataset(ctx, score.DatasetConfig{
		Data: o.dataPath, Out: o.out, DataOptions: data, Policy: o.model, Ref: o.ref, Reward: o.reward,
		Model: lm.ModelOptions{Threads: o.threads, PadID: padID(data.Tokenizer)},
		Beta:  o.beta, BatchSize: o.batchSize, Shard: o.shardI, Shards: o.shards,
		InitRuntime: o.initORT, Progress: stderr,
	})
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("%w; %s was not written", engine.ErrInterrupted, o.out)
	}
	if err != nil {
		return flagHints(err)
	}
	printScoreSummary(stdout, o, sum)
	return nil
}

// printScoreSummary reports a scored file: counts, then the accuracy and margin (or the
// mean reward of one sequence a row), then the speed.
func printScoreSummary(w io.Writer, o *scoreOptions, sum score.DatasetSummary) {
	if o.reward != "" {
		fmt.Fprintf(w, "scored %d %s from %s (%s layout) with the reward model %s -> %s\n", sum.Scored(), sum.Unit(), o.dataPath, sum.Layout, o.reward, o.out)
	} else {
		fmt.Fprintf(w, "scored %d pairs from %s (%s layout) -> %s\n", sum.Pairs, o.dataPath, sum.Layout, o.out)
	}
	fmt.Fprintf(w, "  skipped %d rows (null or empty values; see the warnings), dropped %d (prompt fills --max-length), truncated %d\n", sum.Skipped, sum.Dropped, sum.Truncated)
	switch {
	case o.reward != "" && sum.Use == dataset.UseSFT:
		fmt.Fprintf(w, "  mean reward: %.4f\n", sum.MeanReward)
	case o.reward != "":
		fmt.Fprintf(w, "  accuracy (rewards_chosen > rewards_rejected): %.1f%% (%d of %d pairs)   mean margin: %.4f\n",
			100*sum.RewardAccuracy, int(math.Round(sum.RewardAccuracy*float64(sum.Pairs))), sum.Pairs, sum.MeanMargin)
	case sum.HasRef:
		fmt.Fprintf(w, "  reward accuracy: %.1f%%   mean margin: %.4f   (beta %g)\n", 100*sum.RewardAccuracy, sum.MeanMargin, o.beta)
	default:
		fmt.Fprintf(w, "  chosen log-prob > rejected: %.1f%% (no reference: pass --ref for rewards)\n", 100*sum.RewardAccuracy)
	}
	fmt.Fprintf(w, "  %d tokens in %.2fs: %.0f tokens/s\n", sum.Tokens, sum.Elapsed.Seconds(), sum.TokensPerSecond())
}
