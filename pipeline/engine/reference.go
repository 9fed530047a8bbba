package engine

import (
	"context"
	"fmt"

	"ortalign/onnx"
	"ortalign/onnx/ort"
	"ortalign/pipeline/progress"
)

// Referenced is implemented by objectives whose items carry reference values: what a
// frozen reference model computes on them, which the loss compares the policy with (DPO's
// reference log-probs). An objective declares its need by implementing it; RunTraining
// then gives the items that lack them their values from the starting weights (adapters
// off for LoRA) as the loop reaches the steps that use them — one forward pass per
// micro-batch — instead of in a pass over the whole dataset before the first step.
type Referenced[T any] interface {
	// HasReference reports whether item carries its reference values.
	HasReference(item T) bool
	// ForReference returns a copy of batch ready for the reference pass: reference
	// values set to placeholders, which the outputs WithReference reads do not depend on.
	ForReference(batch []T) []T
	// WithReference returns a copy of batch carrying the reference values read from out:
	// the objective's forward outputs (Outputs) over ForReference(batch), run with the
	// reference weights.
	WithReference(batch []T, out map[string]*ort.Tensor) ([]T, error)
}

// Reference computes the reference values of a run's items (see Referenced), a batch at
// a time. A value depends, to the last bit, on the batch it is computed in (its padded
// width, the other rows it is summed beside), so a run computes every training item's in
// its micro-batch of the first epoch (Engine.TrainingBatches), whenever the run first
// needs it, and a pass before training (ComputeReference) uses the same batches: the
// values are the same where a run is resumed or how far it runs, and the first step
// computes just its own batches.
type Reference[T any] interface {
	// Compute returns copies of batches carrying their reference values, advancing prog
	// (nil reports nothing) by each batch's items.
	Compute(ctx context.Context, batches [][]T, prog *progress.Progress) ([][]T, error)
}

// NeedsReference reports whether the engine's objective is Referenced and some of items
// lack their reference values.
func (e *Engine[T]) NeedsReference(items []T) bool {
	r, ok := e.obj.(Referenced[T])
	if !ok {
		return false
	}
	for _, it := range items {
		if !r.HasReference(it) {
			return true
		}
	}
	return false
}

// StartingReference returns the Reference of a Referenced objective computed by its own
// forward graph with the starting weights: before the first update the starting weights are the live
// parameters; after it (or after a resume) they are the trained initializers' values in
// the user's model — for LoRA, the adapters' initial values, whose B is zero: adapters
// off over the same base weights. No second copy of the weights is kept: the values are
// read where the model holds them (a mapped file's pages, let go again after the pass;
// tensors the file left unaligned are copied into the gradient buffers, free between
// steps), and the forward session is closed after each call, so that no arena of it
// stays through training. It returns nil when the objective is not Referenced.
func (e *Engine[T]) StartingReference() Reference[T] {
	r, ok := e.obj.(Referenced[T])
	if !ok {
		return nil
	}
	return startingReference[T]{e: e, r: r}
}

// startingReference is Engine.StartingReference.
type startingReference[T any] struct {
	e *Engine[T]
	r Referenced[T]
}

func (s startingReference[T]) Compute(ctx context.Context, batches [][]T, prog *progress.Progress) ([][]T, error) {
	e := s.e
	defer e.ReleaseForward()
	if e.opt.Step > 0 {
		start, err := e.startingParams()
		if err != nil {
			return nil, fmt.Errorf("reference: %w", err)
		}
		if e.adapted == nil {
			e.base.ReleaseResident() // the pages the copies were read from
		}
		live := e.params
		// Forward feeds e.params: for this pass they are the starting values.
		e.params = start
		defer func() {
			e.params = live
			if e.adapted == nil {
				e.base.ReleaseResident()
			}
		}()
	}
	out := make([][]T, len(batches))
	for k, b := range batches {
		err := e.Forward(ctx, s.r.ForReference(b), func(batch []T, res map[string]*ort.Tensor) error {
			var err error
			out[k], err = s.r.WithReference(batch, res)
			prog.Add(len(batch))
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("reference: %w", err)
		}
	}
	return out, nil
}

// TrainingBatches returns the micro-batches of the first epoch over n items, as lists of
// indexes (the last may be short, and hold items the epoch leaves out): the batches a run
// computes its training items' reference values in (see Reference).
func (e *Engine[T]) TrainingBatches(n int) [][]int {
	return chunks(EpochOrder(n, e.cfg.Seed, 0, e.cfg.Shuffle), e.cfg.BatchSize)
}

// ConsecutiveBatches splits n items into consecutive batches of size (the last may be
// short), as lists of indexes: the batches of a pass over them in order, as held-out
// items are evaluated.
func ConsecutiveBatches(n, size int) [][]int {
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	return chunks(order, size)
}

// chunks splits order into consecutive pieces of size (the last may be short).
func chunks(order []int, size int) [][]int {
	var out [][]int
	for lo := 0; lo < len(order); lo += size {
		out = append(out, order[lo:min(lo+size, len(order))])
	}
	return out
}

// startingParams returns the starting values of the trained initializers, in Trainable
// order: views of the training forward's initializers where they can be read in place;
// the others (a mapped model file leaves raw data unaligned) are copied into the
// gradient buffers, which hold nothing between steps (a step's gradients are written
// over them), so that no memory is taken for them.
func (e *Engine[T]) startingParams() ([][]float32, error) {
	m := e.base
	if e.adapted != nil {
		m = e.adapted.Model
	}
	out := make([][]float32, len(e.names))
	for i, name := range e.names {
		init := onnx.Initializer(m.Graph(), name)
		if init == nil {
			return nil, fmt.Errorf("%s: no initializer %q", e.path, name)
		}
		v, ok := onnx.FloatsView(init)
		if !ok {
			v = e.grads[i]
			raw := init.GetRawData()
			if onnx.DataType(init.GetDataType()) == onnx.Float && littleEndian && len(raw) == 4*len(v) {
				copy(floatBytes(v), raw) // unaligned raw data, as a view would read it
			} else {
				vals, err := onnx.TensorFloats(init)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", e.path, err)
				}
				if len(vals) != len(v) {
					return nil, fmt.Errorf("%s: initializer %q has %d values, the trained tensor %d", e.path, name, len(vals), len(v))
				}
				copy(v, vals)
			}
		}
		if len(v) != len(e.params[i]) {
			return nil, fmt.Errorf("%s: initializer %q has %d values, the trained tensor %d", e.path, name, len(v), len(e.params[i]))
		}
		out[i] = v
	}
	return out, nil
}

// ComputeReference returns a copy of items carrying the reference values ref computes in
// batches (lists of indexes covering every item once): Engine.TrainingBatches for a run's
// training items, so that the values are those training computes as its steps come;
// ConsecutiveBatches for held-out ones, as RunTraining computes theirs. prog (nil reports
// nothing) counts the items.
func ComputeReference[T any](ctx context.Context, ref Reference[T], items []T, batches [][]int, prog *progress.Progress) ([]T, error) {
	prog.Start(len(items))
	defer prog.Done()
	done, err := ref.Compute(ctx, gather(items, batches), prog)
	if err != nil {
		return nil, err
	}
	out := make([]T, len(items))
	has := make([]bool, len(items))
	if err := scatter(out, has, batches, done); err != nil {
		return nil, err
	}
	for i, ok := range has {
		if !ok {
			return nil, fmt.Errorf("reference: item %d is in no batch", i)
		}
	}
	return out, nil
}

// gather returns the batches of items that idx lists.
func gather[T any](items []T, idx [][]int) [][]T {
	out := make([][]T, len(idx))
	for k, b := range idx {
		out[k] = make([]T, len(b))
		for n, i := range b {
			out[k][n] = items[i]
		}
	}
	return out
}

// scatter puts batches back at the indexes idx lists (gather's inverse), marking them in
// has when it is not nil.
func scatter[T any](into []T, has []bool, idx [][]int, batches [][]T) error {
	if len(batches) != len(idx) {
		return fmt.Errorf("reference: %d batches back for %d", len(batches), len(idx))
	}
	for k, b := range idx {
		if len(batches[k]) != len(b) {
			return fmt.Errorf("reference: %d items back for a batch of %d", len(batches[k]), len(b))
		}
		for n, i := range b {
			into[i] = batches[k][n]
			if has != nil {
				has[i] = true
			}
		}
	}
	return nil
}
