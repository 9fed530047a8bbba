package rollout

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	"ortalign/onnx"
	"ortalign/onnx/ort"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/generate"
	"ortalign/pipeline/lm"
	"ortalign/pipeline/objective"
)

// PPORunConfig configures a PPO run (RunPPO), with TRL v1.x PPOConfig's options.
type PPORunConfig struct {
	PPO objective.PPOConfig
	// NumPPOEpochs is the number of passes over each round's rollouts (TRL 4).
	NumPPOEpochs int
	// NumMiniBatches splits a round's rollouts into that many optimizer steps per pass
	// (TRL 1).
	NumMiniBatches int
	// Sample says how completions are sampled (one per prompt, as TRL's PPO); its
	// Temperature should equal PPO.Temperature.
	Sample generate.SampleOptions
	// Rewards are summed with RewardWeights (nil: all 1) into each completion's score.
	Rewards       []RewardFunc
	RewardWeights []float64
	// MissingEOSPenalty, when > 0, is taken off the score of a completion without EOS.
	MissingEOSPenalty float64
	// Decode turns ids into text for the reward functions.
	Decode func(ids []int64) (string, error)
	// Eval, when non-empty, is sampled (same seed) and scored before and after training.
	Eval []encode.EncodedPrompt
	// Notice receives one-line notices (nil: none).
	Notice func(string)
}

func (c PPORunConfig) epochs() int      { return max(1, c.NumPPOEpochs) }
func (c PPORunConfig) miniBatches() int { return max(1, c.NumMiniBatches) }

// rl is the sampling and scoring part as RunRL's configuration (one completion a prompt).
func (c PPORunConfig) rl() RLRunConfig {
	return RLRunConfig{
		RL:             objective.RLConfig{Algo: objective.AlgoGRPO, Temperature: c.PPO.Temperature},
		NumGenerations: 1, Sample: c.Sample, Rewards: c.Rewards, RewardWeights: c.RewardWeights,
		MissingEOSPenalty: c.MissingEOSPenalty, Decode: c.Decode, Eval: c.Eval, Notice: c.Notice,
	}
}

// Validate reports settings out of range.
func (c PPORunConfig) Validate() error {
	if err := c.PPO.Validate(); err != nil {
		return err
	}
	switch {
	case c.NumPPOEpochs < 0:
		return fmt.Errorf("num ppo epochs must be >= 1, got %d", c.NumPPOEpochs)
	case c.NumMiniBatches < 0:
		return fmt.Errorf("num mini batches must be >= 1, got %d", c.NumMiniBatches)
	}
	return checkRollouts(len(c.Rewards), c.RewardWeights, c.MissingEOSPenalty, c.Sample)
}

func (c PPORunConfig) settings() map[string]string {
	s := c.rl().settings()
	delete(s, "num_iterations")
	s["num_ppo_epochs"] = strconv.Itoa(c.epochs())
	s["num_mini_batches"] = strconv.Itoa(c.miniBatches())
	return s
}

// ppoCollect samples one completion per prompt with the engine's current policy, scores
// it, reads the old log-probs and values (the training graph's forward) and the
// reference's log-probs, and computes returns and advantages.
func ppoCollect(ctx context.Context, e *engine.Engine[objective.PPORollout], gen *generate.Generator, ref *refScorer, prompts []encode.EncodedPrompt, c PPORunConfig, seed uint64) ([]objective.PPORollout, engine.Metrics, error) {
	start := time.Now()
	if err := feedGenerator(e, gen); err != nil {
		return nil, nil, err
	}
	comps, scores, per, err := sampleAndScoreGen(ctx, gen, prompts, c.rl(), seed)
	if err != nil {
		return nil, nil, err
	}
	genTime := time.Since(start)
	rollouts := make([]objective.PPORollout, len(comps))
	plain := make([]objective.Rollout, len(comps))
	clipped, length, eos := 0.0, 0.0, 0.0
	for i, cp := range comps {
		if cp.FinishReason != generate.FinishEOS {
			clipped++
		}
		length += float64(len(cp.IDs))
		for _, id := range cp.IDs {
			if slices.Contains(c.Sample.EOS, id) {
				eos++
			}
		}
		rollouts[i] = objective.PPORollout{Prompt: prompts[i].IDs, Completion: cp.IDs, Score: scores[i],
			Terminal: len(cp.IDs) < c.Sample.MaxNewTokens}
		plain[i] = objective.Rollout{Prompt: prompts[i].IDs, Completion: cp.IDs}
	}
	k := 0
	err = e.Forward(ctx, rollouts, func(batch []objective.PPORollout, out map[string]*ort.Tensor) error {
		w := objective.PpoWidth(batch)
		lp, val := out[lm.TokenLogpsOutput].F32, out[lm.ValuesOutput].F32
		for i, ro := range batch {
			r := &rollouts[k+i]
			base := i*w + len(ro.Prompt)
			r.OldLogps = make([]float64, len(ro.Completion))
			for j := range r.OldLogps {
				r.OldLogps[j] = float64(lp[base+j])
			}
			r.OldValues = make([]float64, ro.Steps())
			for t := range r.OldValues {
				r.OldValues[t] = float64(val[base+t-1])
			}
		}
		k += len(batch)
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("old log-probs and values: %w", err)
	}
	refs, err := ref.tokenLogps(plain, max(1, e.Config().BatchSize))
	if err != nil {
		return nil, nil, err
	}
	for i := range rollouts {
		rollouts[i].RefLogps = refs[i]
	}
	st, err := objective.PPOAdvantages(c.PPO, rollouts)
	if err != nil {
		return nil, nil, err
	}
	n := float64(len(rollouts))
	m := engine.Metrics{
		{Name: "objective/kl", Value: st.KL},
		{Name: "objective/entropy", Value: st.Entropy},
		{Name: "objective/non_score_reward", Value: st.NonScoreReward},
		{Name: "objective/rlhf_reward", Value: st.NonScoreReward + st.Score},
		{Name: "objective/scores", Value: st.Score},
	}
	for k, rf := range c.Rewards {
		m = append(m, engine.Metric{Name: "rewards/" + rf.Name() + "/mean", Value: objective.MeanOf(per[k])})
	}
	m = append(m,
		engine.Metric{Name: "val/num_eos_tokens", Value: eos},
		engine.Metric{Name: "completions/mean_length", Value: length / n},
		engine.Metric{Name: "completions/clipped_ratio", Value: clipped / n},
		engine.Metric{Name: "time/generation_s", Value: genTime.Seconds()},
		engine.Metric{Name: "time/rollout_s", Value: time.Since(start).Seconds()},
	)
	return rollouts, m, nil
}

// RunPPO trains e (NewPPOEngine on base) with PPO as TRL v1.x's PPOTrainer: each round
// takes the next BatchSize × GradAccum × NumMiniBatches prompts (a seeded shuffle per
// epoch; an incomplete last round is dropped, as TRL's drop_last), samples one completion
// of each with the current policy (seeded from the run's seed and the round), scores it,
// computes old log-probs and values, the reference's (starting policy's) log-probs, and
// GAE returns and whitened advantages (PPOAdvantages); then NumPPOEpochs passes, each over
// a seeded permutation of the rollouts cut into NumMiniBatches mini-batches, one optimizer
// step per mini-batch over GradAccum micro-batches of BatchSize. MaxSteps counts optimizer
// steps (NumPPOEpochs × NumMiniBatches a round). metrics.jsonl gets one line a round with
// TRL's names: the round's step metrics averaged (val/ratio_var their variance),
// objective/*, lr, episode. Checkpoints, resume and the held-out reward are as RunRL's.
//
// The value function is a head on the policy's own final hidden state: the backbone is
// shared, and the value loss (× vf_coef) trains it with the policy loss. TRL's PPOTrainer
// keeps a separate value model (a second backbone, initialised from the reward model);
// sharing halves the memory and the compute, and is what NewPPOEngine builds. Out/model.onnx
// is the policy alone, in the input's graph and layout.
func RunPPO(ctx context.Context, e *engine.Engine[objective.PPORollout], base *onnx.Model, prompts []encode.EncodedPrompt, c PPORunConfig, o engine.RunOptions) (*engine.RunResult, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	src, err := newPPOSource(e, base, prompts, c)
	if err != nil {
		return nil, err
	}
	export := func(path string) error {
		model, err := objective.PolicyModel(e)
		if err != nil {
			return err
		}
		if err := model.Save(path, onnx.SaveOptions{}); err != nil {
			return fmt.Errorf("export %s: %w", path, err)
		}
		return nil
	}
	return runOnline(ctx, e, onlineSource[objective.PPORollout](src), c.rl(), o, export)
}

// ppoSource is PPO's Source: a round samples one completion of each of the next prompts
// with the current policy, and takes NumPPOEpochs × NumMiniBatches steps on them.
type ppoSource struct {
	e        *engine.Engine[objective.PPORollout]
	gen      *generate.Generator
	ref      *lazyRef
	prompts  *promptRounds
	c        PPORunConfig
	plan     engine.Plan
	perRound int
}

func newPPOSource(e *engine.Engine[objective.PPORollout], base *onnx.Model, prompts []encode.EncodedPrompt, c PPORunConfig) (*ppoSource, error) {
	cfg := e.Config()
	E, M, B, A := c.epochs(), c.miniBatches(), cfg.BatchSize, cfg.Accum()
	perRound := B * A * M
	roundsPerEpoch := len(prompts) / perRound
	if roundsPerEpoch == 0 {
		return nil, fmt.Errorf("%d prompts: a round takes batch size × gradient accumulation × mini-batches = %d", len(prompts), perRound)
	}
	K := E * M
	total := cfg.MaxSteps
	if total <= 0 {
		total = max(1, cfg.Epochs) * roundsPerEpoch * K
	}
	return &ppoSource{
		e: e, c: c, perRound: perRound,
		ref:     &lazyRef{base: base, path: e.Path(), temperature: c.PPO.LogitTemperature(), cfg: cfg},
		prompts: newPromptRounds(prompts, perRound, roundsPerEpoch, cfg),
		plan: engine.Plan{Items: len(prompts), BatchSize: B, Accum: A, MicroPerEpoch: roundsPerEpoch * M * A,
			StepsPerEpoch: roundsPerEpoch * K, Total: total, RoundSteps: K, RoundUnit: "steps"},
	}, nil
}

func (s *ppoSource) Plan() engine.Plan           { return s.plan }
func (s *ppoSource) Fingerprint() string         { return s.prompts.fingerprint() }
func (s *ppoSource) Settings() map[string]string { return s.c.settings() }

func (s *ppoSource) Round(ctx context.Context, step int) (*engine.Round[objective.PPORollout], error) {
	ref, err := s.ref.get()
	if err != nil {
		return nil, err
	}
	cfg := s.e.Config()
	round := step / s.plan.RoundSteps
	rollouts, rm, err := ppoCollect(ctx, s.e, s.gen, ref, s.prompts.Batch(round), s.c, roundSeed(cfg.Seed, round))
	if err != nil {
		return nil, err
	}
	B, A := cfg.BatchSize, cfg.Accum()
	var steps [][][]objective.PPORollout
	for ep := 0; ep < s.c.epochs(); ep++ {
		perm := objective.PpoPermutation(len(rollouts), cfg.Seed, round, ep)
		for mb := 0; mb < s.c.miniBatches(); mb++ {
			idx := perm[mb*B*A : (mb+1)*B*A]
			micro := make([][]objective.PPORollout, A)
			for a := range micro {
				for _, i := range idx[a*B : (a+1)*B] {
					micro[a] = append(micro[a], rollouts[i])
				}
			}
			steps = append(steps, micro)
		}
	}
	summary := func(parts []engine.Metrics, lr float64) engine.Metrics {
		line := meanMetrics(parts)
		ratios := make([]float64, len(parts))
		for i, p := range parts {
			ratios[i] = p.Value("val/ratio")
		}
		line = append(line, engine.Metric{Name: "val/ratio_var", Value: objective.Stddev(ratios) * objective.Stddev(ratios)})
		line = append(line, rm...)
		return append(line,
			engine.Metric{Name: "lr", Value: lr},
			engine.Metric{Name: "episode", Value: float64((round + 1) * s.perRound)})
	}
	return &engine.Round[objective.PPORollout]{Steps: steps, Summary: summary}, nil
}

// meanMetrics averages metrics lines name by name, in the first line's order.
func meanMetrics(parts []engine.Metrics) engine.Metrics {
	if len(parts) == 0 {
		return nil
	}
	out := slices.Clone(parts[0])
	for i := range out {
		s := 0.0
		for _, p := range parts {
			s += p.Value(out[i].Name)
		}
		out[i].Value = s / float64(len(parts))
	}
	return out
}
