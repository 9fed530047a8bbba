package engine

import (
	"context"
	"fmt"
	"hash"
	"math"
	"regexp"
	"slices"

	"ortalign/internal/hugepages"
	"ortalign/onnx"
	"ortalign/onnx/autodiff"
	"ortalign/onnx/ort"
	"ortalign/pipeline/lm"
)

// LossOutput is the scalar training loss every objective's graph outputs.
const LossOutput = "loss"

// Objective is one training method plugged into the Engine: the loss head it appends to
// the model's graph, how a micro-batch of its items becomes the graph's inputs, and the
// metrics it reads back. The Engine owns everything else (parameters, optimizer,
// schedule, accumulation, clipping, checkpoints, evaluation, metrics file, progress), so
// a new objective is one file. T is the objective's item: a preference pair, a sequence.
type Objective[T any] interface {
	// Name is the method's name in logs and checkpoints ("dpo", "sft").
	Name() string
	// Settings are the objective's options that decide the update, recorded in
	// checkpoints so that a resume with other ones is refused.
	Settings() map[string]string
	// AppendLoss turns a copy of the causal LM into the objective's forward graph: its
	// output LossOutput is the scalar loss, the mean over the micro-batch's Weight units;
	// the outputs named by Outputs are read for metrics.
	AppendLoss(m *onnx.Model) error
	// Outputs lists the forward graph's outputs besides the loss that Metrics reads.
	Outputs() []string
	// Feeds builds the graph's data inputs for a micro-batch.
	Feeds(in ModelInputs, batch []T) (map[string]*ort.Tensor, error)
	// Weight is the number of units the micro-batch's loss averages over (pairs,
	// completion tokens): accumulated micro-batches are combined in proportion to it, so
	// that accumulation equals one large batch.
	Weight(batch []T) float64
	// Metrics reads a micro-batch's metrics (loss first) from the run's outputs.
	Metrics(batch []T, out map[string]*ort.Tensor) (Metrics, error)
	// Samples returns two tiny made-up batches whose batch and sequence sizes differ,
	// used to learn the graph's intermediate shapes.
	Samples() (first, second []T)
	// Fingerprint writes an item's content (ids, targets) to h: a checkpoint records the
	// dataset's fingerprint so that a resume on other data is refused.
	Fingerprint(h hash.Hash, item T)
}

// Unpadded is implemented by objectives whose per-token inputs and outputs are sized by
// the micro-batch's own longest row (online RL's rollouts), so that their rows are never
// padded beyond it (TrainConfig.PadToMultipleOf does not apply).
type Unpadded interface{ UnpaddedRows() }

// Learning-rate schedules, with Hugging Face Trainer's names and formulas.
const (
	SchedulerConstant           = "constant"
	SchedulerConstantWithWarmup = "constant_with_warmup"
	SchedulerLinear             = "linear"
	SchedulerCosine             = "cosine"
)

// TrainConfig configures the engine: what trains, the optimizer and schedule, batching.
type TrainConfig struct {
	Optim       OptimConfig
	LR          float64
	Scheduler   string  // SchedulerConstant ("" too), SchedulerConstantWithWarmup, SchedulerLinear or SchedulerCosine
	WarmupSteps int     // linear warm-up optimizer steps
	WarmupRatio float64 // warm-up as a fraction of all steps (rounded up), when WarmupSteps is 0
	MaxGradNorm float64 // 0 disables clipping
	BatchSize   int     // items per micro-batch (HF's per_device_train_batch_size)
	GradAccum   int     // micro-batches per optimizer step (HF's gradient_accumulation_steps; 0 means 1)
	Epochs      int     // passes over the data; 0 means 1
	MaxSteps    int     // optimizer steps; overrides Epochs when > 0
	Seed        int64
	Shuffle     bool
	Threads     int
	PadID       int64
	Freeze      *regexp.Regexp // initializers whose names match stay frozen
	Profile     string         // ORT profile file prefix for the training session ("" = off)
	// TieTransposedCopies: see GraphConfig.
	TieTransposedCopies bool
	// GradientCheckpointing: see GraphConfig.
	GradientCheckpointing bool
	// PadToMultipleOf rounds every micro-batch's sequence length up to a multiple (TRL's
	// pad_to_multiple_of), so that a run brings few distinct shapes: the training graph
	// is opened once per shape (see shapes.go). 0 means DefaultPadToMultipleOf; 1 pads to
	// the longest row only.
	PadToMultipleOf int
	// Adapter, when set, trains a parameter-efficient adapter (LoRA) instead of the
	// model's weights: the training forward is Adapter.Apply's model, only its Trainable
	// initializers train (Freeze still applies to them; ties are not looked for),
	// checkpoints hold only them, and Model/Export fold them into the user's graph.
	Adapter Adapter
	// GraphCache, when set, is a directory (the run's) where the engine keeps the training
	// graph it builds, keyed by the model and every option that shapes the graph, and
	// reuses it when the key matches, so that a resumed run starts without rebuilding it
	// (see graphcache.go). A damaged or mismatching cache is rebuilt, never an error.
	GraphCache string
}

// Validate reports settings out of range. Messages name settings, not CLI flags.
func (c TrainConfig) Validate() error {
	switch {
	case c.Optim.Name != OptimSGD && c.Optim.Name != OptimAdamW:
		return fmt.Errorf("optimizer must be %s or %s, got %q", OptimSGD, OptimAdamW, c.Optim.Name)
	case !(c.LR > 0):
		return fmt.Errorf("learning rate must be positive, got %g", c.LR)
	case c.Optim.WeightDecay < 0:
		return fmt.Errorf("weight decay must be >= 0, got %g", c.Optim.WeightDecay)
	case c.Optim.Beta1 < 0 || c.Optim.Beta1 >= 1 || c.Optim.Beta2 < 0 || c.Optim.Beta2 >= 1:
		return fmt.Errorf("adam betas must be in [0, 1), got %g and %g", c.Optim.Beta1, c.Optim.Beta2)
	case c.Optim.Eps < 0:
		return fmt.Errorf("adam epsilon must be >= 0, got %g", c.Optim.Eps)
	case c.MaxGradNorm < 0:
		return fmt.Errorf("max grad norm must be >= 0, got %g", c.MaxGradNorm)
	case c.BatchSize <= 0:
		return fmt.Errorf("batch size must be positive, got %d", c.BatchSize)
	case c.GradAccum < 0:
		return fmt.Errorf("gradient accumulation steps must be positive, got %d", c.GradAccum)
	case c.MaxSteps < 0:
		return fmt.Errorf("max steps must be >= 0, got %d", c.MaxSteps)
	case c.Epochs < 0:
		return fmt.Errorf("epochs must be positive, got %d", c.Epochs)
	case c.PadToMultipleOf < 0:
		return fmt.Errorf("pad-to multiple must be >= 0, got %d", c.PadToMultipleOf)
	case c.WarmupSteps < 0 || c.WarmupRatio < 0 || c.WarmupRatio > 1:
		return fmt.Errorf("warm-up must be >= 0 steps or a ratio in [0, 1]")
	}
	switch c.Scheduler {
	case "", SchedulerConstant, SchedulerConstantWithWarmup, SchedulerLinear, SchedulerCosine:
	default:
		return fmt.Errorf("learning-rate scheduler must be %s, %s, %s or %s, got %q",
			SchedulerConstant, SchedulerConstantWithWarmup, SchedulerLinear, SchedulerCosine, c.Scheduler)
	}
	return nil
}

func (c TrainConfig) Accum() int { return max(1, c.GradAccum) }

// Warmup is the number of warm-up steps of a run of total optimizer steps.
func (c TrainConfig) Warmup(total int) int {
	if c.WarmupSteps > 0 {
		return c.WarmupSteps
	}
	return int(math.Ceil(c.WarmupRatio * float64(total)))
}

// LearningRate is the rate of the 0-based optimizer step of total, as Hugging Face's
// schedulers (LambdaLR) give it: warm-up from 0 over the warm-up steps, then constant,
// linear decay to 0 at total, or a half-cosine to 0.
func (c TrainConfig) LearningRate(step, total int) float64 {
	warm := c.Warmup(total)
	if c.Scheduler == SchedulerConstant || c.Scheduler == "" {
		return c.LR
	}
	if step < warm {
		return c.LR * float64(step) / float64(max(1, warm))
	}
	switch c.Scheduler {
	case SchedulerLinear:
		return c.LR * math.Max(0, float64(total-step)/float64(max(1, total-warm)))
	case SchedulerCosine:
		progress := float64(step-warm) / float64(max(1, total-warm))
		return c.LR * math.Max(0, 0.5*(1+math.Cos(math.Pi*progress)))
	}
	return c.LR
}

// ModelInputs knows which inputs a causal LM takes, and builds them for right-padded rows.
type ModelInputs struct {
	has   map[string]bool
	pasts []lm.PastInput
	pad   int64
	// multiple is the sequence-length multiple rows are padded to (TrainConfig.PadToMultipleOf).
	multiple int
}

// batch right-pads rows to the longest, rounded up to the padding multiple.
func (in ModelInputs) Batch(rows []lm.Sequence) lm.Batch {
	return lm.PaddedBatchInputs(rows, in.pad, in.multiple)
}

// Rows returns input_ids, attention_mask and position_ids (those the model takes), the
// empty KV-cache past, and completion_mask for rows.
func (in ModelInputs) Rows(rows []lm.Sequence) map[string]*ort.Tensor {
	b := in.Batch(rows)
	feeds := map[string]*ort.Tensor{lm.InputIDs: b.IDs, lm.CompletionMaskInput: b.CompletionMask}
	if in.has[lm.AttentionMask] {
		feeds[lm.AttentionMask] = b.AttentionMask
	}
	if in.has[lm.PositionIDs] {
		feeds[lm.PositionIDs] = b.PositionIDs
	}
	lm.AddEmptyPast(feeds, in.pasts, b.IDs.Shape[0])
	return feeds
}

// GraphConfig says which initializers of a causal LM a training graph trains.
type GraphConfig struct {
	Freeze *regexp.Regexp // initializers whose names match stay frozen
	// TieTransposedCopies trains an initializer that is an exact transposed copy of
	// another (GPT-2's lm_head as torch.onnx.export writes it) as the same weight, as the
	// PyTorch model did; without it the copy trains on its own (an untied model).
	TieTransposedCopies bool
	// Trainable, when non-nil, lists the initializers that train (minus those matching
	// Freeze) instead of TrainableNames' choice.
	Trainable []string
	// GradientCheckpointing recomputes each decoder layer's forward in the backward
	// pass instead of keeping its activations (autodiff.Config.GradientCheckpointing):
	// same gradients, less memory, more compute.
	GradientCheckpointing bool
	// Values, when set, is called with the trainable initializers once they are
	// chosen, before differentiation, and returns their values in that order: the
	// caller's own copies (the engine's parameter buffers), which the shape probe then
	// reads instead of copying the weights itself (autodiff.Config.Values). It does
	// not change the graph.
	Values func(trainable []string) ([][]float32, error)
}

// TrainingGraph is a generated training graph and what it trains.
type TrainingGraph struct {
	*autodiff.Result
	Trainable []string // initializers that became inputs, with grad.<name> outputs
	Ties      []lm.Tie // copies folded into their source (with TieTransposedCopies)
	Outputs   []string // the objective's outputs kept beside the loss
}

// BuildTrainingGraph appends obj's loss head to a copy of the causal LM m and
// differentiates it: the result computes the loss, the objective's outputs and
// grad.<name> for every trainable initializer (TrainableNames), which become inputs.
// Shapes are learnt from the objective's tiny samples, so building does not depend on
// the data's sequence lengths.
func BuildTrainingGraph[T any](m *onnx.Model, obj Objective[T], c GraphConfig) (*TrainingGraph, error) {
	if err := lm.CheckInputs(m.Graph()); err != nil {
		return nil, err
	}
	fwd := m.Clone()
	var ties []lm.Tie
	if c.TieTransposedCopies {
		var err error
		if ties, err = lm.FindTransposedCopies(fwd); err != nil {
			return nil, err
		}
		if err := lm.TieCopies(fwd, ties); err != nil {
			return nil, fmt.Errorf("tie weights: %w", err)
		}
	}
	names, err := lm.TrainableNames(fwd, c.Freeze)
	if err != nil {
		return nil, err
	}
	if c.Trainable != nil {
		names = nil
		for _, name := range c.Trainable {
			if c.Freeze == nil || !c.Freeze.MatchString(name) {
				names = append(names, name)
			}
		}
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("no trainable float initializers")
	}
	var values map[string][]float32
	if c.Values != nil {
		vals, err := c.Values(names)
		if err != nil {
			return nil, err
		}
		values = make(map[string][]float32, len(names))
		for i, name := range names {
			values[name] = vals[i]
		}
	}
	in, err := ModelInputsOf(fwd, 0)
	if err != nil {
		return nil, err
	}
	if err := obj.AppendLoss(fwd); err != nil {
		return nil, err
	}
	first, second := obj.Samples()
	feeds, err := obj.Feeds(in, first)
	if err != nil {
		return nil, err
	}
	feeds2, err := obj.Feeds(in, second)
	if err != nil {
		return nil, err
	}
	res, err := autodiff.Build(fwd, autodiff.Config{
		Loss: LossOutput, Trainable: names, KeepOutputs: obj.Outputs(),
		SampleFeeds: feeds, SecondSampleFeeds: feeds2, GradientCheckpointing: c.GradientCheckpointing,
		Values: values,
	})
	if err != nil {
		return nil, fmt.Errorf("build training graph: %w", err)
	}
	return &TrainingGraph{Result: res, Trainable: names, Ties: ties, Outputs: obj.Outputs()}, nil
}

// modelInputsOf reads which inputs m takes.
func ModelInputsOf(m *onnx.Model, pad int64) (ModelInputs, error) {
	pasts, err := lm.PastInputs(m.Graph())
	if err != nil {
		return ModelInputs{}, err
	}
	return ModelInputs{has: lm.ModelInputs(m), pasts: pasts, pad: pad}, nil
}

// Engine trains a model's parameters on one objective: it owns the training graph's
// session, the parameter and gradient buffers, the optimizer state, and the loop.
type Engine[T any] struct {
	cfg    TrainConfig
	obj    Objective[T]
	path   string
	base   *onnx.Model // the user's model; exports write new values into a clone
	graph  *TrainingGraph
	in     ModelInputs
	names  []string // trainable initializers
	shapes [][]int64
	params [][]float32
	grads  [][]float32
	accum  [][]float32       // sum of scaled micro-batch gradients (only with accumulation)
	train  *lm.ShapeSessions // the training graph, opened per batch shape
	eval   *ort.Session      // forward-only graph, opened on first evaluation
	// evalFixed are the forward graph's large frozen weights, fed on every run (see
	// feedLargeInitializers).
	evalFixed map[string]*ort.Tensor
	opt       *Optimizer
	// totals are the running sums of the objective's counting metrics (Metric.Sum), so a
	// step logs the count so far, as TRL's num_tokens; checkpoints keep them.
	Totals map[string]float64
	// adapted is the adapter's training forward and how it folds back (TrainConfig.Adapter).
	adapted *Adapted
	// reusedGraph is the cache file the training graph was read from ("" when built).
	reusedGraph string
}

// NewEngine builds the training graph of the model at path (already loaded as m) for
// obj — forward, loss head and generated backward — and opens it in ONNX Runtime.
func NewEngine[T any](path string, m *onnx.Model, cfg TrainConfig, obj Objective[T]) (*Engine[T], error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	e := &Engine[T]{cfg: cfg, obj: obj, path: path, base: m, Totals: map[string]float64{}}
	var err error
	if e.in, err = ModelInputsOf(m, cfg.PadID); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	e.in.multiple = cfg.PadToMultipleOf
	if e.in.multiple == 0 {
		e.in.multiple = lm.DefaultPadToMultipleOf
	}
	if _, ok := any(obj).(Unpadded); ok {
		e.in.multiple = 1
	}
	train, gc := m, GraphConfig{Freeze: cfg.Freeze, TieTransposedCopies: cfg.TieTransposedCopies, GradientCheckpointing: cfg.GradientCheckpointing}
	if cfg.Adapter != nil {
		// The frozen base weights are read by the shape probe, the training and the
		// forward sessions: one aligned copy of those a mapped file left unaligned, not
		// one per reader.
		if err := m.AlignFloats(lm.FedMinElements); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if e.adapted, err = cfg.Adapter.Apply(m); err != nil {
			return nil, fmt.Errorf("%s: %s: %w", path, cfg.Adapter.Name(), err)
		}
		train, gc.Trainable, gc.TieTransposedCopies = e.adapted.Model, e.adapted.Trainable, false
	}
	// The trained values are read out of the model as soon as the build has chosen
	// them, for its shape probe to read as well (GraphConfig.Values); a graph from the
	// cache names them once read.
	var read *trainedValues
	gc.Values = func(names []string) ([][]float32, error) {
		v, err := readTrained(train, names)
		read = &v
		return v.params, err
	}
	if e.graph, e.reusedGraph, err = cachedTrainingGraph(cfg.GraphCache, train, obj, gc, cfg.Adapter); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if read == nil || !slices.Equal(read.names, e.graph.Trainable) {
		v, err := readTrained(train, e.graph.Trainable)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		read = &v
	}
	for i, name := range read.names {
		if _, ok := e.graph.Grads[name]; !ok {
			return nil, fmt.Errorf("%s: no gradient for trainable %q", path, name)
		}
		e.grads = append(e.grads, hugepages.Floats(len(read.params[i])))
	}
	e.names, e.shapes, e.params = read.names, read.shapes, read.params
	outputs := append([]string{LossOutput}, e.graph.Outputs...)
	for _, name := range e.names {
		outputs = append(outputs, e.graph.Grads[name])
	}
	e.train = lm.NewShapeSessions(e.graph.Model, outputs, ort.Options{Threads: cfg.Threads, ProfilePrefix: cfg.Profile})
	sizes := make([]int, len(e.params))
	for i, p := range e.params {
		sizes[i] = len(p)
	}
	if e.opt, err = NewOptimizer(cfg.Optim, sizes); err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

// trainedValues are copies of trained initializers' values, with their names and shapes.
type trainedValues struct {
	names  []string
	shapes [][]int64
	params [][]float32
}

// readTrained copies the values of m's initializers names.
func readTrained(m *onnx.Model, names []string) (trainedValues, error) {
	v := trainedValues{names: slices.Clone(names)}
	for _, name := range names {
		init := onnx.Initializer(m.Graph(), name)
		if init == nil {
			return trainedValues{}, fmt.Errorf("no initializer %q", name)
		}
		data, err := onnx.TensorFloats(init)
		if err != nil {
			return trainedValues{}, fmt.Errorf("initializer %q: %w", name, err)
		}
		v.shapes = append(v.shapes, slices.Clone(init.GetDims()))
		v.params = append(v.params, data)
	}
	return v, nil
}

// Close releases the sessions.
func (e *Engine[T]) Close() {
	if e.train != nil {
		e.train.Close()
	}
	e.ReleaseForward()
}

// ReleaseForward closes the forward-only session (Forward opens it again when needed):
// its memory arena keeps the largest batch's activations, which a run that only needed
// it once (the reference log-probs) should not carry through training.
func (e *Engine[T]) ReleaseForward() {
	if e.eval != nil {
		e.eval.Destroy()
		e.eval, e.evalFixed = nil, nil
	}
}

// Ties returns the transposed copies trained as their source (see GraphConfig).
func (e *Engine[T]) Ties() []lm.Tie { return e.graph.Ties }

// Notices say what the training graph's gradient checkpointing could not do, and that
// the graph could not be cached (TrainConfig.GraphCache).
func (e *Engine[T]) Notices() []string { return e.graph.Notices }

// ReusedGraph is the cached training graph the engine reused (TrainConfig.GraphCache),
// or "" when it built the graph.
func (e *Engine[T]) ReusedGraph() string { return e.reusedGraph }

// Trainable returns the names of the trained initializers.
func (e *Engine[T]) Trainable() []string { return e.names }

// Params returns the live parameter buffers, in Trainable order.
func (e *Engine[T]) Params() [][]float32 { return e.params }

// Grads returns the last step's gradient buffers (before clipping), in Trainable order.
func (e *Engine[T]) Grads() [][]float32 { return e.grads }

// Step is the number of optimizer steps applied so far.
func (e *Engine[T]) Step() int { return e.opt.Step }

// paramFeeds adds the parameters to feeds.
func (e *Engine[T]) paramFeeds(feeds map[string]*ort.Tensor) {
	for i, name := range e.names {
		feeds[name] = ort.MustFloatTensor(e.shapes[i], e.params[i])
	}
}

// ComputeGradients runs forward and backward on one micro-batch: it fills Grads() with
// the gradient of the micro-batch's loss and returns its metrics.
func (e *Engine[T]) ComputeGradients(batch []T) (Metrics, error) {
	feeds, err := e.obj.Feeds(e.in, batch)
	if err != nil {
		return nil, err
	}
	e.paramFeeds(feeds)
	into := map[string]*ort.Tensor{}
	for i, name := range e.names {
		into[e.graph.Grads[name]] = ort.MustFloatTensor(e.shapes[i], e.grads[i])
	}
	sess, err := e.train.Session(feeds)
	if err != nil {
		return nil, fmt.Errorf("%s: training graph: %w", e.path, err)
	}
	out, err := sess.Run(feeds, into)
	if err != nil {
		return nil, err
	}
	return e.obj.Metrics(batch, out)
}

// StepOn computes the gradient of one optimizer step over micro-batches (combined in
// proportion to their Weight, so that accumulation equals one batch), clips it, and
// applies the optimizer with lr. The metrics are the micro-batches' weighted means plus
// grad_norm (before clipping). A non-finite loss or gradient stops before the update.
func (e *Engine[T]) StepOn(micro [][]T, lr float64) (Metrics, error) {
	m, err := e.Gradients(micro)
	if err != nil {
		return m, err
	}
	norm := m.Value("grad_norm")
	ClipGrads(e.grads, norm, e.cfg.MaxGradNorm)
	e.opt.Apply(e.params, e.grads, lr)
	return m, nil
}

// gradients leaves in Grads() the combined gradient of the micro-batches.
func (e *Engine[T]) Gradients(micro [][]T) (Metrics, error) {
	weights := make([]float64, len(micro))
	total := 0.0
	for k, b := range micro {
		weights[k] = e.obj.Weight(b)
		total += weights[k]
	}
	parts := make([]Metrics, 0, len(micro))
	if len(micro) > 1 && e.accum == nil {
		e.accum = make([][]float32, len(e.grads))
		for i, g := range e.grads {
			e.accum[i] = hugepages.Floats(len(g))
		}
	}
	for k, b := range micro {
		m, err := e.ComputeGradients(b)
		if err != nil {
			return nil, err
		}
		parts = append(parts, m)
		if len(micro) == 1 {
			break
		}
		scale := float32(0)
		if total > 0 {
			scale = float32(weights[k] / total)
		}
		acc, grads, first := e.accum, e.grads, k == 0
		parallelChunks(grads, func(i, lo, hi int) {
			a, g := acc[i][lo:hi], grads[i][lo:hi]
			if first {
				for j := range a {
					a[j] = scale * g[j]
				}
				return
			}
			for j := range a {
				a[j] += scale * g[j]
			}
		})
	}
	if len(micro) > 1 {
		for i := range e.grads {
			copy(e.grads[i], e.accum[i])
		}
	}
	m := weightedMean(parts, weights)
	norm := GradNorm(e.grads)
	m = append(m, Metric{Name: "grad_norm", Value: norm})
	loss := m.Value(LossOutput)
	if math.IsNaN(loss) || math.IsInf(loss, 0) || math.IsNaN(norm) || math.IsInf(norm, 0) {
		return m, fmt.Errorf("non-finite loss %g or gradient norm %g", loss, norm)
	}
	return m, nil
}

// Evaluate computes the objective's metrics on held-out items with the current weights,
// in micro-batches of the training batch size, each weighted by its Weight. It runs the
// forward graph only (no backward pass, no gradient buffers touched).
func (e *Engine[T]) Evaluate(ctx context.Context, items []T) (Metrics, error) {
	var parts []Metrics
	var weights []float64
	err := e.Forward(ctx, items, func(batch []T, out map[string]*ort.Tensor) error {
		m, err := e.obj.Metrics(batch, out)
		if err != nil {
			return err
		}
		parts, weights = append(parts, m), append(weights, e.obj.Weight(batch))
		return nil
	})
	if err != nil {
		return nil, err
	}
	return weightedMean(parts, weights), nil
}

// Forward runs the objective's forward graph (loss and the objective's outputs, no
// backward pass) with the current weights over items, in micro-batches of the training
// batch size, handing each batch's outputs to read. The session is opened on first use.
func (e *Engine[T]) Forward(ctx context.Context, items []T, read func(batch []T, out map[string]*ort.Tensor) error) error {
	if e.eval == nil {
		fwd := e.graph.Model.Clone()
		g := fwd.Graph()
		keep := map[string]bool{LossOutput: true}
		for _, o := range e.graph.Outputs {
			keep[o] = true
		}
		outs := g.Output[:0]
		for _, o := range g.GetOutput() {
			if keep[o.GetName()] {
				outs = append(outs, o)
			}
		}
		g.Output = outs
		onnx.Prune(g, lm.ValueNames(g.GetInput()))
		fwd, e.evalFixed = lm.FeedLargeInitializers(fwd)
		sess, err := lm.NewModelSession(fwd, append([]string{LossOutput}, e.graph.Outputs...), ort.Options{Threads: e.cfg.Threads})
		if err != nil {
			return fmt.Errorf("%s: forward graph: %w", e.path, err)
		}
		e.eval = sess
	}
	bs := e.cfg.BatchSize
	for lo := 0; lo < len(items); lo += bs {
		if err := ctx.Err(); err != nil {
			return err
		}
		batch := items[lo:min(lo+bs, len(items))]
		feeds, err := e.obj.Feeds(e.in, batch)
		if err != nil {
			return err
		}
		e.paramFeeds(feeds)
		for name, t := range e.evalFixed {
			feeds[name] = t
		}
		out, err := e.eval.Run(feeds, nil)
		if err != nil {
			return fmt.Errorf("forward: %w", err)
		}
		if err := read(batch, out); err != nil {
			return err
		}
	}
	return nil
}

// Model returns a copy of the user's model holding the current weights: same graph,
// inputs, outputs, names, opset and external-data layout.
func (e *Engine[T]) Model() (*onnx.Model, error) { return e.model(false) }

// model is Model; shared makes the trained initializers share the live parameter
// buffers instead of copying them (for a model written out at once: no second copy of
// the weights in memory).
func (e *Engine[T]) model(shared bool) (*onnx.Model, error) {
	m := e.base.Clone()
	if e.adapted != nil {
		if err := e.adapted.Fold(m, e.values()); err != nil {
			return nil, fmt.Errorf("merge %s: %w", e.cfg.Adapter.Name(), err)
		}
		return m, nil
	}
	set := onnx.SetTensorFloats
	if shared {
		set = onnx.ShareTensorFloats
	}
	for i, name := range e.names {
		init := onnx.Initializer(m.Graph(), name)
		if err := set(init, e.params[i]); err != nil {
			return nil, fmt.Errorf("set %q: %w", name, err)
		}
	}
	for _, tie := range e.graph.Ties {
		src := onnx.Initializer(m.Graph(), tie.Source)
		vals, ok := onnx.FloatsView(src)
		if !ok {
			var err error
			if vals, err = onnx.TensorFloats(src); err != nil {
				return nil, err
			}
		}
		dims := src.GetDims()
		if err := set(onnx.Initializer(m.Graph(), tie.Copy), lm.Transposed(vals, int(dims[0]), int(dims[1]))); err != nil {
			return nil, fmt.Errorf("set %q: %w", tie.Copy, err)
		}
	}
	return m, nil
}

// Export writes the user's model with the current weights to path (atomically); with an
// adapter, the adapter is merged into it, and also saved on its own when the adapter asks
// for that (Adapted.SaveDir).
func (e *Engine[T]) Export(path string) error {
	m, err := e.model(true)
	if err != nil {
		return err
	}
	if err := m.Save(path, onnx.SaveOptions{}); err != nil {
		return fmt.Errorf("export %s: %w", path, err)
	}
	if e.adapted != nil && e.adapted.SaveDir != "" {
		return e.SaveAdapter(e.adapted.SaveDir)
	}
	return nil
}

// values maps the trainable initializers to their live buffers.
func (e *Engine[T]) values() map[string][]float32 {
	v := make(map[string][]float32, len(e.names))
	for i, name := range e.names {
		v[name] = e.params[i]
	}
	return v
}
