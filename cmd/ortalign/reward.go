package main

import (
	"context"
	"fmt"
	"io"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/lm"
	"ortalign/pipeline/objective"

	"github.com/spf13/cobra"
)

// rewardOptions are the flags of `ortalign reward`.
type rewardOptions struct {
	*globalOptions
	dataFlags
	modelFlags
	optimFlags
	dataPath, tokenizer string
	centerCoef          float64
}

// RewardModelFile is the trained reward model in the run's directory.
const RewardModelFile = "reward.onnx"

// newRewardCmd builds the command; runF replaces runReward in tests of flag parsing.
func newRewardCmd(g *globalOptions, runF func(*rewardOptions) error) *cobra.Command {
	o := &rewardOptions{globalOptions: g}
	cmd := &cobra.Command{
		Use:   "reward --model M.onnx --data D.parquet --out DIR",
		Short: "Train a reward model on preference pairs (Bradley–Terry, TRL's RewardTrainer)",
		Long: `reward turns the model into a reward model and trains it on preference pairs.

A causal LM gets a scalar head, as transformers' *ForSequenceClassification with
num_labels=1: a new weight [hidden, 1] (no bias, normal(0, 0.02) drawn with --seed) reads
the final hidden state at each sequence's last token (sum(attention_mask) − 1); the LM
head is pruned away. A sequence-classification export (a [batch, 1] output) is used as
is. Every float initializer trains, the head included (--freeze keeps some fixed).

The loss is TRL RewardTrainer's: mean over pairs of −logσ(r_chosen − r_rejected − margin)
(margin: the data's margin column, else 0) + --center-rewards-coefficient ·
mean((r_chosen + r_rejected)²). Metrics: loss, accuracy, margin, min_reward, mean_reward,
max_reward, num_tokens, grad_norm, learning_rate (eval_* on held-out pairs).

Writes DIR/reward.onnx — inputs input_ids and attention_mask (int64 [batch, sequence],
right-padded), output rewards (float32 [batch]); position_ids and an empty KV cache are
made inside the graph — DIR/metrics.jsonl and DIR/checkpoint.bin. Same engine, schedules,
accumulation, evaluation and resume as dpo and sft. Score with
` + "`ortalign score --reward DIR/reward.onnx`" + `.`,
		Example: `  ortalign reward --model model.onnx --data train.parquet --tokenizer tokenizer.json \
      --out rm1 --epochs 1 --eval-data test.parquet`,
		Args: cobra.NoArgs,
		RunE: runner(o, runF, runReward),
	}
	f := cmd.Flags()
	addModelFlags(f, &o.modelFlags)
	f.StringVar(&o.dataPath, "data", "", "training pairs (.parquet or .jsonl), with an optional margin column")
	f.StringVar(&o.tokenizer, "tokenizer", "", "HuggingFace tokenizer.json (needed for text datasets)")
	f.Float64Var(&o.centerCoef, "center-rewards-coefficient", 0, "weight of mean((r_chosen + r_rejected)²), which keeps rewards centred on 0 (0 = off)")
	addOptimFlags(f, &o.optimFlags, trainDefaults{lr: 1e-4})
	addDataFlags(f, &o.dataFlags)
	for _, name := range []string{"model", "data", "out"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

func runReward(ctx context.Context, o *rewardOptions, stdout, stderr io.Writer) error {
	if !(o.centerCoef >= 0) {
		return fmt.Errorf("--center-rewards-coefficient must be >= 0, got %g", o.centerCoef)
	}
	data, cfg, base, err := prepareTraining(o.globalOptions, &o.dataFlags, &o.modelFlags, &o.optimFlags, o.tokenizer)
	if err != nil {
		return err
	}
	data.Warn = stderr
	train, eval, err := loadTrainEval(ctx, encode.LoadPairsContext, &o.optimFlags, o.dataPath, data)
	if err != nil {
		return err
	}
	rg, err := lm.NewRewardGraph(base, lm.RewardHeadOptions{Seed: o.seed})
	if err != nil {
		return fmt.Errorf("%s: %w", o.model, err)
	}
	eng, err := engine.NewEngine(o.model, rg.Model, cfg, objective.Reward{CenterRewardsCoefficient: o.centerCoef})
	if err != nil {
		return err
	}
	defer eng.Close()
	printNotices(stderr, eng.Notices())
	printReusedGraph(stderr, eng.ReusedGraph())
	switch rg.Kind {
	case lm.RewardHeadGrafted:
		fmt.Fprintf(stderr, "reward head: new %s [hidden, 1] on the final hidden state of the last token (LM head pruned)\n", rg.Weight)
	default:
		fmt.Fprintf(stderr, "reward head: the model's own (%s)\n", rg.Kind)
	}
	fmt.Fprintf(stderr, "training %d tensors of %s on %d pairs (%s, lr %g)\n", len(eng.Trainable()), o.model, len(train), o.optimizer, o.lr)
	ro := o.optimFlags.runOptions("reward")
	ro.Stderr, ro.ModelFile = stderr, RewardModelFile
	res, err := engine.RunTraining(ctx, eng, train, eval, ro)
	if err != nil {
		return err
	}
	// The engine's model is the reward graph: what it writes is the reward model.
	printRunSummary(stdout, res, fmt.Sprintf("held-out metrics (%d pairs)", len(eval)))
	return nil
}
