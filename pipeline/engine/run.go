package engine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand"
	"ortalign/pipeline/progress"
	"os"
	"path/filepath"
)

// RunOptions are a training run's outputs and reporting, shared by every objective.
type RunOptions struct {
	// Out is the run's directory: the model (ModelFile), metrics.jsonl and
	// checkpoint.bin. A checkpoint found there is resumed.
	Out             string
	ModelFile       string // the trained model's file name in Out; "" means model.onnx
	CheckpointEvery int    // optimizer steps between checkpoints (0: only at the end or on interrupt)
	EvalSteps       int    // evaluate every N optimizer steps and after the last (0: only before and after)
	Label           string
	Stderr          io.Writer // progress and notices
}

// RunResult is what a finished run wrote and measured.
type RunResult struct {
	ModelPath, MetricsPath, CheckpointPath string
	// EvalBefore and EvalAfter are the held-out metrics of the starting and the trained
	// weights (nil without held-out data).
	EvalBefore, EvalAfter Metrics
}

// ErrInterrupted wraps the context's error when a run stops on a signal; the
// checkpoint then holds the last finished step.
var ErrInterrupted = errors.New("interrupted")

// RunTraining trains e on items, evaluating eval (when non-empty) before, every
// EvalSteps and after training, and writes the trained model to Out/model.onnx in the
// user's graph and layout. Interrupted runs leave a checkpoint that the same call resumes.
// Items of a Referenced objective that lack their reference values get them from the
// starting weights (RunTrainingWithReference with e.StartingReference()).
func RunTraining[T any](ctx context.Context, e *Engine[T], items, eval []T, o RunOptions) (*RunResult, error) {
	return RunTrainingWithReference(ctx, e, items, eval, e.StartingReference(), o)
}

// RunTrainingWithReference is RunTraining with the reference values that items and eval
// lack (see Referenced) computed by ref: the training items' as their steps come
// (ItemsWithReference), the held-out items' before the first evaluation.
func RunTrainingWithReference[T any](ctx context.Context, e *Engine[T], items, eval []T, ref Reference[T], o RunOptions) (*RunResult, error) {
	res, stderr, err := o.Start()
	if err != nil {
		return nil, err
	}
	if len(eval) > 0 {
		if ref != nil && e.NeedsReference(eval) {
			if eval, err = ComputeReference(ctx, ref, eval, ConsecutiveBatches(len(eval), e.cfg.BatchSize), nil); err != nil {
				return nil, Interrupted(err, "before training started; nothing was saved")
			}
		}
		if res.EvalBefore, err = e.Evaluate(ctx, eval); err != nil {
			return nil, Interrupted(err, "before training started; nothing was saved")
		}
	}
	src, err := e.ItemsWithReference(items, ref)
	if err != nil {
		return nil, err
	}
	var every []T
	if o.EvalSteps > 0 {
		every = eval
	}
	if err := RunEngine(ctx, e, src, o, res, stderr, every, func() error { return e.Export(res.ModelPath) }); err != nil {
		return nil, err
	}
	if len(eval) > 0 {
		if res.EvalAfter, err = e.Evaluate(ctx, eval); err != nil {
			return nil, Interrupted(err, "after training; the model was written")
		}
	}
	return res, nil
}

// start creates Out and names the run's files.
func (o RunOptions) Start() (*RunResult, io.Writer, error) {
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, nil, fmt.Errorf("output directory: %w", err)
	}
	res := &RunResult{
		ModelPath:      filepath.Join(o.Out, cmp.Or(o.ModelFile, "model.onnx")),
		MetricsPath:    filepath.Join(o.Out, "metrics.jsonl"),
		CheckpointPath: filepath.Join(o.Out, "checkpoint.bin"),
	}
	stderr := o.Stderr
	if stderr == nil {
		stderr = io.Discard
	}
	return res, stderr, nil
}

// runEngine runs the engine's loop over src into res's files, evaluating eval every
// EvalSteps, and calls export (which writes the trained model) while the final
// checkpoint is written.
func RunEngine[T any](ctx context.Context, e *Engine[T], src Source[T], o RunOptions, res *RunResult, stderr io.Writer, eval []T, export func() error) error {
	rc := RunConfig[T]{
		Checkpoint: res.CheckpointPath, CheckpointEvery: o.CheckpointEvery, MetricsPath: res.MetricsPath,
		Progress: progress.NewProgress(stderr, o.Label, "steps"), Eval: eval, EvalEvery: o.EvalSteps,
	}
	exported := false
	var exportErr error
	rc.AlongFinalSave = func() { exported, exportErr = true, export() }
	if err := e.Run(ctx, src, rc); err != nil {
		return Interrupted(err, "checkpoint saved to "+res.CheckpointPath+": run the same command to resume")
	}
	if !exported {
		exportErr = export()
	}
	return exportErr
}

func Interrupted(err error, what string) error {
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("%w %s", ErrInterrupted, what)
	}
	return err
}

// SplitEval holds out a fraction of items for evaluation: a seeded draw of
// ceil(fraction·n) items (at least one, and at least one left to train on), each side
// kept in its original order.
func SplitEval[T any](items []T, fraction float64, seed int64) (train, eval []T, err error) {
	if fraction <= 0 {
		return items, nil, nil
	}
	if fraction >= 1 {
		return nil, nil, fmt.Errorf("eval fraction must be in (0, 1), got %g", fraction)
	}
	n := int(math.Ceil(fraction * float64(len(items))))
	if n >= len(items) {
		return nil, nil, fmt.Errorf("eval fraction %g of %d items leaves none to train on", fraction, len(items))
	}
	held := map[int]bool{}
	for _, i := range rand.New(rand.NewSource(seed)).Perm(len(items))[:n] {
		held[i] = true
	}
	for i, it := range items {
		if held[i] {
			eval = append(eval, it)
		} else {
			train = append(train, it)
		}
	}
	return train, eval, nil
}

// FormatComparison prints held-out metrics before and after training as a table.
func FormatComparison(w io.Writer, before, after Metrics) {
	width := 0
	for _, x := range after {
		width = max(width, len(x.Name))
	}
	fmt.Fprintf(w, "  %-*s  %12s  %12s\n", width, "metric", "before", "after")
	for _, x := range after {
		b, ok := before.Get(x.Name)
		bs := "-"
		if ok {
			bs = fmt.Sprintf("%.6g", b)
		}
		fmt.Fprintf(w, "  %-*s  %12s  %12.6g\n", width, x.Name, bs, x.Value)
	}
}
