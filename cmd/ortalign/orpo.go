package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/objective"
)

// refFreeOptions are the flags `ortalign orpo` and `ortalign cpo` share: the trainers of
// preference pairs without a reference model.
type refFreeOptions struct {
	*globalOptions
	dataFlags
	modelFlags
	optimFlags
	dataPath, tokenizer string
	beta                float64
}

// addRefFreeFlags defines the shared flags; beta is described by the command.
func addRefFreeFlags(f *pflag.FlagSet, o *refFreeOptions, betaUsage string) {
	addModelFlags(f, &o.modelFlags)
	f.StringVar(&o.dataPath, "data", "", "training pairs (.parquet or .jsonl; DPO's layouts)")
	f.StringVar(&o.tokenizer, "tokenizer", "", "HuggingFace tokenizer.json (needed for text datasets)")
	f.Float64Var(&o.beta, "beta", 0.1, betaUsage)
	addOptimFlags(f, &o.optimFlags, trainDefaults{lr: 1e-6})
	addDataFlags(f, &o.dataFlags)
}

// orpoOptions are the flags of `ortalign orpo`.
type orpoOptions struct{ refFreeOptions }

// newORPOCmd builds the command; runF replaces runORPO in tests of flag parsing.
func newORPOCmd(g *globalOptions, runF func(*orpoOptions) error) *cobra.Command {
	o := &orpoOptions{refFreeOptions{globalOptions: g}}
	cmd := &cobra.Command{
		Use:   "orpo --model M.onnx --data D.parquet --out DIR",
		Short: "Align a model on preference pairs with ORPO: SFT and an odds-ratio penalty, no reference model",
		Long: `orpo trains the model on preference pairs with TRL's ORPOTrainer loss: the NLL of the
chosen sequences (prompt and completion, as TRL) minus β times the mean log-sigmoid of the
log odds ratio of the chosen and rejected completions' average log-probs. No reference
model and no reference pass: one forward and backward pass per step.

Writes DIR/model.onnx, DIR/metrics.jsonl (TRL's names: loss, nll_loss, log_odds_ratio,
log_odds_chosen, rewards/* = β · average log-probs, logps/*) and DIR/checkpoint.bin, as
dpo; running the same command again resumes from the checkpoint.`,
		Example: `  ortalign orpo --model model.onnx --data train.parquet --tokenizer tokenizer.json \
      --out orpo1 --beta 0.1 --lr 5e-4 --batch-size 8 --epochs 1 --eval-data test.parquet`,
		Args: cobra.NoArgs,
		RunE: runner(o, runF, runORPO),
	}
	addRefFreeFlags(cmd.Flags(), &o.refFreeOptions, "ORPO β (λ in the paper): the weight of the odds-ratio term")
	for _, name := range []string{"model", "data", "out"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

func runORPO(ctx context.Context, o *orpoOptions, stdout, stderr io.Writer) error {
	obj := objective.ORPO{Beta: o.beta}
	if err := obj.Validate(); err != nil {
		return fmt.Errorf("--beta: %w", err)
	}
	return runRefFree(ctx, &o.refFreeOptions, obj, fmt.Sprintf("ORPO, β %g", o.beta), stdout, stderr)
}

// runRefFree trains obj on the pairs of o's data: what orpo and cpo share once their
// own flags are checked. what describes the loss in the start-up line.
func runRefFree(ctx context.Context, o *refFreeOptions, obj engine.Objective[encode.EncodedPair], what string, stdout, stderr io.Writer) error {
	data, cfg, base, err := prepareTraining(o.globalOptions, &o.dataFlags, &o.modelFlags, &o.optimFlags, o.tokenizer)
	if err != nil {
		return err
	}
	data.Warn = stderr
	pairs, eval, err := loadTrainEval(ctx, encode.LoadPairsContext, &o.optimFlags, o.dataPath, data)
	if err != nil {
		return err
	}
	eng, err := engine.NewEngine(o.model, base, cfg, obj)
	if err != nil {
		return err
	}
	defer eng.Close()
	printNotices(stderr, eng.Notices())
	printReusedGraph(stderr, eng.ReusedGraph())
	fmt.Fprintf(stderr, "training %d tensors of %s on %d pairs (%s, no reference model; %s, lr %g)\n",
		len(eng.Trainable()), o.model, len(pairs), what, o.optimizer, o.lr)
	ro := o.optimFlags.runOptions(obj.Name())
	ro.Stderr = stderr
	res, err := engine.RunTraining(ctx, eng, pairs, eval, ro)
	if err != nil {
		return err
	}
	printRunSummary(stdout, res, fmt.Sprintf("held-out metrics (%d pairs)", len(eval)))
	return nil
}
