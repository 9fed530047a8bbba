package rollout

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"

	"ortalign/onnx"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/generate"
)

// promptRounds hands out an online run's prompts a round at a time: the next perRound of
// each epoch's seeded order (fewer at the end), the same on a resumed run.
type promptRounds struct {
	prompts        []encode.EncodedPrompt
	perRound       int
	roundsPerEpoch int
	seed           int64
	shuffle        bool
	order          []int
	orderEpoch     int
}

func newPromptRounds(prompts []encode.EncodedPrompt, perRound, roundsPerEpoch int, cfg engine.TrainConfig) *promptRounds {
	return &promptRounds{prompts: prompts, perRound: perRound, roundsPerEpoch: roundsPerEpoch,
		seed: cfg.Seed, shuffle: cfg.Shuffle, orderEpoch: -1}
}

// batch returns round's prompts.
func (r *promptRounds) Batch(round int) []encode.EncodedPrompt {
	epoch, k := round/r.roundsPerEpoch, round%r.roundsPerEpoch
	if epoch != r.orderEpoch {
		r.order, r.orderEpoch = engine.EpochOrder(len(r.prompts), r.seed, epoch, r.shuffle), epoch
	}
	idx := r.order[k*r.perRound : min((k+1)*r.perRound, len(r.prompts))]
	out := make([]encode.EncodedPrompt, len(idx))
	for i, j := range idx {
		out[i] = r.prompts[j]
	}
	return out
}

// fingerprint names the prompts for checkpoints (Source.Fingerprint).
func (r *promptRounds) fingerprint() string {
	h := sha256.New()
	for _, q := range r.prompts {
		binary.Write(h, binary.LittleEndian, int64(len(q.IDs)))
		binary.Write(h, binary.LittleEndian, q.IDs)
		binary.Write(h, binary.LittleEndian, q.Row)
	}
	return fmt.Sprintf("%d prompts, sha256 %s", len(r.prompts), hex.EncodeToString(h.Sum(nil))[:16])
}

// lazyRef opens the reference scorer of the starting policy base on first use, so that a
// run resumed at its end never opens it.
type lazyRef struct {
	base        *onnx.Model
	path        string
	temperature float64
	cfg         engine.TrainConfig
	ref         *refScorer
}

func (l *lazyRef) get() (*refScorer, error) {
	if l.ref == nil {
		ref, err := newRefScorer(l.base, l.temperature, l.cfg.Threads, l.cfg.PadID)
		if err != nil {
			return nil, fmt.Errorf("%s: reference: %w", l.path, err)
		}
		l.ref = ref
	}
	return l.ref, nil
}

func (l *lazyRef) Close() {
	if l.ref != nil {
		l.ref.Close()
	}
}

// evalReward runs a held-out reward (when there is held-out data) into *into; when says
// where the run stands should it be interrupted.
func evalReward(eval []encode.EncodedPrompt, into *engine.Metrics, when string, f func() (float64, error)) error {
	if len(eval) == 0 {
		return nil
	}
	v, err := f()
	if err != nil {
		return engine.Interrupted(fmt.Errorf("held-out reward: %w", err), when)
	}
	*into = engine.Metrics{{Name: "reward", Value: v}}
	return nil
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

// onlineSource is a Source that samples with the run's generator and scores against a
// reference it opens on first use.
type onlineSource[T any] interface {
	engine.Source[T]
	// useGenerator gives the source the run's generator (fed the policy's live weights).
	useGenerator(gen *generate.Generator)
	// close releases the reference.
	close()
}

func (s *rlSource) useGenerator(gen *generate.Generator)  { s.gen = gen }
func (s *rlSource) close()                                { s.ref.Close() }
func (s *ppoSource) useGenerator(gen *generate.Generator) { s.gen = gen }
func (s *ppoSource) close()                               { s.ref.Close() }

// runOnline is the run of every online algorithm: one generator for the run fed the
// engine's live weights, the held-out reward of c.Eval before and after, the engine's
// loop over src into o.Out, and export writing the trained model.
func runOnline[T any](ctx context.Context, e *engine.Engine[T], src onlineSource[T], c RLRunConfig, o engine.RunOptions, export func(path string) error) (*engine.RunResult, error) {
	res, stderr, err := o.Start()
	if err != nil {
		return nil, err
	}
	cfg := e.Config()
	// Before the checkpoint is loaded the live weights are the starting policy's.
	gen, err := PolicyGenerator(e, generate.GeneratorOptions{Threads: cfg.Threads, Notice: onceNotice(c.Notice)})
	if err != nil {
		return nil, err
	}
	defer gen.Close()
	src.useGenerator(gen)
	defer src.close()
	heldOut := func() (float64, error) {
		if err := feedGenerator(e, gen); err != nil {
			return 0, err
		}
		return meanReward(ctx, gen, c.Eval, c, roundSeed(cfg.Seed, -1))
	}
	if err := evalReward(c.Eval, &res.EvalBefore, "before training started; nothing was saved", heldOut); err != nil {
		return nil, err
	}
	if err := engine.RunEngine(ctx, e, src, o, res, stderr, nil, func() error { return export(res.ModelPath) }); err != nil {
		return nil, err
	}
	if err := evalReward(c.Eval, &res.EvalAfter, "after training; the model was written", heldOut); err != nil {
		return nil, err
	}
	return res, nil
}
