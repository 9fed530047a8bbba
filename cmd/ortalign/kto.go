package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/lm"
	"ortalign/pipeline/objective"
	"ortalign/pipeline/progress"
)

// ktoOptions are the flags of `ortalign kto`.
type ktoOptions struct {
	*globalOptions
	dataFlags
	modelFlags
	optimFlags
	ref, dataPath, tokenizer string
	loss                     string
	beta                     float64
	desirableWeight          float64
	undesirableWeight        float64
}

// config is the loss configuration the flags ask for; errors name the flag.
func (o *ktoOptions) config() (objective.KTOConfig, error) {
	c := objective.KTOConfig{LossType: o.loss, Beta: o.beta, DesirableWeight: o.desirableWeight, UndesirableWeight: o.undesirableWeight}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("loss flags (--loss, --beta, --desirable-weight, --undesirable-weight): %w", err)
	}
	if c.UsesKL() && o.batchSize < 2 {
		return c, fmt.Errorf("--batch-size must be at least 2 for the %s loss: its KL estimate pairs each prompt with another row's completion of the batch (TRL: \"Actual (not effective) batch size must be > 1\")", c.LossType)
	}
	return c, nil
}

// newKTOCmd builds the command; runF replaces runKTO in tests of flag parsing.
func newKTOCmd(g *globalOptions, runF func(*ktoOptions) error) *cobra.Command {
	o := &ktoOptions{globalOptions: g}
	cmd := &cobra.Command{
		Use:   "kto --model M.onnx --data D.parquet --out DIR",
		Short: "Align a model on unpaired thumbs-up/down data with KTO",
		Long: `kto trains the model on unpaired preference rows — a prompt, a completion and a
boolean label (true: desirable) — with TRL's KTO loss, or apo_zero_unpaired. A preference
file (prompt, chosen, rejected) is unpaired as TRL does: its chosen completions become
desirable rows, its rejected ones undesirable. The KL reference point of the kto loss is
estimated from mismatched pairs: in blocks of --batch-size rows, as TRL forms them, each
row's prompt with the previous row's completion. Reference log-probs come from --ref
(default: the starting model), computed once up front. Rows are taken in file order, as
TRL's KTOTrainer samples them, so that each batch is a block and its KL partners lie
within it; --no-shuffle=false shuffles the rows (each keeps its KL partner).

Writes DIR/model.onnx, DIR/metrics.jsonl (TRL's names: loss, kl, rewards/chosen_sum,
logps/chosen_sum, count/chosen and the rejected ones) and DIR/checkpoint.bin; running the
same command again resumes.`,
		Example: `  ortalign kto --model model.onnx --data thumbs.parquet --tokenizer tokenizer.json \
      --out kto1 --lr 5e-7 --batch-size 8 --epochs 1 --eval-fraction 0.1`,
		Args: cobra.NoArgs,
		RunE: runner(o, runF, runKTO),
	}
	f := cmd.Flags()
	addModelFlags(f, &o.modelFlags)
	f.StringVar(&o.ref, "ref", "", "reference model (default: the starting model)")
	f.StringVar(&o.dataPath, "data", "", "unpaired rows (prompt, completion, label) or preference pairs (.parquet or .jsonl)")
	f.StringVar(&o.tokenizer, "tokenizer", "", "HuggingFace tokenizer.json (needed for text datasets)")
	f.StringVar(&o.loss, "loss", objective.KTOLossKTO, "loss type: "+strings.Join(objective.KTOLossTypes, " or "))
	f.Float64Var(&o.beta, "beta", objective.DefaultKTOBeta, "KTO β: the strength of the KL penalty to the reference")
	f.Float64Var(&o.desirableWeight, "desirable-weight", objective.DefaultKTOWeight, "weight of the desirable rows' losses")
	f.Float64Var(&o.undesirableWeight, "undesirable-weight", objective.DefaultKTOWeight, "weight of the undesirable rows' losses")
	addOptimFlags(f, &o.optimFlags, trainDefaults{lr: 1e-6})
	// TRL's KTOTrainer samples in order (the KL partners of a batch are its own rows).
	o.noShuffle = true
	f.Lookup("no-shuffle").DefValue = "true"
	addDataFlags(f, &o.dataFlags)
	for _, name := range []string{"model", "data", "out"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

func runKTO(ctx context.Context, o *ktoOptions, stdout, stderr io.Writer) error {
	// Every flag is checked before anything is loaded.
	loss, err := o.config()
	if err != nil {
		return err
	}
	data, cfg, base, err := prepareTraining(o.globalOptions, &o.dataFlags, &o.modelFlags, &o.optimFlags, o.tokenizer)
	if err != nil {
		return err
	}
	data.Warn = stderr
	ref, err := loadReference(o.ref, o.model, o.threads, cfg.PadID, data.Vocab)
	if err != nil {
		return err
	}
	if ref != nil {
		defer ref.Close()
	}
	rows, eval, err := loadTrainEval(encode.LoadUnpaired, &o.optimFlags, o.dataPath, data)
	if err != nil {
		return err
	}
	desirable := 0
	for _, set := range [][]encode.EncodedUnpaired{rows, eval} {
		if err := encode.PairKL(set, o.batchSize, data.MaxLength, data.Truncation); err != nil {
			return fmt.Errorf("%s: %w", o.dataPath, err)
		}
	}
	for _, r := range rows {
		if r.Desirable {
			desirable++
		}
	}
	if advice := objective.KTOWeightAdvice(desirable, len(rows)-desirable, loss); advice != "" {
		fmt.Fprintf(stderr, "warning: %s (--desirable-weight, --undesirable-weight)\n", advice)
	}
	eng, err := engine.NewEngine(o.model, base, cfg, objective.KTO{Config: loss})
	if err != nil {
		return err
	}
	defer eng.Close()
	printNotices(stderr, eng.Notices())
	printReusedGraph(stderr, eng.ReusedGraph())
	prog := progress.NewProgress(stderr, "reference", "rows")
	rows, from, err := objective.KTOReference(ctx, eng, ref, rows, loss.UsesKL(), o.batchSize, prog)
	if err == nil && len(eval) > 0 {
		eval, _, err = objective.KTOReference(ctx, eng, ref, eval, loss.UsesKL(), o.batchSize, prog)
	}
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("interrupted before training started; nothing was saved")
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "reference log-probs: %s\n", from)
	fmt.Fprintf(stderr, "training %d tensors of %s on %d rows (%d desirable; %s loss, %s, lr %g)\n",
		len(eng.Trainable()), o.model, len(rows), desirable, o.loss, o.optimizer, o.lr)
	ro := o.optimFlags.runOptions("kto")
	ro.Stderr = stderr
	res, err := engine.RunTraining(ctx, eng, rows, eval, ro)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s and %s\n", res.ModelPath, res.MetricsPath)
	if res.EvalAfter != nil {
		fmt.Fprintf(stdout, "held-out metrics (%d rows):\n", len(eval))
		engine.FormatComparison(stdout, res.EvalBefore, res.EvalAfter)
	}
	return nil
}

// loadReference loads the --ref model (nil when path is ""), checking that its vocabulary
// is the policy's (vocab, 0 when unknown).
func loadReference(path, model string, threads int, pad, vocab int64) (*lm.LogProbModel, error) {
	if path == "" {
		return nil, nil
	}
	ref, err := lm.LoadLogProbModel(path, lm.ModelOptions{Threads: threads, PadID: pad})
	if err != nil {
		return nil, err
	}
	if vocab > 0 && ref.VocabSize() != vocab {
		ref.Close()
		return nil, fmt.Errorf("--ref %s has vocabulary %d but --model %s has %d", path, ref.VocabSize(), model, vocab)
	}
	return ref, nil
}
