package pipeline

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand"
	"regexp"

	"ortalign/onnx"
	"ortalign/onnx/autodiff"
	"ortalign/onnx/ort"
)

// TrainConfig configures preference training.
type TrainConfig struct {
	Loss        LossConfig
	Optim       OptimConfig
	LR          float64
	Scheduler   string // "constant" or "linear" (to 0 at the last step, as HF's default)
	WarmupSteps int
	MaxGradNorm float64 // 0 disables clipping
	BatchSize   int     // pairs per step
	Epochs      int
	MaxSteps    int // overrides Epochs when > 0
	Seed        int64
	Shuffle     bool
	Threads     int
	PadID       int64
	Freeze      *regexp.Regexp // initializers whose names match stay frozen
	Profile     string         // ORT profile file prefix for the training session ("" = off)
	// TieTransposedCopies: see GraphConfig.
	TieTransposedCopies bool
}

// Trainer owns the training graph's session and the trainable parameters' buffers.
type Trainer struct {
	cfg    TrainConfig
	path   string
	base   *onnx.Model // the user's model; exports write new values into a clone
	names  []string    // trainable initializers
	shapes [][]int64
	params [][]float32
	grads  [][]float32
	gradOf map[string]string // parameter -> gradient output
	ties   []Tie
	sess   *ort.Session
	inputs map[string]bool
	pasts  []pastInput // KV-cache inputs, fed an empty past
	opt    *Optimizer
}

// StepMetrics are one step's values, with TRL's names in JSON.
type StepMetrics struct {
	Loss            float64 `json:"loss"`
	RewardsChosen   float64 `json:"rewards/chosen"`
	RewardsRejected float64 `json:"rewards/rejected"`
	Accuracy        float64 `json:"rewards/accuracies"`
	Margin          float64 `json:"rewards/margins"`
	LogpsChosen     float64 `json:"logps/chosen"`
	LogpsRejected   float64 `json:"logps/rejected"`
	GradNorm        float64 `json:"grad_norm"`
	LearningRate    float64 `json:"learning_rate"`
	Epoch           float64 `json:"epoch"`
	Step            int     `json:"step"`
}

// TrainableNames lists the float32 initializers of m that training updates: every float
// tensor with more than one element from which the logits can be reached without passing
// through a Cos or Sin, minus those matching freeze. The exclusions are the exporter's
// constants, not the PyTorch model's parameters: scalars (scales, epsilons) and the rotary
// embedding's buffers (inv_freq, cached cos/sin tables), which only feed Cos/Sin.
func TrainableNames(m *onnx.Model, freeze *regexp.Regexp) ([]string, error) {
	g := m.Graph()
	// Walk back from the outputs, not through Cos/Sin, marking every value that feeds them.
	producer := onnx.Producers(g)
	feeds := map[string]bool{}
	var stack []string
	for _, o := range g.GetOutput() {
		stack = append(stack, o.GetName())
	}
	for len(stack) > 0 {
		v := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if feeds[v] {
			continue
		}
		feeds[v] = true
		n := producer[v]
		if n == nil || n.GetOpType() == "Cos" || n.GetOpType() == "Sin" {
			continue
		}
		stack = append(stack, onnx.NodeInputs(n)...)
	}
	var names []string
	for _, t := range g.GetInitializer() {
		if onnx.DataType(t.GetDataType()) != onnx.Float || !feeds[t.GetName()] {
			continue
		}
		n, err := onnx.NumElements(t)
		if err != nil {
			return nil, err
		}
		if n <= 1 || (freeze != nil && freeze.MatchString(t.GetName())) {
			continue
		}
		names = append(names, t.GetName())
	}
	return names, nil
}

// GraphConfig says how BuildTrainingGraph turns a causal LM into a training graph.
type GraphConfig struct {
	Loss   LossConfig
	Freeze *regexp.Regexp // initializers whose names match stay frozen
	// TieTransposedCopies trains an initializer that is an exact transposed copy of
	// another (GPT-2's lm_head as torch.onnx.export writes it) as the same weight, as the
	// PyTorch model did; without it the copy trains on its own (an untied model).
	TieTransposedCopies bool
}

// TrainingGraph is a generated training graph and what it trains.
type TrainingGraph struct {
	*autodiff.Result
	Trainable []string // initializers that became inputs, with grad.<name> outputs
	Ties      []Tie    // copies folded into their source (with TieTransposedCopies)
}

// BuildTrainingGraph appends the loss head to a copy of the causal LM m and differentiates
// it: the result computes the loss, sequence_logps and grad.<name> for every trainable
// initializer (TrainableNames), which become inputs. sample is a small batch used to learn
// intermediate shapes; nil means two made-up pairs of token 0.
func BuildTrainingGraph(m *onnx.Model, c GraphConfig, sample []EncodedPair) (*TrainingGraph, error) {
	if err := checkInputs(m.Graph()); err != nil {
		return nil, err
	}
	fwd := m.Clone()
	var ties []Tie
	if c.TieTransposedCopies {
		var err error
		if ties, err = FindTransposedCopies(fwd); err != nil {
			return nil, err
		}
		if err := tieCopies(fwd, ties); err != nil {
			return nil, fmt.Errorf("tie weights: %w", err)
		}
	}
	names, err := TrainableNames(fwd, c.Freeze)
	if err != nil {
		return nil, err
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("no trainable float initializers")
	}
	inputs := modelInputs(fwd)
	pasts, err := pastInputs(fwd.Graph())
	if err != nil {
		return nil, err
	}
	if err := AppendPreferenceLoss(fwd, c.Loss); err != nil {
		return nil, err
	}
	if len(sample) == 0 {
		sample = []EncodedPair{
			{Chosen: Sequence{IDs: make([]int64, 5), CompletionStart: 2}, Rejected: Sequence{IDs: make([]int64, 4), CompletionStart: 2}},
			{Chosen: Sequence{IDs: make([]int64, 3), CompletionStart: 1}, Rejected: Sequence{IDs: make([]int64, 6), CompletionStart: 3}},
		}
	}
	zeros := make([]float64, len(sample))
	feeds := batchFeeds(inputs, pasts, sample, zeros, zeros, 0)
	// A second sample whose batch, pairs and sequence sizes all differ from the first.
	width := 0
	for _, p := range sample {
		width = max(width, len(p.Chosen.IDs), len(p.Rejected.IDs))
	}
	second := make([]EncodedPair, len(sample)+1)
	for i := range second {
		second[i] = EncodedPair{Chosen: Sequence{IDs: make([]int64, width+1), CompletionStart: 1}, Rejected: Sequence{IDs: make([]int64, 2), CompletionStart: 1}}
	}
	zeros2 := make([]float64, len(second))
	res, err := autodiff.Build(fwd, autodiff.Config{
		Loss: LossOutput, Trainable: names, KeepOutputs: []string{SequenceLogpsOutput},
		SampleFeeds: feeds, SecondSampleFeeds: batchFeeds(inputs, pasts, second, zeros2, zeros2, 0),
	})
	if err != nil {
		return nil, fmt.Errorf("build training graph: %w", err)
	}
	return &TrainingGraph{Result: res, Trainable: names, Ties: ties}, nil
}

// NewTrainer builds the training graph of the model at path (already loaded as m) —
// forward, loss head and generated backward — and opens it in ONNX Runtime. sample is a
// small batch used to learn intermediate shapes.
func NewTrainer(path string, m *onnx.Model, cfg TrainConfig, sample []EncodedPair) (*Trainer, error) {
	if err := cfg.Loss.Validate(); err != nil {
		return nil, err
	}
	t := &Trainer{cfg: cfg, path: path, base: m, inputs: modelInputs(m)}
	var err error
	if t.pasts, err = pastInputs(m.Graph()); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	res, err := BuildTrainingGraph(m, GraphConfig{Loss: cfg.Loss, Freeze: cfg.Freeze, TieTransposedCopies: cfg.TieTransposedCopies}, sample)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	t.ties = res.Ties
	names := res.Trainable
	t.gradOf = res.Grads
	for _, name := range names {
		init := onnx.Initializer(m.Graph(), name)
		data, err := onnx.TensorFloats(init)
		if err != nil {
			return nil, fmt.Errorf("%s: initializer %q: %w", path, name, err)
		}
		if _, ok := res.Grads[name]; !ok {
			return nil, fmt.Errorf("%s: no gradient for trainable %q", path, name)
		}
		t.names = append(t.names, name)
		t.shapes = append(t.shapes, append([]int64(nil), init.GetDims()...))
		t.params = append(t.params, data)
		t.grads = append(t.grads, make([]float32, len(data)))
	}
	outputs := []string{LossOutput, SequenceLogpsOutput}
	for _, name := range t.names {
		outputs = append(outputs, res.Grads[name])
	}
	if t.sess, err = newModelSession(res.Model, outputs, ort.Options{Threads: cfg.Threads, ProfilePrefix: cfg.Profile}); err != nil {
		return nil, fmt.Errorf("%s: training graph: %w", path, err)
	}
	sizes := make([]int, len(t.params))
	for i, p := range t.params {
		sizes[i] = len(p)
	}
	if t.opt, err = NewOptimizer(cfg.Optim, sizes); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

// Close releases the session.
func (t *Trainer) Close() {
	if t.sess != nil {
		t.sess.Destroy()
		t.sess = nil
	}
}

// Ties returns the transposed copies trained as their source (see GraphConfig).
func (t *Trainer) Ties() []Tie { return t.ties }

// Trainable returns the names of the trained initializers.
func (t *Trainer) Trainable() []string { return t.names }

// Params returns the live parameter buffers, in Trainable order.
func (t *Trainer) Params() [][]float32 { return t.params }

// Grads returns the last step's gradient buffers (before clipping), in Trainable order.
func (t *Trainer) Grads() [][]float32 { return t.grads }

// modelInputs is the set of m's graph input names.
func modelInputs(m *onnx.Model) map[string]bool {
	in := map[string]bool{}
	for _, v := range m.Graph().GetInput() {
		in[v.GetName()] = true
	}
	return in
}

// batchFeeds builds the model and loss inputs for a batch of pairs; inputs says which of
// attention_mask and position_ids the model takes.
func batchFeeds(inputs map[string]bool, pasts []pastInput, pairs []EncodedPair, refC, refR []float64, padID int64) map[string]*ort.Tensor {
	b := BatchInputs(PairRows(pairs), padID)
	feeds := map[string]*ort.Tensor{inputIDs: b.IDs, CompletionMaskInput: b.CompletionMask}
	if inputs[attentionMask] {
		feeds[attentionMask] = b.AttentionMask
	}
	if inputs[positionIDs] {
		feeds[positionIDs] = b.PositionIDs
	}
	addEmptyPast(feeds, pasts, b.IDs.Shape[0])
	n := int64(len(pairs))
	rc, rr := make([]float32, n), make([]float32, n)
	for i := range pairs {
		rc[i], rr[i] = float32(refC[i]), float32(refR[i])
	}
	feeds[RefChosenInput] = &ort.Tensor{Shape: []int64{n}, F32: rc}
	feeds[RefRejectedInput] = &ort.Tensor{Shape: []int64{n}, F32: rr}
	return feeds
}

// ComputeGradients runs forward and backward on a batch: it fills Grads() and returns
// the metrics of the batch (GradNorm included, LearningRate and Step left to the caller).
func (t *Trainer) ComputeGradients(pairs []EncodedPair, refC, refR []float64) (StepMetrics, error) {
	feeds := batchFeeds(t.inputs, t.pasts, pairs, refC, refR, t.cfg.PadID)
	into := map[string]*ort.Tensor{}
	for i, name := range t.names {
		feeds[name] = &ort.Tensor{Shape: t.shapes[i], F32: t.params[i]}
		into[t.gradOf[name]] = &ort.Tensor{Shape: t.shapes[i], F32: t.grads[i]}
	}
	out, err := t.sess.Run(feeds, into)
	if err != nil {
		return StepMetrics{}, err
	}
	var m StepMetrics
	m.Loss = float64(out[LossOutput].F32[0])
	lp := out[SequenceLogpsOutput].F32
	n := len(pairs)
	beta := t.cfg.Loss.Beta
	for i := 0; i < n; i++ {
		pc, pr := float64(lp[i]), float64(lp[n+i])
		rc, rr := beta*(pc-refC[i]), beta*(pr-refR[i])
		m.RewardsChosen += rc
		m.RewardsRejected += rr
		m.LogpsChosen += pc
		m.LogpsRejected += pr
		if rc > rr {
			m.Accuracy++
		}
	}
	for _, v := range []*float64{&m.RewardsChosen, &m.RewardsRejected, &m.LogpsChosen, &m.LogpsRejected, &m.Accuracy} {
		*v /= float64(n)
	}
	m.Margin = m.RewardsChosen - m.RewardsRejected
	m.GradNorm = GradNorm(t.grads)
	if math.IsNaN(m.Loss) || math.IsInf(m.Loss, 0) || math.IsNaN(m.GradNorm) || math.IsInf(m.GradNorm, 0) {
		return m, fmt.Errorf("non-finite loss %g or gradient norm %g", m.Loss, m.GradNorm)
	}
	return m, nil
}

// Step computes gradients on a batch, clips them and applies the optimizer with lr.
func (t *Trainer) Step(pairs []EncodedPair, refC, refR []float64, lr float64) (StepMetrics, error) {
	m, err := t.ComputeGradients(pairs, refC, refR)
	if err != nil {
		return m, err
	}
	ClipGrads(t.grads, m.GradNorm, t.cfg.MaxGradNorm)
	t.opt.Apply(t.params, t.grads, lr)
	m.LearningRate = lr
	m.Step = t.opt.Step
	return m, nil
}

// Model returns a copy of the user's model holding the current weights: same graph,
// inputs, outputs, names, opset and external-data layout.
func (t *Trainer) Model() (*onnx.Model, error) {
	m := t.base.Clone()
	for i, name := range t.names {
		init := onnx.Initializer(m.Graph(), name)
		if err := onnx.SetTensorFloats(init, t.params[i]); err != nil {
			return nil, fmt.Errorf("set %q: %w", name, err)
		}
	}
	for _, tie := range t.ties {
		src := onnx.Initializer(m.Graph(), tie.Source)
		vals, err := onnx.TensorFloats(src)
		if err != nil {
			return nil, err
		}
		dims := src.GetDims()
		if err := onnx.SetTensorFloats(onnx.Initializer(m.Graph(), tie.Copy), transposed(vals, int(dims[0]), int(dims[1]))); err != nil {
			return nil, fmt.Errorf("set %q: %w", tie.Copy, err)
		}
	}
	return m, nil
}

// Export writes the user's model with the current weights to path (atomically).
func (t *Trainer) Export(path string) error {
	m, err := t.Model()
	if err != nil {
		return err
	}
	if err := m.Save(path, onnx.SaveOptions{}); err != nil {
		return fmt.Errorf("export %s: %w", path, err)
	}
	return nil
}

// LearningRate is the scheduled rate at a 0-based step of total.
func (c TrainConfig) LearningRate(step, total int) float64 {
	if c.WarmupSteps > 0 && step < c.WarmupSteps {
		return c.LR * float64(step+1) / float64(c.WarmupSteps)
	}
	if c.Scheduler == "linear" && total > c.WarmupSteps {
		return c.LR * math.Max(0, float64(total-step)/float64(total-c.WarmupSteps))
	}
	return c.LR
}

// RunConfig says where a training run reports and saves.
type RunConfig struct {
	Checkpoint      string    // checkpoint file; "" disables checkpoints
	CheckpointEvery int       // steps between checkpoints (0: only at the end or on interrupt)
	Metrics         io.Writer // one JSON object per step
	Progress        *Progress
	// Eval, when it has pairs, is evaluated every EvalEvery steps (and after the last);
	// its metrics go to Metrics with TRL's "eval_" names.
	Eval      *EvalSet
	EvalEvery int
}

// EvalSet is held-out pairs with their reference log-probs.
type EvalSet struct {
	Pairs       []EncodedPair
	RefChosen   []float64
	RefRejected []float64
}

// EvalMetrics are held-out metrics with TRL's names.
type EvalMetrics struct {
	Loss            float64 `json:"eval_loss"`
	RewardsChosen   float64 `json:"eval_rewards/chosen"`
	RewardsRejected float64 `json:"eval_rewards/rejected"`
	Accuracy        float64 `json:"eval_rewards/accuracies"`
	Margin          float64 `json:"eval_rewards/margins"`
	LogpsChosen     float64 `json:"eval_logps/chosen"`
	LogpsRejected   float64 `json:"eval_logps/rejected"`
	Epoch           float64 `json:"epoch"`
	Step            int     `json:"step"`
}

// Evaluate computes the loss and metrics of the current weights on held-out pairs, in
// batches of the training batch size, weighting each batch by its pairs. It uses the
// training session, so it overwrites Grads().
func (t *Trainer) Evaluate(e *EvalSet) (EvalMetrics, error) {
	var m EvalMetrics
	bs := max(1, t.cfg.BatchSize)
	for lo := 0; lo < len(e.Pairs); lo += bs {
		hi := min(lo+bs, len(e.Pairs))
		b, err := t.ComputeGradients(e.Pairs[lo:hi], e.RefChosen[lo:hi], e.RefRejected[lo:hi])
		if err != nil {
			return m, fmt.Errorf("evaluate: %w", err)
		}
		w := float64(hi-lo) / float64(len(e.Pairs))
		m.Loss += w * b.Loss
		m.RewardsChosen += w * b.RewardsChosen
		m.RewardsRejected += w * b.RewardsRejected
		m.Accuracy += w * b.Accuracy
		m.Margin += w * b.Margin
		m.LogpsChosen += w * b.LogpsChosen
		m.LogpsRejected += w * b.LogpsRejected
	}
	m.Step = t.opt.Step
	return m, nil
}

// Train runs the configured number of steps over pairs (reference log-probs refC/refR
// per pair), resuming from rc.Checkpoint when it exists. On ctx cancellation it saves a
// checkpoint and returns ctx.Err().
func (t *Trainer) Train(ctx context.Context, pairs []EncodedPair, refC, refR []float64, rc RunConfig) error {
	bs := max(1, t.cfg.BatchSize)
	perEpoch := (len(pairs) + bs - 1) / bs
	if perEpoch == 0 {
		return fmt.Errorf("no training pairs")
	}
	total := t.cfg.MaxSteps
	if total <= 0 {
		total = max(1, t.cfg.Epochs) * perEpoch
	}
	if rc.Checkpoint != "" {
		ok, err := t.loadCheckpoint(rc.Checkpoint)
		if err != nil {
			return err
		}
		if ok && rc.Progress != nil {
			fmt.Fprintf(rc.Progress.Out, "resuming from %s at step %d\n", rc.Checkpoint, t.opt.Step)
		}
	}
	enc := json.NewEncoder(orDiscard(rc.Metrics))
	rc.Progress.Start(total)
	rc.Progress.Add(t.opt.Step)
	var order []int
	orderEpoch := -1
	for step := t.opt.Step; step < total; step++ {
		if err := ctx.Err(); err != nil {
			if rc.Checkpoint != "" {
				if cerr := t.saveCheckpoint(rc.Checkpoint); cerr != nil {
					return fmt.Errorf("interrupted at step %d; checkpoint failed: %w", step, cerr)
				}
			}
			return err
		}
		epoch, k := step/perEpoch, step%perEpoch
		if epoch != orderEpoch {
			order, orderEpoch = epochOrder(len(pairs), t.cfg.Seed, epoch, t.cfg.Shuffle), epoch
		}
		idx := order[k*bs : min((k+1)*bs, len(pairs))]
		batch := make([]EncodedPair, len(idx))
		bc, br := make([]float64, len(idx)), make([]float64, len(idx))
		for j, i := range idx {
			batch[j], bc[j], br[j] = pairs[i], refC[i], refR[i]
		}
		m, err := t.Step(batch, bc, br, t.cfg.LearningRate(step, total))
		if err != nil {
			// The failed step changed nothing (a non-finite loss stops before the update):
			// keep the work done so far.
			if rc.Checkpoint != "" && t.opt.Step > 0 {
				if cerr := t.saveCheckpoint(rc.Checkpoint); cerr != nil {
					return fmt.Errorf("step %d: %w (and saving the checkpoint failed: %v)", step+1, err, cerr)
				}
				return fmt.Errorf("step %d: %w (state after step %d saved to %s)", step+1, err, t.opt.Step, rc.Checkpoint)
			}
			return fmt.Errorf("step %d: %w", step+1, err)
		}
		m.Epoch = float64(step+1) / float64(perEpoch)
		if err := enc.Encode(m); err != nil {
			return fmt.Errorf("write metrics: %w", err)
		}
		rc.Progress.Add(1)
		if rc.Eval != nil && len(rc.Eval.Pairs) > 0 && rc.EvalEvery > 0 && ((step+1)%rc.EvalEvery == 0 || step+1 == total) {
			em, err := t.Evaluate(rc.Eval)
			if err != nil {
				return fmt.Errorf("step %d: %w", step+1, err)
			}
			em.Epoch = m.Epoch
			if err := enc.Encode(em); err != nil {
				return fmt.Errorf("write metrics: %w", err)
			}
		}
		if rc.Checkpoint != "" && rc.CheckpointEvery > 0 && (step+1)%rc.CheckpointEvery == 0 && step+1 < total {
			if err := t.saveCheckpoint(rc.Checkpoint); err != nil {
				return fmt.Errorf("step %d: %w", step+1, err)
			}
		}
	}
	rc.Progress.Done()
	if rc.Checkpoint != "" {
		return t.saveCheckpoint(rc.Checkpoint)
	}
	return nil
}

// epochOrder is the pair order of an epoch: a seeded shuffle, so a resumed run sees the
// same batches.
func epochOrder(n int, seed int64, epoch int, shuffle bool) []int {
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	if shuffle {
		r := rand.New(rand.NewSource(seed*1000003 + int64(epoch)))
		r.Shuffle(n, func(i, j int) { order[i], order[j] = order[j], order[i] })
	}
	return order
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}
