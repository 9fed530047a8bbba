package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/pflag"

	"ortalign/onnx"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/lm"
	"ortalign/pipeline/objective"
	"ortalign/pipeline/rollout"
)

// ppoFlags are rlhf's PPO options, TRL v1.x PPOConfig's in kebab case.
type ppoFlags struct {
	klCoef, cliprange, cliprangeValue, vfCoef, gamma, lam float64
	klEstimator                                           string
	whitenRewards                                         bool
	numPPOEpochs, numMiniBatches                          int
}

func addPPOFlags(f *pflag.FlagSet, p *ppoFlags) {
	d := objective.DefaultPPOConfig()
	f.Float64Var(&p.klCoef, "kl-coef", d.KLCoef, "ppo: per-token KL penalty coefficient in the reward")
	f.StringVar(&p.klEstimator, "kl-estimator", d.KLEstimator, "ppo: KL estimator of the penalty, k1 or k3")
	f.Float64Var(&p.cliprange, "cliprange", d.Cliprange, "ppo: clip the policy ratio to 1 ± cliprange")
	f.Float64Var(&p.cliprangeValue, "cliprange-value", d.CliprangeValue, "ppo: clip new values to old ± cliprange-value")
	f.Float64Var(&p.vfCoef, "vf-coef", d.VFCoef, "ppo: loss = policy loss + vf-coef × value loss")
	f.Float64Var(&p.gamma, "gamma", d.Gamma, "ppo: GAE discount")
	f.Float64Var(&p.lam, "lam", d.Lam, "ppo: GAE λ")
	f.BoolVar(&p.whitenRewards, "whiten-rewards", false, "ppo: whiten the per-token rewards before GAE")
	f.IntVar(&p.numPPOEpochs, "num-ppo-epochs", 4, "ppo: passes over each batch of rollouts")
	f.IntVar(&p.numMiniBatches, "num-mini-batches", 1, "ppo: optimizer steps per pass (mini-batches of the rollouts)")
}

// ppoRunConfig maps the flags to the library's PPO configuration.
func (o *rlhfOptions) ppoRunConfig() rollout.PPORunConfig {
	p := o.ppo
	return rollout.PPORunConfig{
		PPO: objective.PPOConfig{KLCoef: p.klCoef, KLEstimator: p.klEstimator, Cliprange: p.cliprange, CliprangeValue: p.cliprangeValue,
			VFCoef: p.vfCoef, Gamma: p.gamma, Lam: p.lam, WhitenRewards: p.whitenRewards, Temperature: o.temperature},
		NumPPOEpochs: p.numPPOEpochs, NumMiniBatches: p.numMiniBatches, MissingEOSPenalty: o.missingEOSPenalty,
	}
}

// validatePPO checks the PPO flags (n rewards).
func (o *rlhfOptions) validatePPO(n int) error {
	if o.ppo.numPPOEpochs < 1 || o.ppo.numMiniBatches < 1 {
		return fmt.Errorf("--num-ppo-epochs and --num-mini-batches must be >= 1, got %d and %d", o.ppo.numPPOEpochs, o.ppo.numMiniBatches)
	}
	rc := o.ppoRunConfig()
	rc.Sample, rc.Rewards, rc.RewardWeights = o.sampleOptions(nil), make([]rollout.RewardFunc, n), o.rewardWeights
	if err := rc.Validate(); err != nil {
		return fmt.Errorf("--kl-coef/--kl-estimator/--cliprange/--cliprange-value/--vf-coef/--gamma/--lam/--max-new-tokens/sampling flags: %w", err)
	}
	return nil
}

// runPPO trains with PPO once the data and rewards are ready. The value head starts from
// the reward model's score head when --reward is a reward model ortalign grafted on a
// causal LM of the policy's width, else from a seeded fresh head.
func runPPO(ctx context.Context, o *rlhfOptions, base *onnx.Model, cfg engine.TrainConfig, train, eval []encode.EncodedPrompt,
	rl rollout.RLRunConfig, stdout, stderr io.Writer) error {
	rc := o.ppoRunConfig()
	rc.Sample, rc.Rewards, rc.RewardWeights, rc.Decode, rc.Eval, rc.Notice = rl.Sample, rl.Rewards, rl.RewardWeights, rl.Decode, eval, rl.Notice
	var init []float32
	from := "a fresh head"
	if o.reward != "" {
		rm, err := onnx.Load(o.reward)
		if err != nil {
			return fmt.Errorf("--reward: %w", err)
		}
		if w, ok := lm.RewardHeadWeights(rm); ok {
			init, from = w, o.reward+"'s score head"
		}
	}
	eng, err := objective.NewPPOEngine(o.model, base, cfg, rc.PPO, init)
	if err != nil && init != nil {
		// Another width: start fresh.
		init, from = nil, "a fresh head"
		eng, err = objective.NewPPOEngine(o.model, base, cfg, rc.PPO, nil)
	}
	if err != nil {
		return err
	}
	defer eng.Close()
	printReusedGraph(stderr, eng.ReusedGraph())
	fmt.Fprintf(stderr, "ppo: training %d tensors of %s (policy and a value head from %s, sharing the backbone) on %d prompts (%s, lr %g)\n",
		len(eng.Trainable()), o.model, from, len(train), o.optimizer, o.lr)
	ro := o.optimFlags.runOptions("rlhf")
	ro.Stderr = stderr
	res, err := rollout.RunPPO(ctx, eng, base, train, rc, ro)
	if err != nil {
		return err
	}
	printRunSummary(stdout, res, fmt.Sprintf("held-out mean reward of sampled completions (%d prompts × 1)", len(eval)))
	return nil
}
