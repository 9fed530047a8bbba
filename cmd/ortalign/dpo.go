package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/lm"
	"ortalign/pipeline/objective"
	"ortalign/pipeline/progress"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// dpoOptions are the flags of `ortalign dpo`.
type dpoOptions struct {
	*globalOptions
	dataFlags
	modelFlags
	optimFlags
	lossFlags
	referenceFlags
	ref, dataPath, tokenizer string
}

// lossFlags choose the preference loss (TRL's DPOConfig names in kebab case).
type lossFlags struct {
	loss, lossWeights string
	beta              float64
	labelSmoothing    float64
	ipoSum            bool
	fDivergence       string
	fAlpha            float64
	discoPopTau       float64
	useWeighting      bool
	ldAlpha           optionalFloat
	referenceFree     bool
}

func addLossFlags(f *pflag.FlagSet, l *lossFlags) {
	f.StringVar(&l.loss, "loss", objective.LossSigmoid, "loss type, or several comma-separated: "+strings.Join(objective.LossTypes, ", "))
	f.StringVar(&l.lossWeights, "loss-weights", "", "weights of the --loss types, comma-separated (default: all 1)")
	f.Float64Var(&l.beta, "beta", 0.1, "DPO β: the strength of the KL penalty to the reference")
	f.Float64Var(&l.labelSmoothing, "label-smoothing", 0, "label noise ε: cDPO (sigmoid), robust, exo_pair, aot, aot_unpaired")
	f.BoolVar(&l.ipoSum, "ipo-sum-logps", false, "ipo loss on summed log-probs (the IPO paper) instead of TRL's per-token average")
	f.StringVar(&l.fDivergence, "f-divergence", objective.FDivReverseKL, "f-divergence of the implicit reward: reverse_kl, forward_kl, js_divergence or alpha_divergence")
	f.Float64Var(&l.fAlpha, "f-alpha-divergence-coef", objective.DefaultFAlphaCoef, "α of --f-divergence alpha_divergence")
	f.Float64Var(&l.discoPopTau, "discopop-tau", objective.DefaultDiscoPopTau, "τ of the discopop loss")
	f.BoolVar(&l.useWeighting, "use-weighting", false, "WPO: weight each pair by the policy's probability of its completions")
	f.Var(&l.ldAlpha, "ld-alpha", "LD-DPO α in [0, 1]: the weight of completion tokens beyond the shorter completion of the pair (default: off)")
	f.BoolVar(&l.referenceFree, "reference-free", false, "no reference model: reference log-probs are 0")
}

func (l *lossFlags) config() (objective.LossConfig, error) {
	types, err := objective.ParseLossTypes(l.loss)
	if err != nil {
		return objective.LossConfig{}, fmt.Errorf("--loss: %w", err)
	}
	weights, err := objective.ParseWeights(l.lossWeights)
	if err != nil {
		return objective.LossConfig{}, fmt.Errorf("--loss-weights: %w", err)
	}
	c := objective.LossConfig{
		Types: types, Weights: weights, Beta: l.beta, LabelSmoothing: l.labelSmoothing, IPOSumLogps: l.ipoSum,
		UseWeighting: l.useWeighting, ReferenceFree: l.referenceFree,
	}
	if len(types) == 1 {
		c.Type, c.Types = types[0], nil // the single-loss form, as checkpoints record it
	}
	// Options that only apply to one loss or divergence are set only when it is used, so
	// their defaults never make a configuration invalid.
	if l.fDivergence != objective.FDivReverseKL {
		c.FDivergence = l.fDivergence
	}
	if c.FDivergence == objective.FDivAlpha && l.fAlpha != objective.DefaultFAlphaCoef {
		c.FAlphaCoef = l.fAlpha
	}
	if c.Uses(objective.LossDiscoPop) && l.discoPopTau != objective.DefaultDiscoPopTau {
		c.DiscoPopTau = l.discoPopTau
	}
	if l.ldAlpha.set {
		a := l.ldAlpha.v
		c.LDAlpha = &a
	}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("loss flags (--loss, --beta, --label-smoothing, ...): %w", err)
	}
	return c, nil
}

// optionalFloat is a float flag that knows whether it was given.
type optionalFloat struct {
	v   float64
	set bool
}

func (o *optionalFloat) String() string {
	if !o.set {
		return ""
	}
	return strconv.FormatFloat(o.v, 'g', -1, 64)
}

func (o *optionalFloat) Set(s string) error {
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return err
	}
	o.v, o.set = v, true
	return nil
}

func (o *optionalFloat) Type() string { return "float" }

// newDPOCmd builds the command; runF replaces runDPO in tests of flag parsing.
func newDPOCmd(g *globalOptions, runF func(*dpoOptions) error) *cobra.Command {
	o := &dpoOptions{globalOptions: g}
	cmd := &cobra.Command{
		Use:   "dpo --model M.onnx --data D.parquet --out DIR",
		Short: "Align a model on preference pairs with DPO (or IPO / hinge / robust)",
		Long: `dpo trains the model's float initializers on preference pairs with a TRL-style
preference loss. Reference log-probs are read from ref_chosen_logps / ref_rejected_logps
columns, or computed with --ref (default: the starting model) for each step's pairs as the
step comes (all before the first step with --precompute-ref-log-probs). Each step runs
forward and backward in one ONNX Runtime session (the training graph is generated from the
model's own graph); the optimizer runs in Go.

Writes DIR/model.onnx (the input graph with the new weights: same inputs, outputs, names,
opset and external-data layout), DIR/metrics.jsonl (one JSON object per optimizer step,
TRL's metric names) and DIR/checkpoint.bin. Running the same command again resumes from the
checkpoint; Ctrl-C saves one before stopping.`,
		Example: `  ortalign dpo --model model.onnx --data train.parquet --tokenizer tokenizer.json \
      --out run1 --lr 5e-4 --batch-size 8 --epochs 1 --eval-data test.parquet`,
		Args: cobra.NoArgs,
		RunE: runner(o, runF, runDPO),
	}
	f := cmd.Flags()
	addModelFlags(f, &o.modelFlags)
	f.StringVar(&o.ref, "ref", "", "reference model (default: the starting model, or ref_*_logps columns)")
	f.StringVar(&o.dataPath, "data", "", "training pairs (.parquet or .jsonl)")
	f.StringVar(&o.tokenizer, "tokenizer", "", "HuggingFace tokenizer.json (needed for text datasets)")
	addLossFlags(f, &o.lossFlags)
	addReferenceFlags(f, &o.referenceFlags)
	addOptimFlags(f, &o.optimFlags, trainDefaults{lr: 1e-6})
	addDataFlags(f, &o.dataFlags)
	for _, name := range []string{"model", "data", "out"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

// errInterruptedBeforeTraining is a trainer's error when a signal stops it before its
// first step.
var errInterruptedBeforeTraining = fmt.Errorf("%w before training started; nothing was saved", engine.ErrInterrupted)

func runDPO(ctx context.Context, o *dpoOptions, stdout, stderr io.Writer) error {
	// Every flag is checked before anything is loaded.
	loss, err := o.lossFlags.config()
	if err != nil {
		return err
	}
	data, cfg, base, err := prepareTraining(o.globalOptions, &o.dataFlags, &o.modelFlags, &o.optimFlags, o.tokenizer)
	if err != nil {
		return err
	}
	data.Warn = stderr
	var ref *lm.LogProbModel
	if o.ref != "" {
		if ref, err = lm.LoadLogProbModel(o.ref, lm.ModelOptions{Threads: o.threads, PadID: cfg.PadID}); err != nil {
			return err
		}
		defer ref.Close()
		if data.Vocab > 0 && ref.VocabSize() != data.Vocab {
			return fmt.Errorf("--ref %s has vocabulary %d but --model %s has %d", o.ref, ref.VocabSize(), o.model, data.Vocab)
		}
	}
	pairs, eval, err := loadTrainEval(ctx, encode.LoadPairsContext, &o.optimFlags, o.dataPath, data)
	if err != nil {
		return err
	}
	eng, err := engine.NewEngine(o.model, base, cfg, objective.DPO{Loss: loss})
	if err != nil {
		return err
	}
	defer eng.Close()
	printNotices(stderr, eng.Notices())
	printReusedGraph(stderr, eng.ReusedGraph())
	for _, tie := range eng.Ties() {
		fmt.Fprintf(stderr, "training %q as the transpose of %q, as the exporter copied it (--untie trains it separately)\n", tie.Copy, tie.Source)
	}
	// The same batches as training computes them in without --precompute-ref-log-probs.
	refCfg := objective.ReferenceConfig{Batches: eng.TrainingBatches(len(pairs)), Loss: loss, Progress: progress.NewProgress(stderr, "reference", "pairs"), Precompute: o.precomputeRef}
	pairs, from, err := objective.AttachReference(ctx, eng, ref, pairs, refCfg)
	if err == nil && len(eval) > 0 {
		refCfg.Batches = engine.ConsecutiveBatches(len(eval), o.batchSize)
		eval, _, err = objective.AttachReference(ctx, eng, ref, eval, refCfg)
	}
	if errors.Is(err, context.Canceled) {
		return errInterruptedBeforeTraining
	}
	if err != nil {
		return err
	}
	reference := eng.StartingReference()
	if ref != nil {
		if o.precomputeRef {
			ref.Close() // every reference log-prob is computed: its memory is not needed
		}
		reference = objective.ModelReference(ref)
	}
	when := ""
	if eng.NeedsReference(pairs) {
		when = ", each step's as it comes"
	}
	fmt.Fprintf(stderr, "reference log-probs: %s%s\n", from, when)
	fmt.Fprintf(stderr, "training %d tensors of %s on %d pairs (%s loss, %s, lr %g)\n", len(eng.Trainable()), o.model, len(pairs), o.lossFlags.loss, o.optimizer, o.lr)
	ro := o.optimFlags.runOptions("dpo")
	ro.Stderr = stderr
	res, err := engine.RunTrainingWithReference(ctx, eng, pairs, eval, reference, ro)
	if err != nil {
		return err
	}
	printRunSummary(stdout, res, fmt.Sprintf("held-out metrics (%d pairs)", len(eval)))
	return nil
}
