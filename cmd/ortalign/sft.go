package main

import (
	"context"
	"fmt"
	"io"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/objective"

	"github.com/spf13/cobra"
)

// sftOptions are the flags of `ortalign sft`.
type sftOptions struct {
	*globalOptions
	dataFlags
	modelFlags
	optimFlags
	dataPath, tokenizer string
}

// newSFTCmd builds the command; runF replaces runSFT in tests of flag parsing.
func newSFTCmd(g *globalOptions, runF func(*sftOptions) error) *cobra.Command {
	o := &sftOptions{globalOptions: g}
	cmd := &cobra.Command{
		Use:   "sft --model M.onnx --data D.parquet --out DIR",
		Short: "Supervised fine-tuning: the usual first stage before DPO or RLHF",
		Long: `sft trains the model's float initializers on prompt–completion data (prompt and
completion columns, text or messages), conversational messages (the loss covers the
assistant turns), plain text, or the chosen side of preference pairs. The loss is the
cross-entropy of the completion tokens, averaged over all completion tokens of a batch
(TRL's SFTTrainer with completion_only_loss); metrics loss, mean_token_accuracy and
num_tokens. Same engine, outputs and resume as dpo.`,
		Example: `  ortalign sft --model model.onnx --data sft.parquet --tokenizer tokenizer.json \
      --out sft1 --lr 2e-5 --epochs 1 --eval-fraction 0.1`,
		Args: cobra.NoArgs,
		RunE: runner(o, runF, runSFT),
	}
	f := cmd.Flags()
	addModelFlags(f, &o.modelFlags)
	f.StringVar(&o.dataPath, "data", "", "training data (.parquet or .jsonl): prompt/completion, messages, text, or preference pairs")
	f.StringVar(&o.tokenizer, "tokenizer", "", "HuggingFace tokenizer.json (needed for text datasets)")
	addOptimFlags(f, &o.optimFlags, trainDefaults{lr: 2e-5})
	addDataFlags(f, &o.dataFlags)
	for _, name := range []string{"model", "data", "out"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

func runSFT(ctx context.Context, o *sftOptions, stdout, stderr io.Writer) error {
	data, cfg, base, err := prepareTraining(o.globalOptions, &o.dataFlags, &o.modelFlags, &o.optimFlags, o.tokenizer)
	if err != nil {
		return err
	}
	data.Warn = stderr
	train, eval, err := loadTrainEval(ctx, encode.LoadSequencesContext, &o.optimFlags, o.dataPath, data)
	if err != nil {
		return err
	}
	eng, err := engine.NewEngine(o.model, base, cfg, objective.SFT{})
	if err != nil {
		return err
	}
	defer eng.Close()
	printNotices(stderr, eng.Notices())
	printReusedGraph(stderr, eng.ReusedGraph())
	fmt.Fprintf(stderr, "training %d tensors of %s on %d sequences (%s, lr %g)\n", len(eng.Trainable()), o.model, len(train), o.optimizer, o.lr)
	ro := o.optimFlags.runOptions("sft")
	ro.Stderr = stderr
	res, err := engine.RunTraining(ctx, eng, encode.SequencesOf(train), encode.SequencesOf(eval), ro)
	if err != nil {
		return err
	}
	printRunSummary(stdout, res, fmt.Sprintf("held-out metrics (%d sequences)", len(eval)))
	return nil
}
