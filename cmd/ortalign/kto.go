package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"ortalign/onnx"
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
	referenceFlags
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
(default: the starting model), computed for each step's rows as the step comes (all
before the first step with --precompute-ref-log-probs). Rows are taken in file order, as
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
	f.StringVar(&o.dataPath, "data", "", "unpaired rows (prompt, completion, label) or preference pairs (.parquet or .jsonl)")
	f.StringVar(&o.loss, "loss", objective.KTOLossKTO, "loss type: "+strings.Join(objective.KTOLossTypes, " or "))
	f.Float64Var(&o.beta, "beta", objective.DefaultKTOBeta, "KTO β: the strength of the KL penalty to the reference")
	f.Float64Var(&o.desirableWeight, "desirable-weight", objective.DefaultKTOWeight, "weight of the desirable rows' losses")
	f.Float64Var(&o.undesirableWeight, "undesirable-weight", objective.DefaultKTOWeight, "weight of the undesirable rows' losses")
	f.StringVar(&o.ref, "ref", "", "reference model (default: the starting model)")
	f.StringVar(&o.tokenizer, "tokenizer", "", "HuggingFace tokenizer.json (needed for text datasets)")
	addReferenceFlags(f, &o.referenceFlags)
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
	s, err := o.prepare(stderr)
	if err != nil {
		return err
	}
	ref, loss := s.ref, s.loss
	if ref != nil {
		defer ref.Close()
	}
	rows, eval, err := o.loadRows(ctx, s.data, loss, stderr)
	if err != nil {
		return err
	}
	eng, err := newNotedEngine(o.model, s.base, s.cfg, objective.KTO{Config: loss}, stderr)
	if err != nil {
		return err
	}
	defer eng.Close()
	reference := eng.StartingReference()
	from := objective.RefFromPolicy
	if ref != nil {
		reference = objective.KTOModelReference(ref, loss.UsesKL())
		from = objective.RefFromModel
	}
	if o.precomputeRef {
		// The reference of the training rows, then of the held-out ones, before training.
		prog := progress.NewProgress(stderr, "reference", "rows")
		// The same batches as training computes them in without --precompute-ref-log-probs.
		if rows, from, err = objective.KTOReference(ctx, eng, ref, rows, loss.UsesKL(), eng.TrainingBatches(len(rows)), prog); err == nil && len(eval) > 0 {
			eval, _, err = objective.KTOReference(ctx, eng, ref, eval, loss.UsesKL(), engine.ConsecutiveBatches(len(eval), o.batchSize), prog)
		}
		if errors.Is(err, context.Canceled) {
			return fmt.Errorf("interrupted before training started; nothing was saved")
		}
		if err != nil {
			return err
		}
		if ref != nil {
			ref.Close() // every reference log-prob is computed: its memory is not needed
		}
	} else {
		// Training computes them as its steps come (engine.Referenced).
		rows, eval = objective.KTOWithoutReference(rows), objective.KTOWithoutReference(eval)
	}
	when := ""
	if eng.NeedsReference(rows) {
		when = ", each step's as it comes"
	}
	fmt.Fprintf(stderr, "reference log-probs: %s%s\n", from, when)
	fmt.Fprintf(stderr, "training %d tensors of %s on %d rows (%d desirable; %s loss, %s, lr %g)\n",
		len(eng.Trainable()), o.model, len(rows), desirableRows(rows), o.loss, o.optimizer, o.lr)
	ro := o.optimFlags.runOptions("kto")
	ro.Stderr = stderr
	res, err := engine.RunTrainingWithReference(ctx, eng, rows, eval, reference, ro)
	if err != nil {
		return err
	}
	printRunSummary(stdout, res, fmt.Sprintf("held-out metrics (%d rows)", len(eval)))
	return nil
}

// ktoSetup is what runKTO prepares before reading the data.
type ktoSetup struct {
	loss objective.KTOConfig
	data encode.DataOptions
	cfg  engine.TrainConfig
	base *onnx.Model
	ref  *lm.LogProbModel // nil without --ref
}

// prepare checks every flag before anything is loaded, then loads ONNX Runtime, the
// model and the --ref model.
func (o *ktoOptions) prepare(stderr io.Writer) (ktoSetup, error) {
	var s ktoSetup
	var err error
	if s.loss, err = o.config(); err != nil {
		return s, err
	}
	if s.data, s.cfg, s.base, err = prepareTraining(o.globalOptions, &o.dataFlags, &o.modelFlags, &o.optimFlags, o.tokenizer); err != nil {
		return s, err
	}
	s.data.Warn = stderr
	s.ref, err = loadReference(o.ref, o.model, o.threads, s.cfg.PadID, s.data.Vocab)
	return s, err
}

// loadRows reads the training and held-out rows and forms their KL sequences in blocks
// of --batch-size; an imbalance of labels that the weights do not offset is a warning.
func (o *ktoOptions) loadRows(ctx context.Context, data encode.DataOptions, loss objective.KTOConfig, stderr io.Writer) (rows, eval []encode.EncodedUnpaired, err error) {
	if rows, eval, err = loadTrainEval(ctx, encode.LoadUnpairedContext, &o.optimFlags, o.dataPath, data); err != nil {
		return nil, nil, err
	}
	for _, set := range [][]encode.EncodedUnpaired{rows, eval} {
		if err := encode.PairKL(set, o.batchSize, data.MaxLength, data.Truncation); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", o.dataPath, err)
		}
	}
	d := desirableRows(rows)
	if advice := objective.KTOWeightAdvice(d, len(rows)-d, loss); advice != "" {
		fmt.Fprintf(stderr, "warning: %s (--desirable-weight, --undesirable-weight)\n", advice)
	}
	return rows, eval, nil
}

// desirableRows counts the rows labelled desirable.
func desirableRows(rows []encode.EncodedUnpaired) int {
	n := 0
	for _, r := range rows {
		if r.Desirable {
			n++
		}
	}
	return n
}

// newNotedEngine builds a trainer's engine and reports what it decided on its own:
// notices, a reused training graph, weights trained as the transpose of another.
func newNotedEngine[T any](model string, base *onnx.Model, cfg engine.TrainConfig, obj engine.Objective[T], stderr io.Writer) (*engine.Engine[T], error) {
	eng, err := engine.NewEngine(model, base, cfg, obj)
	if err != nil {
		return nil, err
	}
	printNotices(stderr, eng.Notices())
	printReusedGraph(stderr, eng.ReusedGraph())
	for _, tie := range eng.Ties() {
		fmt.Fprintf(stderr, "training %q as the transpose of %q, as the exporter copied it (--untie trains it separately)\n", tie.Copy, tie.Source)
	}
	return eng, nil
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
