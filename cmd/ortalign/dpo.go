package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"

	"github.com/spf13/cobra"

	"ortalign/onnx"
	"ortalign/pipeline"
)

// dpoOptions are the flags of `ortalign dpo`.
type dpoOptions struct {
	*globalOptions
	dataFlags
	model, ref, dataPath, evalData, tokenizer, out string
	loss                                           string
	beta, labelSmoothing                           float64
	ipoSum                                         bool
	optimizer                                      string
	lr, weightDecay, maxGradNorm                   float64
	scheduler                                      string
	warmup                                         int
	batchSize, maxSteps, epochs                    int
	seed                                           int64
	noShuffle                                      bool
	freeze                                         string
	untie                                          bool
	checkpointEvery                                int
	evalEvery                                      int
}

func newDPOCmd(g *globalOptions) *cobra.Command {
	o := &dpoOptions{globalOptions: g}
	cmd := &cobra.Command{
		Use:   "dpo --model M.onnx --data D.parquet --out DIR",
		Short: "Align a model on preference pairs with DPO (or IPO / hinge)",
		Long: `dpo trains the model's float initializers on preference pairs with a TRL-style
preference loss. Reference log-probs are computed once up front with --ref (default: the
starting model), or read from ref_chosen_logps / ref_rejected_logps columns. Each step runs
forward and backward in one ONNX Runtime session (the training graph is generated from the
model's own graph); the optimizer runs in Go.

Writes DIR/model.onnx (the input graph with the new weights: same inputs, outputs, names,
opset and external-data layout), DIR/metrics.jsonl (one JSON object per step, TRL's metric
names) and DIR/checkpoint.bin. Running the same command again resumes from the
checkpoint; Ctrl-C saves one before stopping.`,
		Example: `  ortalign dpo --model model.onnx --data train.parquet --tokenizer tokenizer.json \
      --out run1 --optimizer adamw --lr 5e-4 --batch-size 8 --epochs 1 --eval-data test.parquet`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDPO(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.model, "model", "", "starting policy (ONNX causal LM)")
	f.StringVar(&o.ref, "ref", "", "reference model (default: the starting model, or ref_*_logps columns)")
	f.StringVar(&o.dataPath, "data", "", "training pairs (.parquet or .jsonl)")
	f.StringVar(&o.evalData, "eval-data", "", "held-out pairs: reward accuracy before and after training")
	f.StringVar(&o.tokenizer, "tokenizer", "", "HuggingFace tokenizer.json (needed for text datasets)")
	f.StringVar(&o.out, "out", "", "output directory")
	f.StringVar(&o.loss, "loss", pipeline.LossSigmoid, "loss: sigmoid (DPO), ipo, hinge, robust")
	f.Float64Var(&o.beta, "beta", 0.1, "DPO beta")
	f.Float64Var(&o.labelSmoothing, "label-smoothing", 0, "label noise ε: cDPO (sigmoid loss) or rDPO (robust loss)")
	f.BoolVar(&o.ipoSum, "ipo-sum-logps", false, "ipo loss on summed log-probs (the IPO paper) instead of TRL's per-token average")
	f.StringVar(&o.optimizer, "optimizer", pipeline.OptimAdamW, "optimizer: sgd or adamw")
	f.Float64Var(&o.lr, "lr", 5e-4, "learning rate")
	f.Float64Var(&o.weightDecay, "weight-decay", 0, "weight decay (decoupled for adamw, L2 for sgd)")
	f.Float64Var(&o.maxGradNorm, "max-grad-norm", 1.0, "clip the gradient norm (0 = off)")
	f.StringVar(&o.scheduler, "lr-scheduler", "linear", "learning-rate schedule: linear or constant")
	f.IntVar(&o.warmup, "warmup-steps", 0, "linear warm-up steps")
	f.IntVar(&o.batchSize, "batch-size", 8, "pairs per step")
	f.IntVar(&o.maxSteps, "max-steps", 0, "steps to run (overrides --epochs when > 0)")
	f.IntVar(&o.epochs, "epochs", 1, "passes over the data")
	f.Int64Var(&o.seed, "seed", 42, "shuffling seed")
	f.BoolVar(&o.noShuffle, "no-shuffle", false, "keep the data order")
	f.StringVar(&o.freeze, "freeze", "", "regexp of initializer names to keep frozen")
	f.BoolVar(&o.untie, "untie", false, "train transposed copies of a weight (GPT-2's exported lm_head) separately instead of as the weight they copy")
	f.IntVar(&o.checkpointEvery, "checkpoint-every", 50, "steps between checkpoints")
	f.IntVar(&o.evalEvery, "eval-every", 0, "with --eval-data: log eval_* metrics to metrics.jsonl every N steps and after the last (0 = only before and after training)")
	addDataFlags(f, &o.dataFlags)
	for _, name := range []string{"model", "data", "out"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

func (o *dpoOptions) trainConfig(pad int64) (pipeline.TrainConfig, error) {
	c := pipeline.TrainConfig{
		Loss:        pipeline.LossConfig{Type: o.loss, Beta: o.beta, LabelSmoothing: o.labelSmoothing, IPOSumLogps: o.ipoSum},
		Optim:       pipeline.OptimConfig{Name: o.optimizer, WeightDecay: o.weightDecay},
		LR:          o.lr,
		Scheduler:   o.scheduler,
		WarmupSteps: o.warmup,
		MaxGradNorm: o.maxGradNorm,
		BatchSize:   o.batchSize,
		Epochs:      o.epochs,
		MaxSteps:    o.maxSteps,
		Seed:        o.seed,
		Shuffle:     !o.noShuffle,
		Threads:     o.threads,
		PadID:       pad,

		TieTransposedCopies: !o.untie,
	}
	if err := c.Loss.Validate(); err != nil {
		return c, fmt.Errorf("--loss/--beta/--label-smoothing: %w", err)
	}
	switch {
	case o.optimizer != pipeline.OptimSGD && o.optimizer != pipeline.OptimAdamW:
		return c, fmt.Errorf("--optimizer must be sgd or adamw, got %q", o.optimizer)
	case !(o.lr > 0):
		return c, fmt.Errorf("--lr must be positive, got %g", o.lr)
	case o.weightDecay < 0:
		return c, fmt.Errorf("--weight-decay must be >= 0, got %g", o.weightDecay)
	case o.scheduler != "linear" && o.scheduler != "constant":
		return c, fmt.Errorf("--lr-scheduler must be linear or constant, got %q", o.scheduler)
	case o.batchSize <= 0:
		return c, fmt.Errorf("--batch-size must be positive, got %d", o.batchSize)
	case o.maxSteps < 0 || o.epochs <= 0:
		return c, fmt.Errorf("--max-steps must be >= 0 and --epochs positive")
	}
	if o.freeze != "" {
		re, err := regexp.Compile(o.freeze)
		if err != nil {
			return c, fmt.Errorf("--freeze: %w", err)
		}
		c.Freeze = re
	}
	return c, o.dataFlags.validate()
}

func runDPO(ctx context.Context, o *dpoOptions, stdout, stderr io.Writer) error {
	tok, err := loadTokenizer(o.tokenizer)
	if err != nil {
		return err
	}
	cfg, err := o.trainConfig(padID(tok))
	if err != nil {
		return err
	}
	if err := o.initORT(); err != nil {
		return err
	}
	base, err := onnx.Load(o.model)
	if err != nil {
		return err
	}
	mo := pipeline.ModelOptions{Threads: o.threads, PadID: cfg.PadID}
	start, err := pipeline.NewLogProbModel(o.model, base, mo)
	if err != nil {
		return err
	}
	defer start.Close()
	ref := start
	if o.ref != "" {
		if ref, err = pipeline.LoadLogProbModel(o.ref, mo); err != nil {
			return err
		}
		defer ref.Close()
		if ref.VocabSize() != start.VocabSize() {
			return fmt.Errorf("--ref %s has vocabulary %d but --model %s has %d", o.ref, ref.VocabSize(), o.model, start.VocabSize())
		}
	}
	train, err := loadPairs(o.dataPath, o.dataFlags, tok, o.tokenizer, start.VocabSize(), 0, 1, stderr)
	if err != nil {
		return err
	}
	if len(train.pairs) == 0 {
		return fmt.Errorf("%s: no pairs to train on", o.dataPath)
	}
	var eval *loadedPairs
	if o.evalData != "" {
		if eval, err = loadPairs(o.evalData, o.dataFlags, tok, o.tokenizer, start.VocabSize(), 0, 1, stderr); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return fmt.Errorf("--out: %w", err)
	}

	refC, refR, err := referenceLogps(ctx, o, train.pairs, ref, stderr)
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("interrupted before training started; nothing was saved")
	}
	if err != nil {
		return err
	}
	var before evalResult
	if eval != nil {
		if before, err = evaluate(ctx, start, ref, eval.pairs, o.beta); err != nil {
			return err
		}
	}

	trainer, err := pipeline.NewTrainer(o.model, base, cfg, train.pairs[:min(2, len(train.pairs))])
	if err != nil {
		return err
	}
	defer trainer.Close()
	for _, tie := range trainer.Ties() {
		fmt.Fprintf(stderr, "training %q as the transpose of %q, as the exporter copied it (--untie trains it separately)\n", tie.Copy, tie.Source)
	}
	checkpoint := filepath.Join(o.out, "checkpoint.bin")
	metricsPath := filepath.Join(o.out, "metrics.jsonl")
	flags := os.O_CREATE | os.O_WRONLY | os.O_TRUNC
	if _, err := os.Stat(checkpoint); err == nil {
		flags = os.O_CREATE | os.O_WRONLY | os.O_APPEND // resuming: keep the earlier steps' metrics
	}
	metrics, err := os.OpenFile(metricsPath, flags, 0o644)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	defer metrics.Close()
	fmt.Fprintf(stderr, "training %d tensors of %s on %d pairs (%s loss, %s, lr %g)\n", len(trainer.Trainable()), o.model, len(train.pairs), o.loss, o.optimizer, o.lr)
	rc := pipeline.RunConfig{
		Checkpoint: checkpoint, CheckpointEvery: o.checkpointEvery, Metrics: metrics,
		Progress: pipeline.NewProgress(stderr, "dpo", "steps"),
	}
	if eval != nil && o.evalEvery > 0 {
		evalRefC, evalRefR, err := referenceLogps(ctx, o, eval.pairs, ref, stderr)
		if err != nil {
			return err
		}
		rc.Eval = &pipeline.EvalSet{Pairs: eval.pairs, RefChosen: evalRefC, RefRejected: evalRefR}
		rc.EvalEvery = o.evalEvery
	}
	err = trainer.Train(ctx, train.pairs, refC, refR, rc)
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("interrupted; checkpoint saved to %s: run the same command to resume", checkpoint)
	}
	if err != nil {
		return err
	}
	modelPath := filepath.Join(o.out, "model.onnx")
	if err := trainer.Export(modelPath); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s and %s\n", modelPath, metricsPath)
	if eval != nil {
		trained, err := trainer.Model()
		if err != nil {
			return err
		}
		policy, err := pipeline.NewLogProbModel(modelPath, trained, mo)
		if err != nil {
			return err
		}
		defer policy.Close()
		after, err := evaluate(ctx, policy, ref, eval.pairs, o.beta)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "held-out %s (%d pairs):\n", o.evalData, after.Pairs)
		fmt.Fprintf(stdout, "  policy prefers chosen (log-prob chosen > rejected): %5.1f%% -> %5.1f%%\n", 100*before.preferChosen, 100*after.preferChosen)
		fmt.Fprintf(stdout, "  reward accuracy (β·log-ratio chosen > rejected):    %5.1f%% -> %5.1f%%\n", 100*before.RewardAccuracy, 100*after.RewardAccuracy)
		fmt.Fprintf(stdout, "  mean reward margin:                                 %6.3f -> %6.3f\n", before.MeanMargin, after.MeanMargin)
	}
	return nil
}

// referenceLogps returns the reference log-probs of every training pair: from the
// dataset's ref_*_logps columns when all pairs have them and no --ref is given, else
// computed once with the reference model.
func referenceLogps(ctx context.Context, o *dpoOptions, pairs []pipeline.EncodedPair, ref *pipeline.LogProbModel, stderr io.Writer) ([]float64, []float64, error) {
	refC, refR := make([]float64, len(pairs)), make([]float64, len(pairs))
	fromData := o.ref == ""
	for i, p := range pairs {
		if p.RefChosenLogps == nil || p.RefRejectedLogps == nil {
			fromData = false
			break
		}
		refC[i], refR[i] = *p.RefChosenLogps, *p.RefRejectedLogps
	}
	if fromData {
		fmt.Fprintf(stderr, "reference log-probs: from the dataset's ref_chosen_logps/ref_rejected_logps\n")
		return refC, refR, nil
	}
	progress := pipeline.NewProgress(stderr, "reference", "pairs")
	progress.Start(len(pairs))
	scores, _, err := pipeline.ScorePairs(ctx, ref, nil, pairs, pipeline.ScoreConfig{Beta: o.beta, BatchSize: o.batchSize, Progress: progress})
	progress.Done()
	if err != nil {
		return nil, nil, fmt.Errorf("reference log-probs: %w", err)
	}
	for i, s := range scores {
		refC[i], refR[i] = s.ChosenLogps, s.RejectedLogps
	}
	return refC, refR, nil
}

// evalResult is a held-out evaluation: TRL's reward accuracy against the reference
// (0 when policy and reference are the same model, since rewards tie) and how often the
// policy itself gives the chosen completion the higher log-prob.
type evalResult struct {
	pipeline.ScoreSummary
	preferChosen float64
}

// evaluate scores held-out pairs under policy against ref.
func evaluate(ctx context.Context, policy, ref *pipeline.LogProbModel, pairs []pipeline.EncodedPair, beta float64) (evalResult, error) {
	scores, sum, err := pipeline.ScorePairs(ctx, policy, ref, pairs, pipeline.ScoreConfig{Beta: beta, BatchSize: 16})
	r := evalResult{ScoreSummary: sum}
	for _, s := range scores {
		if s.ChosenLogps > s.RejectedLogps {
			r.preferChosen++
		}
	}
	if len(scores) > 0 {
		r.preferChosen /= float64(len(scores))
	}
	return r, err
}
