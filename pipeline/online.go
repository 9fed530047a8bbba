package pipeline

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"ortalign/onnx"
)

// onlineRun is the scaffolding shared by the online loops (RunRL, RunPPO): the run's
// paths, settings and checkpoint, metrics and progress, the prompt order and each round's
// prompts, and saving on interrupt or failure. Each loop keeps only its round's logic.
type onlineRun[T any] struct {
	ctx      context.Context
	e        *Engine[T]
	o        RunOptions
	res      *RunResult
	stderr   io.Writer
	prompts  []EncodedPrompt
	settings map[string]string

	total          int    // optimizer steps of the run
	roundSteps     int    // optimizer steps a round
	roundUnit      string // what roundSteps counts, for the inside-a-round error
	perRound       int    // prompts a round
	roundsPerEpoch int

	log        io.WriteCloser
	enc        *json.Encoder
	progress   *Progress
	order      []int
	orderEpoch int
}

// newOnlineRun creates Out and names the run's files (the model as modelFile).
func newOnlineRun[T any](ctx context.Context, e *Engine[T], prompts []EncodedPrompt, o RunOptions, modelFile string) (*onlineRun[T], error) {
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, fmt.Errorf("output directory: %w", err)
	}
	r := &onlineRun[T]{ctx: ctx, e: e, o: o, stderr: o.Stderr, prompts: prompts, orderEpoch: -1}
	if r.stderr == nil {
		r.stderr = io.Discard
	}
	at := func(name string) string { return filepath.Join(o.Out, name) }
	r.res = &RunResult{ModelPath: at(modelFile), MetricsPath: at("metrics.jsonl"), CheckpointPath: at("checkpoint.bin")}
	return r, nil
}

// plan sets the run's shape (rounds of roundSteps optimizer steps, unit naming them, over
// perRound prompts) and its checkpoint settings: the engine's, the objective's own and
// the prompts' fingerprint.
func (r *onlineRun[T]) plan(p Plan, own map[string]string, roundSteps int, unit string, perRound, roundsPerEpoch int) {
	r.total, r.roundSteps, r.roundUnit = p.Total, roundSteps, unit
	r.perRound, r.roundsPerEpoch = perRound, roundsPerEpoch
	r.settings = r.e.settings(p, nil)
	for k, v := range own {
		r.settings[r.e.obj.Name()+"."+k] = v
	}
	h := sha256.New()
	for _, q := range r.prompts {
		binary.Write(h, binary.LittleEndian, int64(len(q.IDs)))
		binary.Write(h, binary.LittleEndian, q.IDs)
		binary.Write(h, binary.LittleEndian, q.Row)
	}
	r.settings["dataset_fingerprint"] = fmt.Sprintf("%d prompts, sha256 %s", len(r.prompts), hex.EncodeToString(h.Sum(nil))[:16])
}

// evalReward runs a held-out reward (when there is held-out data) into *into; when says
// where the run stands should it be interrupted.
func (r *onlineRun[T]) evalReward(eval []EncodedPrompt, into *Metrics, when string, f func() (float64, error)) error {
	if len(eval) == 0 {
		return nil
	}
	v, err := f()
	if err != nil {
		return interrupted(fmt.Errorf("held-out reward: %w", err), when)
	}
	*into = Metrics{{Name: "reward", Value: v}}
	return nil
}

// resume loads a checkpoint found in Out, refusing one beyond the run or inside a round.
func (r *onlineRun[T]) resume() error {
	ok, err := r.e.loadCheckpoint(r.res.CheckpointPath, r.settings)
	if err != nil || !ok {
		return err
	}
	step := r.e.opt.Step
	if step > r.total {
		return fmt.Errorf("checkpoint %s is at step %d, beyond this run's %d steps: raise the step count, or use another output directory", r.res.CheckpointPath, step, r.total)
	}
	if step%r.roundSteps != 0 && step != r.total {
		return fmt.Errorf("checkpoint %s is at step %d, inside a round of %d %s", r.res.CheckpointPath, step, r.roundSteps, r.roundUnit)
	}
	fmt.Fprintf(r.stderr, "resuming from %s at step %d\n", r.res.CheckpointPath, step)
	return nil
}

// open opens metrics.jsonl (cut back to the engine's step) and starts the progress.
func (r *onlineRun[T]) open() error {
	log, err := openMetrics(r.res.MetricsPath, r.e.opt.Step)
	if err != nil {
		return err
	}
	r.log, r.enc = log, json.NewEncoder(log)
	r.progress = NewProgress(r.stderr, r.o.Label, "steps")
	r.progress.Start(r.total)
	r.progress.Resume(r.e.opt.Step)
	return nil
}

// begin resumes from a checkpoint in Out, opens the reference scorer of the starting
// policy base (temperature as the policy's log-probs use it), then metrics.jsonl and the
// progress. The caller closes the scorer and the run.
func (r *onlineRun[T]) begin(base *onnx.Model, temperature float64) (*refScorer, error) {
	if err := r.resume(); err != nil {
		return nil, err
	}
	cfg := r.e.cfg
	ref, err := newRefScorer(base, temperature, cfg.Threads, cfg.PadID)
	if err != nil {
		return nil, fmt.Errorf("%s: reference: %w", r.e.path, err)
	}
	if err := r.open(); err != nil {
		ref.Close()
		return nil, err
	}
	return ref, nil
}

// close closes metrics.jsonl (once open).
func (r *onlineRun[T]) close() {
	if r.log != nil {
		r.log.Close()
	}
}

func (r *onlineRun[T]) save() error { return r.e.saveCheckpoint(r.res.CheckpointPath, r.settings) }

// write appends one line to metrics.jsonl.
func (r *onlineRun[T]) write(line Metrics) error {
	if err := r.enc.Encode(line); err != nil {
		return fmt.Errorf("write metrics: %w", err)
	}
	return nil
}

// stop saves the checkpoint when the context is done (step is the next step) and says so.
func (r *onlineRun[T]) stop(step int, err error) error {
	if cerr := r.save(); cerr != nil {
		return fmt.Errorf("interrupted at step %d; checkpoint failed: %w", step, cerr)
	}
	return interrupted(err, "checkpoint saved to "+r.res.CheckpointPath+": run the same command to resume")
}

// interrupted is stop's error when the context is done before step, else nil.
func (r *onlineRun[T]) interrupted(step int) error {
	if err := r.ctx.Err(); err != nil {
		return r.stop(step, err)
	}
	return nil
}

// fail reports err of step+1 (not applied), saving the state reached so far.
func (r *onlineRun[T]) fail(step int, err error) error {
	if r.ctx.Err() != nil {
		return r.stop(step, r.ctx.Err())
	}
	if r.e.opt.Step > 0 {
		if cerr := r.save(); cerr != nil {
			return fmt.Errorf("step %d: %w (and saving the checkpoint failed: %v)", step+1, err, cerr)
		}
		return fmt.Errorf("step %d: %w (not applied; state after step %d saved to %s)", step+1, err, r.e.opt.Step, r.res.CheckpointPath)
	}
	return fmt.Errorf("step %d: %w (not applied)", step+1, err)
}

// batch returns round's prompts: the next perRound of its epoch's order (fewer at the end).
func (r *onlineRun[T]) batch(round int) []EncodedPrompt {
	epoch, k := round/r.roundsPerEpoch, round%r.roundsPerEpoch
	if epoch != r.orderEpoch {
		cfg := r.e.cfg
		r.order, r.orderEpoch = epochOrder(len(r.prompts), cfg.Seed, epoch, cfg.Shuffle), epoch
	}
	idx := r.order[k*r.perRound : min((k+1)*r.perRound, len(r.prompts))]
	out := make([]EncodedPrompt, len(idx))
	for i, j := range idx {
		out[i] = r.prompts[j]
	}
	return out
}

// roundDone saves a checkpoint after a round ending at step when it crossed a multiple of
// CheckpointEvery (not at the end: finish saves then).
func (r *onlineRun[T]) roundDone(step int) error {
	if every := r.o.CheckpointEvery; every > 0 && step < r.total && (step-r.roundSteps)/every != step/every {
		if err := r.save(); err != nil {
			return fmt.Errorf("step %d: %w", step, err)
		}
	}
	return nil
}

// finish ends the progress and saves the final checkpoint.
func (r *onlineRun[T]) finish() error {
	r.progress.Done()
	return r.save()
}

// onceNotice passes each distinct notice to notice (nil: none) once.
func onceNotice(notice func(string)) func(string) {
	seen := map[string]bool{}
	return func(s string) {
		if !seen[s] && notice != nil {
			seen[s] = true
			notice(s)
		}
	}
}
