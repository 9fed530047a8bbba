package rollout

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"ortalign/onnx"
	"ortalign/onnx/ort"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/generate"
	"ortalign/pipeline/lm"
	"ortalign/pipeline/objective"
)

// RLRunConfig configures an online RL run (RunRL): sampling, rewards and the update.
type RLRunConfig struct {
	RL objective.RLConfig
	// NumGenerations is the number of completions sampled per prompt (TRL's
	// num_generations; at least 2).
	NumGenerations int
	// NumIterations is the number of optimizer steps taken on each round's rollouts
	// (TRL's num_iterations; 0 means 1).
	NumIterations int
	// Sample says how completions are sampled: MaxNewTokens, Temperature, TopK, TopP, EOS
	// (NumReturnSequences and Seed are set per round). Its Temperature should equal
	// RL.Temperature, as TRL uses one temperature for both.
	Sample generate.SampleOptions
	// Rewards are summed with RewardWeights (nil: all 1) into each completion's reward.
	Rewards       []RewardFunc
	RewardWeights []float64
	// MissingEOSPenalty, when > 0, is taken off the reward of a completion that did not end
	// with EOS (TRL's missing_eos_penalty).
	MissingEOSPenalty float64
	// MaskTruncated leaves completions that did not end with EOS out of the loss (TRL's
	// mask_truncated_completions).
	MaskTruncated bool
	// Decode turns ids into text for the reward functions (special tokens skipped, as TRL
	// decodes); nil gives empty texts.
	Decode func(ids []int64) (string, error)
	// Eval, when non-empty, is sampled (same seed) and scored before and after training:
	// RunResult.EvalBefore/EvalAfter hold its mean reward.
	Eval []encode.EncodedPrompt
	// Notice receives one-line notices (nil: none).
	Notice func(string)
}

func (c RLRunConfig) iterations() int { return max(1, c.NumIterations) }

// Validate reports settings out of range.
func (c RLRunConfig) Validate() error {
	if err := c.RL.Validate(); err != nil {
		return err
	}
	switch {
	case c.NumGenerations < 2:
		return fmt.Errorf("num generations must be at least 2 (advantages compare completions of a prompt), got %d", c.NumGenerations)
	case c.NumIterations < 0:
		return fmt.Errorf("num iterations must be >= 1, got %d", c.NumIterations)
	}
	return checkRollouts(len(c.Rewards), c.RewardWeights, c.MissingEOSPenalty, c.Sample)
}

// checkRollouts checks what every online algorithm needs to sample and score rollouts.
func checkRollouts(rewards int, weights []float64, missingEOSPenalty float64, sample generate.SampleOptions) error {
	switch {
	case rewards == 0:
		return fmt.Errorf("no reward: give a reward model or reward functions")
	case weights != nil && len(weights) != rewards:
		return fmt.Errorf("%d reward weights for %d rewards", len(weights), rewards)
	case missingEOSPenalty < 0:
		return fmt.Errorf("missing EOS penalty must be >= 0, got %g", missingEOSPenalty)
	case sample.MaxNewTokens <= 0:
		return fmt.Errorf("max new tokens must be positive, got %d", sample.MaxNewTokens)
	}
	return sample.Check()
}

func (c RLRunConfig) Weight(i int) float64 {
	if c.RewardWeights == nil {
		return 1
	}
	return c.RewardWeights[i]
}

// settings are the run's options recorded in checkpoints beside the engine's.
func (c RLRunConfig) settings() map[string]string {
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
	names := make([]string, len(c.Rewards))
	weights := make([]string, len(c.Rewards))
	for i, r := range c.Rewards {
		names[i], weights[i] = r.Name(), f(c.Weight(i))
	}
	s := c.Sample
	return map[string]string{
		"num_generations":            strconv.Itoa(c.NumGenerations),
		"num_iterations":             strconv.Itoa(c.iterations()),
		"max_new_tokens":             strconv.Itoa(s.MaxNewTokens),
		"sample_temperature":         f(s.Temperature),
		"top_k":                      strconv.Itoa(s.TopK),
		"top_p":                      f(s.TopP),
		"min_p":                      f(s.MinP),
		"repetition_penalty":         f(s.RepetitionPenalty),
		"eos":                        fmt.Sprint(s.EOS),
		"rewards":                    strings.Join(names, " | "),
		"reward_weights":             strings.Join(weights, ","),
		"missing_eos_penalty":        f(c.MissingEOSPenalty),
		"mask_truncated_completions": strconv.FormatBool(c.MaskTruncated),
	}
}

// roundSeed is the sampling seed of a round: a resumed run samples the same completions.
func roundSeed(seed int64, round int) uint64 {
	return generate.Splitmix64(uint64(seed)*0x9e3779b97f4a7c15 ^ generate.Splitmix64(uint64(round)+1))
}

// refScorer computes per-token log-probs of rollouts under a fixed model (the reference:
// the starting policy).
type refScorer struct {
	sess *ort.Session
	in   engine.ModelInputs
}

func newRefScorer(base *onnx.Model, temperature float64, threads int, pad int64) (*refScorer, error) {
	m := base.Clone()
	in, err := engine.ModelInputsOf(m, pad)
	if err != nil {
		return nil, err
	}
	if temperature != 1 {
		if err := objective.DivideLogits(m, temperature); err != nil {
			return nil, err
		}
	}
	if _, err := lm.AppendLogProbHeadWith(m, lm.HeadOptions{TokenLogps: true}); err != nil {
		return nil, err
	}
	sess, err := lm.NewModelSession(m, []string{lm.TokenLogpsOutput}, ort.Options{Threads: threads})
	if err != nil {
		return nil, err
	}
	return &refScorer{sess: sess, in: in}, nil
}

func (r *refScorer) Close() {
	if r.sess != nil {
		r.sess.Destroy()
		r.sess = nil
	}
}

// tokenLogps returns each rollout's completion-token log-probs (masked or not).
func (r *refScorer) tokenLogps(rollouts []objective.Rollout, batch int) ([][]float64, error) {
	out := make([][]float64, len(rollouts))
	for lo := 0; lo < len(rollouts); lo += batch {
		part := rollouts[lo:min(lo+batch, len(rollouts))]
		seqs := make([]lm.Sequence, len(part))
		for i, ro := range part {
			ro.Masked = false
			seqs[i] = ro.Sequence()
		}
		res, err := r.sess.Run(r.in.Rows(seqs), nil)
		if err != nil {
			return nil, fmt.Errorf("reference log-probs: %w", err)
		}
		w := objective.RolloutWidth(part)
		lp := res[lm.TokenLogpsOutput].F32
		for i, ro := range part {
			v := make([]float64, len(ro.Completion))
			for j := range v {
				v[j] = float64(lp[i*w+len(ro.Prompt)+j])
			}
			out[lo+i] = v
		}
	}
	return out, nil
}

// rlRound is one round's rollouts and what was measured on them.
type rlRound struct {
	rollouts []objective.Rollout
	metrics  engine.Metrics
}

// sampleAndScore is sampleAndScoreGen with a generator built for model (a new session:
// RunRL keeps one generator fed the engine's weights instead).
func sampleAndScore(ctx context.Context, path string, model *onnx.Model, prompts []encode.EncodedPrompt, c RLRunConfig, seed uint64, threads int, notice func(string)) ([]generate.Completion, []float64, [][]float64, error) {
	gen, err := generate.NewGenerator(path, model, generate.GeneratorOptions{Threads: threads, Notice: notice})
	if err != nil {
		return nil, nil, nil, err
	}
	defer gen.Close()
	return sampleAndScoreGen(ctx, gen, prompts, c, seed)
}

// sampleAndScoreGen samples NumGenerations completions of each prompt from gen with the
// round's seed and scores them: the completions, their total rewards and per-function
// rewards.
func sampleAndScoreGen(ctx context.Context, gen *generate.Generator, prompts []encode.EncodedPrompt, c RLRunConfig, seed uint64) ([]generate.Completion, []float64, [][]float64, error) {
	so := c.Sample
	so.NumReturnSequences, so.Seed = c.NumGenerations, seed
	in := make([]generate.Prompt, len(prompts))
	for i, p := range prompts {
		in[i] = generate.Prompt{IDs: p.IDs, Index: p.Index}
	}
	comps, err := gen.Generate(ctx, in, so)
	if err != nil {
		return nil, nil, nil, err
	}
	inputs := make([]RewardInput, len(comps))
	texts := map[int]string{}
	for i, cp := range comps {
		p := prompts[i/c.NumGenerations]
		if _, ok := texts[i/c.NumGenerations]; !ok && c.Decode != nil {
			if texts[i/c.NumGenerations], err = c.Decode(p.IDs); err != nil {
				return nil, nil, nil, err
			}
		}
		text := ""
		if c.Decode != nil {
			if text, err = c.Decode(cp.IDs); err != nil {
				return nil, nil, nil, err
			}
		}
		inputs[i] = RewardInput{Row: p.Row, Prompt: texts[i/c.NumGenerations], Completion: text,
			PromptIDs: p.IDs, CompletionIDs: cp.IDs, FinishReason: cp.FinishReason}
	}
	total := make([]float64, len(comps))
	per := make([][]float64, len(c.Rewards))
	for k, rf := range c.Rewards {
		s, err := rf.Score(ctx, inputs)
		if err != nil {
			return nil, nil, nil, err
		}
		if len(s) != len(inputs) {
			return nil, nil, nil, fmt.Errorf("reward %s: %d scores for %d completions", rf.Name(), len(s), len(inputs))
		}
		per[k] = s
		for i, v := range s {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return nil, nil, nil, fmt.Errorf("reward %s: score %v for completion %d of row %d", rf.Name(), v, i%c.NumGenerations, inputs[i].Row)
			}
			total[i] += c.Weight(k) * v
		}
	}
	if c.MissingEOSPenalty > 0 {
		for i, cp := range comps {
			if cp.FinishReason != generate.FinishEOS {
				total[i] -= c.MissingEOSPenalty
			}
		}
	}
	return comps, total, per, nil
}

// MeanReward samples NumGenerations completions of prompts from model with seed and
// returns their mean reward (with the missing-EOS penalty): the held-out score of a policy.
func MeanReward(ctx context.Context, path string, model *onnx.Model, prompts []encode.EncodedPrompt, c RLRunConfig, seed uint64, threads int) (float64, error) {
	gen, err := generate.NewGenerator(path, model, generate.GeneratorOptions{Threads: threads, Notice: c.Notice})
	if err != nil {
		return 0, err
	}
	defer gen.Close()
	return meanReward(ctx, gen, prompts, c, seed)
}

// meanReward is MeanReward with gen's weights.
func meanReward(ctx context.Context, gen *generate.Generator, prompts []encode.EncodedPrompt, c RLRunConfig, seed uint64) (float64, error) {
	_, total, _, err := sampleAndScoreGen(ctx, gen, prompts, c, seed)
	if err != nil {
		return 0, err
	}
	return objective.MeanOf(total), nil
}

// collect runs one round: samples with the engine's current weights (gen, fed the
// engine's parameter buffers), scores, computes the old and reference log-probs and the
// advantages.
func collect(ctx context.Context, e *engine.Engine[objective.Rollout], gen *generate.Generator, ref *refScorer, prompts []encode.EncodedPrompt, c RLRunConfig, seed uint64) (*rlRound, error) {
	start := time.Now()
	if err := feedGenerator(e, gen); err != nil {
		return nil, err
	}
	comps, total, per, err := sampleAndScoreGen(ctx, gen, prompts, c, seed)
	if err != nil {
		return nil, err
	}
	// Generation is the sampling alone; scoring (rewards, old and reference log-probs)
	// is the rest of the round.
	genTime := gen.Stats().Seconds
	G := c.NumGenerations
	rollouts := make([]objective.Rollout, len(comps))
	clipped, length := 0.0, 0.0
	for i, cp := range comps {
		truncated := cp.FinishReason != generate.FinishEOS
		if truncated {
			clipped++
		}
		length += float64(len(cp.IDs))
		rollouts[i] = objective.Rollout{Prompt: prompts[i/G].IDs, Completion: cp.IDs, Masked: c.MaskTruncated && truncated,
			OldLogps: slices.Clone(cp.Logps)}
	}
	if t := c.RL.LogitTemperature(); t != 1 {
		// The generator's log-probs are of the raw logits; the loss's are of logits / T.
		for i := range rollouts {
			rollouts[i].OldLogps = make([]float64, len(rollouts[i].Completion))
		}
		k := 0
		err := e.Forward(ctx, rollouts, func(batch []objective.Rollout, out map[string]*ort.Tensor) error {
			w := objective.RolloutWidth(batch)
			lp := out[lm.TokenLogpsOutput].F32
			for i, ro := range batch {
				for j := range ro.Completion {
					rollouts[k+i].OldLogps[j] = float64(lp[i*w+len(ro.Prompt)+j])
				}
			}
			k += len(batch)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("old log-probs: %w", err)
		}
	}
	refs, err := ref.tokenLogps(rollouts, max(1, e.Config().BatchSize))
	if err != nil {
		return nil, err
	}
	kl, entropy := 0.0, 0.0
	for i := range rollouts {
		rollouts[i].RefLogps = refs[i]
		for j := range refs[i] {
			kl += rollouts[i].OldLogps[j] - refs[i][j]
			entropy -= rollouts[i].OldLogps[j]
		}
	}
	n := float64(len(rollouts))
	kl, entropy = kl/n, entropy/n
	rewards := total
	if c.RL.Algo == objective.AlgoRLOO {
		rewards = objective.RLOOPenalized(c.RL.Beta, total, rollouts)
	}
	adv, err := objective.Advantages(c.RL, rewards, G)
	if err != nil {
		return nil, err
	}
	zeroStd := 0.0
	for lo := 0; lo < len(total); lo += G {
		if objective.Stddev(total[lo:lo+G]) < 1e-12 {
			zeroStd++
		}
	}
	for i := range rollouts {
		rollouts[i].Reward, rollouts[i].Advantage = rewards[i], adv[i]
	}
	score := objective.MeanOf(total)
	nonScore := -c.RL.Beta * kl
	m := engine.Metrics{
		{Name: "reward", Value: score},
		{Name: "reward_std", Value: objective.Stddev(total)},
	}
	for k, rf := range c.Rewards {
		m = append(m, engine.Metric{Name: "rewards/" + rf.Name() + "/mean", Value: objective.MeanOf(per[k])})
	}
	m = append(m,
		engine.Metric{Name: "frac_reward_zero_std", Value: zeroStd / float64(len(total)/G)},
		engine.Metric{Name: "objective/scores", Value: score},
		engine.Metric{Name: "objective/kl", Value: kl},
		engine.Metric{Name: "objective/entropy", Value: entropy},
		engine.Metric{Name: "objective/non_score_reward", Value: nonScore},
		engine.Metric{Name: "objective/rlhf_reward", Value: score + nonScore},
		engine.Metric{Name: "completions/mean_length", Value: length / n},
		engine.Metric{Name: "completions/clipped_ratio", Value: clipped / n},
		engine.Metric{Name: "time/generation_s", Value: genTime},
		engine.Metric{Name: "time/scoring_s", Value: time.Since(start).Seconds() - genTime},
		engine.Metric{Name: "time/rollout_s", Value: time.Since(start).Seconds()},
	)
	return &rlRound{rollouts: rollouts, metrics: m}, nil
}

// RunRL trains e (an Engine on the RL objective, built from base) online: each round takes
// the next BatchSize prompts (a seeded shuffle per epoch), samples NumGenerations
// completions of each with the current weights (seeded from the run's seed and the round,
// so a resumed run samples the same ones), scores them, computes old and reference
// (starting-policy) log-probs and advantages, then takes NumIterations optimizer steps on
// them, each over GradAccum micro-batches. Metrics (TRL's names) go to metrics.jsonl, one
// line per optimizer step; checkpoints (the engine's format, with the RL settings) are
// written at round ends every CheckpointEvery steps, at the end and on interrupt, and a
// checkpoint found in Out is resumed. The trained model goes to Out/model.onnx.
func RunRL(ctx context.Context, e *engine.Engine[objective.Rollout], base *onnx.Model, prompts []encode.EncodedPrompt, c RLRunConfig, o engine.RunOptions) (*engine.RunResult, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if len(prompts) == 0 {
		return nil, fmt.Errorf("no prompts")
	}
	o.ModelFile = ""
	return runOnline(ctx, e, onlineSource[objective.Rollout](newRLSource(e, base, prompts, c)), c, o,
		func(path string) error { return e.Export(path) })
}

// rlSource is GRPO's and RLOO's Source: a round samples and scores the next prompts'
// completions with the current weights, and takes NumIterations steps on them.
type rlSource struct {
	e       *engine.Engine[objective.Rollout]
	gen     *generate.Generator
	ref     *lazyRef
	prompts *promptRounds
	c       RLRunConfig
	plan    engine.Plan
}

func newRLSource(e *engine.Engine[objective.Rollout], base *onnx.Model, prompts []encode.EncodedPrompt, c RLRunConfig) *rlSource {
	cfg := e.Config()
	mu, B := c.iterations(), cfg.BatchSize
	roundsPerEpoch := (len(prompts) + B - 1) / B
	total := cfg.MaxSteps
	if total <= 0 {
		total = max(1, cfg.Epochs) * roundsPerEpoch * mu
	}
	return &rlSource{
		e: e, c: c,
		ref:     &lazyRef{base: base, path: e.Path(), temperature: c.RL.LogitTemperature(), cfg: cfg},
		prompts: newPromptRounds(prompts, B, roundsPerEpoch, cfg),
		plan: engine.Plan{Items: len(prompts), BatchSize: B, Accum: cfg.Accum(), MicroPerEpoch: roundsPerEpoch,
			StepsPerEpoch: roundsPerEpoch * mu, Total: total, RoundSteps: mu, RoundUnit: "iterations"},
	}
}

func (s *rlSource) Plan() engine.Plan           { return s.plan }
func (s *rlSource) Fingerprint() string         { return s.prompts.fingerprint() }
func (s *rlSource) Settings() map[string]string { return s.c.settings() }

func (s *rlSource) Round(ctx context.Context, step int) (*engine.Round[objective.Rollout], error) {
	ref, err := s.ref.get()
	if err != nil {
		return nil, err
	}
	round := step / s.plan.RoundSteps
	r, err := collect(ctx, s.e, s.gen, ref, s.prompts.Batch(round), s.c, roundSeed(s.e.Config().Seed, round))
	if err != nil {
		return nil, err
	}
	micro := splitMicro(r.rollouts, s.e.Config().Accum(), s.c.NumGenerations)
	steps := make([][][]objective.Rollout, s.plan.RoundSteps)
	for i := range steps {
		steps[i] = micro
	}
	return &engine.Round[objective.Rollout]{Steps: steps, Extra: func(m engine.Metrics) engine.Metrics {
		return append(engine.Metrics{{Name: "loss/policy_avg", Value: m.Value(engine.LossOutput)}}, r.metrics...)
	}}, nil
}

// splitMicro cuts a round's rollouts into n micro-batches, keeping each prompt's group
// together when the groups divide evenly.
func splitMicro(rollouts []objective.Rollout, n, group int) [][]objective.Rollout {
	groups := len(rollouts) / group
	n = max(1, min(n, groups))
	var out [][]objective.Rollout
	for k := 0; k < n; k++ {
		lo, hi := k*groups/n*group, (k+1)*groups/n*group
		if k == n-1 {
			hi = len(rollouts)
		}
		if hi > lo {
			out = append(out, rollouts[lo:hi])
		}
	}
	return out
}
