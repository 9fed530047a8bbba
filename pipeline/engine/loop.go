package engine

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"ortalign/pipeline/progress"
	"strconv"
	"time"
)

// Source supplies a run's optimizer steps to the engine's loop (Engine.Run), a round at a
// time. Offline data is a source of rounds of one step (Engine.Items); an online objective
// turns a round of prompts into rollouts and cuts them into the round's steps. The loop
// owns everything else: schedule, optimizer, accumulation, metrics, progress, evaluation,
// checkpoints, resume, and saving on interrupt or failure.
type Source[T any] interface {
	// Plan is the run's shape (steps, epochs, rounds).
	Plan() Plan
	// Fingerprint names the data (its size and a digest): a checkpoint records it so
	// that a resume on other data is refused.
	Fingerprint() string
	// Settings are the source's own options that decide the update (sampling, rewards),
	// recorded in checkpoints beside the objective's; nil for none.
	Settings() map[string]string
	// Round returns the round that begins at the 0-based optimizer step (a multiple of
	// Plan().RoundSteps), made with the engine's current weights.
	Round(ctx context.Context, step int) (*Round[T], error)
}

// Round is a source's next optimizer steps.
type Round[T any] struct {
	// Steps holds each optimizer step's micro-batches; the loop stops at the plan's
	// total, inside a round too.
	Steps [][][]T
	// Extra, when set, is what a step's metrics line adds after the step's own metrics
	// (what was measured on the round's rollouts).
	Extra func(step Metrics) Metrics
	// Summary, when set, makes the round log one line instead of one per step: Summary
	// of the round's step metrics and the last step's learning rate, then epoch and step.
	Summary func(steps []Metrics, lr float64) Metrics
}

// Plan is the shape of a run: how items become micro-batches and optimizer steps.
type Plan struct {
	Items, BatchSize, Accum int
	MicroPerEpoch           int // micro-batches in an epoch (the last may be short)
	StepsPerEpoch           int // optimizer steps in an epoch (the last may have fewer micro-batches)
	Total                   int // optimizer steps of the run
	// RoundSteps is the number of optimizer steps a round takes (0 means 1): a
	// checkpoint is only written, and resumed, between rounds.
	RoundSteps int
	RoundUnit  string // what RoundSteps counts, for the inside-a-round error
}

func (p Plan) roundSteps() int { return max(1, p.RoundSteps) }

// Plan returns the run's shape over n items.
func (c TrainConfig) Plan(n int) (Plan, error) {
	if n == 0 {
		return Plan{}, fmt.Errorf("no training items")
	}
	p := Plan{Items: n, BatchSize: c.BatchSize, Accum: c.Accum()}
	p.MicroPerEpoch = (n + p.BatchSize - 1) / p.BatchSize
	p.StepsPerEpoch = (p.MicroPerEpoch + p.Accum - 1) / p.Accum
	p.Total = c.MaxSteps
	if p.Total <= 0 {
		p.Total = max(1, c.Epochs) * p.StepsPerEpoch
	}
	return p, nil
}

// RunConfig says where a training run reports and saves.
type RunConfig[T any] struct {
	Checkpoint      string // checkpoint file; "" disables checkpoints
	CheckpointEvery int    // optimizer steps between checkpoints (0: only at the end or on interrupt)
	// MetricsPath is metrics.jsonl: one JSON object per step (and per evaluation), each
	// step's with its wall-clock seconds (StepTimeMetric), and a last line with TRL's
	// train_runtime, train_samples_per_second and train_steps_per_second (of the steps
	// this process ran) and the epoch. That last line has no step: a resumed run first
	// cuts the file back to the checkpoint's step, which drops it, so that the file ends
	// up equal, line for line, to an uninterrupted run's apart from the wall-clock values
	// (WallClock).
	MetricsPath string
	// Metrics, when set, also receives every line.
	Metrics  io.Writer
	Progress *progress.Progress
	// Eval, when non-empty, is evaluated every EvalEvery steps and after the last; its
	// metrics are logged with TRL's "eval_" prefix.
	Eval      []T
	EvalEvery int
	// AlongFinalSave, when set, runs while the last checkpoint is written, once every
	// step is done (not on an interrupted or failed run): the export, which like the
	// checkpoint only reads the weights, so that the two writes overlap.
	AlongFinalSave func()
}

// Train runs the configured optimizer steps over items (Run over Items).
func (e *Engine[T]) Train(ctx context.Context, items []T, rc RunConfig[T]) error {
	src, err := e.Items(items)
	if err != nil {
		return err
	}
	return e.Run(ctx, src, rc)
}

// Run is the training loop: it takes src's rounds until the plan's last step, resuming
// from rc.Checkpoint when it exists. On ctx cancellation (checked between rounds) it
// saves a checkpoint and returns ctx.Err(); a failed step changes nothing and the state
// before it is saved.
func (e *Engine[T]) Run(ctx context.Context, src Source[T], rc RunConfig[T]) error {
	plan := src.Plan()
	settings := e.RunSettings(src)
	// The weights are in the engine's own buffers now: the pages of the model file that
	// loading and the reference pass read need not stay resident through training.
	e.base.ReleaseResident()
	if err := e.resume(rc, plan, settings); err != nil {
		return err
	}
	log, err := openMetrics(rc.MetricsPath, e.opt.Step)
	if err != nil {
		return err
	}
	defer log.Close()
	w := io.Writer(log)
	if rc.Metrics != nil {
		w = io.MultiWriter(log, rc.Metrics)
	}
	enc := json.NewEncoder(w)
	write := func(line Metrics) error {
		if err := enc.Encode(line); err != nil {
			return fmt.Errorf("write metrics: %w", err)
		}
		return nil
	}
	save := func() error {
		if rc.Checkpoint == "" {
			return nil
		}
		return e.SaveCheckpoint(rc.Checkpoint, settings)
	}
	// fail reports err of step+1, which changed nothing, keeping the work done so far; on
	// an interrupt it saves the state and returns the context's error.
	fail := func(step int, err error) error {
		if ctxErr := ctx.Err(); ctxErr != nil {
			if cerr := save(); cerr != nil {
				return fmt.Errorf("interrupted at step %d; checkpoint failed: %w", step, cerr)
			}
			return ctxErr
		}
		if rc.Checkpoint == "" || e.opt.Step == 0 {
			return fmt.Errorf("step %d: %w (not applied)", step+1, err)
		}
		if cerr := save(); cerr != nil {
			return fmt.Errorf("step %d: %w (and saving the checkpoint failed: %v)", step+1, err, cerr)
		}
		return fmt.Errorf("step %d: %w (not applied; state after step %d saved to %s)", step+1, err, e.opt.Step, rc.Checkpoint)
	}
	epochOf := func(step int) Metric {
		return Metric{Name: "epoch", Value: float64(step) / float64(plan.StepsPerEpoch)}
	}
	rc.Progress.Start(plan.Total)
	rc.Progress.Resume(e.opt.Step)
	clock := runClock{start: time.Now()}
	for step := e.opt.Step; step < plan.Total; {
		if err := ctx.Err(); err != nil {
			return fail(step, err)
		}
		start := step
		// A round's first step is timed from here: making the round (reference values,
		// rollouts) is part of it.
		stepStart := time.Now()
		round, err := src.Round(ctx, step)
		if err != nil {
			return fail(step, err)
		}
		var parts []Metrics
		lr, roundTime := 0.0, 0.0
		for _, micro := range round.Steps {
			if step >= plan.Total {
				break
			}
			lr = e.cfg.LearningRate(step, plan.Total)
			m, err := e.StepOn(micro, lr)
			if err != nil {
				return fail(step, err)
			}
			step++
			took := clock.step(stepStart, itemCount(micro))
			roundTime += took
			for i := range m {
				if m[i].Sum {
					e.Totals[m[i].Name] += m[i].Value
					m[i].Value = e.Totals[m[i].Name]
				}
			}
			if round.Summary != nil {
				parts = append(parts, m)
			} else {
				if round.Extra != nil {
					m = append(m, round.Extra(m)...)
				}
				m = append(m, Metric{Name: StepTimeMetric, Value: took}, Metric{Name: "learning_rate", Value: lr}, epochOf(step), Metric{Name: "step", Value: float64(e.opt.Step)})
				if err := write(m); err != nil {
					return err
				}
			}
			rc.Progress.Add(1)
			if len(rc.Eval) > 0 && rc.EvalEvery > 0 && (step%rc.EvalEvery == 0 || step == plan.Total) {
				em, err := e.Evaluate(ctx, rc.Eval)
				if err != nil {
					return fmt.Errorf("step %d: %w", step, err)
				}
				if err := write(append(em.Prefixed("eval_"), epochOf(step), Metric{Name: "step", Value: float64(e.opt.Step)})); err != nil {
					return err
				}
			}
			stepStart = time.Now()
		}
		if round.Summary != nil {
			mean := Metric{Name: StepTimeMetric, Value: roundTime / float64(max(1, len(parts)))}
			if err := write(append(round.Summary(parts, lr), mean, epochOf(step), Metric{Name: "step", Value: float64(e.opt.Step)})); err != nil {
				return err
			}
		}
		// A checkpoint when the round crossed a multiple of CheckpointEvery (not at the
		// end: the final save follows).
		if every := rc.CheckpointEvery; every > 0 && step < plan.Total && start/every != step/every {
			if err := save(); err != nil {
				return fmt.Errorf("step %d: %w", step, err)
			}
		}
	}
	rc.Progress.Done()
	if err := write(append(clock.summary(), epochOf(e.opt.Step))); err != nil {
		return err
	}
	if rc.AlongFinalSave == nil {
		return save()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		rc.AlongFinalSave()
	}()
	err = save()
	<-done
	return err
}

// resume loads rc.Checkpoint when it exists, refusing one beyond the run or inside a round.
func (e *Engine[T]) resume(rc RunConfig[T], plan Plan, settings map[string]string) error {
	if rc.Checkpoint == "" {
		return nil
	}
	ok, err := e.LoadCheckpoint(rc.Checkpoint, settings)
	if err != nil || !ok {
		return err
	}
	step := e.opt.Step
	if step > plan.Total {
		return fmt.Errorf("checkpoint %s is at step %d, beyond this run's %d steps: raise the step count, or use another output directory", rc.Checkpoint, step, plan.Total)
	}
	if rs := plan.roundSteps(); step%rs != 0 && step != plan.Total {
		return fmt.Errorf("checkpoint %s is at step %d, inside a round of %d %s", rc.Checkpoint, step, rs, plan.RoundUnit)
	}
	if rc.Progress != nil {
		fmt.Fprintf(rc.Progress.Out, "resuming from %s at step %d\n", rc.Checkpoint, step)
	}
	return nil
}

// runSettings are a run's checkpoint settings over src: the engine's and the
// objective's, the source's own and the data's fingerprint.
func (e *Engine[T]) RunSettings(src Source[T]) map[string]string {
	settings := e.settings(src.Plan())
	for k, v := range src.Settings() {
		settings[e.obj.Name()+"."+k] = v
	}
	settings["dataset_fingerprint"] = src.Fingerprint()
	return settings
}

// settings are what a checkpoint records and a resume must match: everything of the
// engine and the objective that decides the data order and the update.
func (e *Engine[T]) settings(p Plan) map[string]string {
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
	s := map[string]string{
		"objective":                   e.obj.Name(),
		"optimizer":                   e.cfg.Optim.Name,
		"weight_decay":                f(e.cfg.Optim.WeightDecay),
		"adam_beta1":                  f(e.opt.cfg.Beta1),
		"adam_beta2":                  f(e.opt.cfg.Beta2),
		"adam_epsilon":                f(e.opt.cfg.Eps),
		"learning_rate":               f(e.cfg.LR),
		"lr_scheduler":                cmp.Or(e.cfg.Scheduler, SchedulerConstant),
		"warmup_steps":                strconv.Itoa(e.cfg.Warmup(p.Total)),
		"max_grad_norm":               f(e.cfg.MaxGradNorm),
		"batch_size":                  strconv.Itoa(p.BatchSize),
		"gradient_accumulation_steps": strconv.Itoa(p.Accum),
		"seed":                        strconv.FormatInt(e.cfg.Seed, 10),
		"shuffle":                     strconv.FormatBool(e.cfg.Shuffle),
	}
	if e.cfg.Scheduler == SchedulerLinear || e.cfg.Scheduler == SchedulerCosine || e.cfg.WarmupRatio > 0 {
		// The schedule depends on the run's length; with a constant one a finished run
		// may be extended.
		s["total_steps"] = strconv.Itoa(p.Total)
	}
	for k, v := range e.obj.Settings() {
		s[e.obj.Name()+"."+k] = v
	}
	if e.cfg.Adapter != nil {
		for k, v := range e.cfg.Adapter.Settings() {
			s[e.cfg.Adapter.Name()+"."+k] = v
		}
	}
	return s
}

// itemSource is offline data as a Source: each round is one optimizer step over the next
// micro-batches of its epoch's order.
type itemSource[T any] struct {
	e          *Engine[T]
	items      []T
	plan       Plan
	order      []int
	orderEpoch int
	// ref, when set, gives the items their reference values as their steps come
	// (ItemsWithReference): batches are the batches it computes them in
	// (TrainingBatches), batchOf each item's, referenced the
	// items carrying their values and has those computed, by index.
	ref        Reference[T]
	batches    [][]int
	batchOf    []int
	referenced []T
	has        []bool
}

// Items makes items a Source of the engine's configured batches and steps.
func (e *Engine[T]) Items(items []T) (Source[T], error) { return e.ItemsWithReference(items, nil) }

// ItemsWithReference is Items for a Referenced objective whose items lack their
// reference values (when some do, every item gets a computed one): a step's items get
// theirs from ref as the loop reaches the step, so that a run starts without a pass over
// the dataset and a run of a few steps computes the values of a few batches. An item's
// value is computed with its micro-batch of the first epoch (TrainingBatches), which in
// later epochs may hold items of other steps: the values are those of a pass over the
// items before training (ComputeReference), to the last bit, wherever a run is resumed. items is not changed. With a nil ref, or items
// that all carry their values, it is Items.
func (e *Engine[T]) ItemsWithReference(items []T, ref Reference[T]) (Source[T], error) {
	plan, err := e.cfg.Plan(len(items))
	if err != nil {
		return nil, err
	}
	s := &itemSource[T]{e: e, items: items, plan: plan, orderEpoch: -1}
	if ref != nil && e.NeedsReference(items) {
		s.ref, s.batches = ref, e.TrainingBatches(len(items))
		s.batchOf, s.referenced, s.has = make([]int, len(items)), make([]T, len(items)), make([]bool, len(items))
		for k, b := range s.batches {
			for _, i := range b {
				s.batchOf[i] = k
			}
		}
	}
	return s, nil
}

func (s *itemSource[T]) Plan() Plan                  { return s.plan }
func (s *itemSource[T]) Settings() map[string]string { return nil }

// Fingerprint hashes the items as given: without the reference values ref computes, which
// are named instead.
func (s *itemSource[T]) Fingerprint() string {
	h := sha256.New()
	for _, it := range s.items {
		s.e.obj.Fingerprint(h, it)
	}
	fp := fmt.Sprintf("%d items, sha256 %s", len(s.items), hex.EncodeToString(h.Sum(nil))[:16])
	if s.ref != nil {
		fp += ", reference values computed in their first-epoch micro-batches as their steps come"
	}
	return fp
}

func (s *itemSource[T]) Round(ctx context.Context, step int) (*Round[T], error) {
	p, cfg := s.plan, s.e.cfg
	epoch, k := step/p.StepsPerEpoch, step%p.StepsPerEpoch
	if epoch != s.orderEpoch {
		s.order, s.orderEpoch = EpochOrder(len(s.items), cfg.Seed, epoch, cfg.Shuffle), epoch
	}
	var idx [][]int
	for j := k * p.Accum; j < min((k+1)*p.Accum, p.MicroPerEpoch); j++ {
		idx = append(idx, s.order[j*p.BatchSize:min((j+1)*p.BatchSize, len(s.items))])
	}
	items := s.items
	if s.ref != nil {
		if err := s.reference(ctx, idx); err != nil {
			return nil, err
		}
		items = s.referenced
	}
	return &Round[T]{Steps: [][][]T{gather(items, idx)}}, nil
}

// reference computes the reference values of the batches holding items of idx that
// lack them.
func (s *itemSource[T]) reference(ctx context.Context, idx [][]int) error {
	var todo [][]int
	queued := map[int]bool{}
	for _, b := range idx {
		for _, i := range b {
			if k := s.batchOf[i]; !s.has[i] && !queued[k] {
				queued[k] = true
				todo = append(todo, s.batches[k])
			}
		}
	}
	if len(todo) == 0 {
		return nil
	}
	done, err := s.ref.Compute(ctx, gather(s.items, todo), nil)
	if err != nil {
		return err
	}
	return scatter(s.referenced, s.has, todo, done)
}

// epochOrder is the item order of an epoch: a seeded shuffle, so a resumed run sees the
// same batches.
func EpochOrder(n int, seed int64, epoch int, shuffle bool) []int {
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
