package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"ortalign/data"
	"ortalign/onnx"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/generate"
	"ortalign/pipeline/lm"
	"ortalign/pipeline/objective"
	"ortalign/pipeline/rollout"
	"ortalign/pipeline/score"
	"ortalign/tokenize"
)

// rlhfOptions are the flags of `ortalign rlhf`.
type rlhfOptions struct {
	*globalOptions
	modelFlags
	optimFlags
	algo, prompts, tokenizer, columns string
	strict                            bool
	maxPromptLength                   int
	reward                            string
	rewardFns                         []string
	rewardWeights                     []float64
	numGenerations, maxNewTokens      int
	temperature, topP, minP           float64
	repetitionPenalty                 float64
	topK                              int
	eos                               []int
	beta, epsilon, epsilonHigh        float64
	numIterations                     int
	scaleRewards, lossType            string
	importanceSamplingLevel           string
	normalizeAdvantages               bool
	missingEOSPenalty                 float64
	maskTruncated                     bool
	betaSet                           bool
	ppo                               ppoFlags
}

// newRLHFCmd builds the command; runF replaces runRLHF in tests of flag parsing.
func newRLHFCmd(g *globalOptions, runF func(*rlhfOptions) error) *cobra.Command {
	o := &rlhfOptions{globalOptions: g}
	cmd := &cobra.Command{
		Use:   "rlhf --algo grpo|rloo|ppo --model M.onnx (--reward RM.onnx | --reward-fn SPEC ...) --prompts D --out DIR",
		Short: "Online RL (GRPO, RLOO, PPO): sample completions, score them, update the policy",
		Long: `rlhf trains the policy online, as TRL v1.x's GRPOTrainer and RLOOTrainer: each step
takes --batch-size prompts, samples --num-generations completions of each with the
current weights (KV cache, transformers' sampling), scores them with the reward model
and/or reward functions (summed with --reward-weights), and updates the policy.

  grpo  advantages A = r − mean of the prompt's group, divided by the group's (or the
        batch's) std + 1e-4 (--scale-rewards); per-token clipped importance ratio
        (--epsilon, --epsilon-high), β·k3 KL to the reference in the loss (--beta,
        default 0), aggregated by --loss-type (dapo default, grpo, bnpo, dr_grpo);
        --loss-type cispo (ratio capped at --epsilon-high, no gradient through it)
        or sapo (a soft gate instead of the clip); --importance-sampling-level
        sequence takes one ratio per sequence (GSPO).
  rloo  rewards lowered by β·Σ(log π_old − log π_ref) (--beta, default 0.05),
        leave-one-out baseline A_i = r_i − mean_{j≠i} r_j (--normalize-advantages),
        sequence-level clipped ratio.
  ppo   TRL's PPOTrainer: one completion per prompt; a value head on the policy's
        final hidden state (the backbone is shared; TRL keeps a separate value
        model), started from --reward's score head when ortalign made it, else
        fresh; per-token reward −kl-coef·KL (--kl-estimator k1|k3), the score on
        the last step; GAE (--gamma, --lam), whitened advantages; clipped policy
        and value losses (--cliprange, --cliprange-value, --vf-coef);
        --num-ppo-epochs passes of --num-mini-batches steps over each round of
        --batch-size × accumulation × mini-batches prompts; --temperature
        defaults to 0.7, as TRL.

The reference is the starting policy. Reward functions (--reward-fn, repeatable):
regex:PATTERN (1 on a match), match:COLUMN (1 when the trimmed completion equals the
dataset column), length:TARGET (−|tokens − TARGET|/TARGET), cmd:PROGRAM (run with sh -c
once per step; JSON lines {"prompt","completion"} on stdin, one number a line on
stdout; a failure stops the run before the step is applied). Metrics use TRL's names
(reward, objective/kl, objective/entropy, policy/clipfrac_avg, completions/...).
DIR/model.onnx, metrics.jsonl and checkpoint.bin as dpo; a checkpoint there is resumed
and samples the same completions (the sampling seed is derived from --seed and the step).`,
		Example: `  ortalign rlhf --algo grpo --model sft/model.onnx --tokenizer tokenizer.json \
      --prompts prompts.jsonl --reward-fn 'regex:\b(good|great)\b' --reward-fn length:20 \
      --reward-weights 1,0.2 --out grpo1 --lr 1e-6 --max-steps 200`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.betaSet = cmd.Flags().Changed("beta")
			if o.algo == objective.AlgoPPO && !cmd.Flags().Changed("temperature") {
				o.temperature = objective.DefaultPPOConfig().Temperature
			}
			if runF != nil {
				return runF(o)
			}
			return runRLHF(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.algo, "algo", "", "algorithm: grpo, rloo or ppo")
	addModelFlags(f, &o.modelFlags)
	f.StringVar(&o.prompts, "prompts", "", "dataset of prompts (.parquet or .jsonl; any layout with prompts)")
	f.StringVar(&o.tokenizer, "tokenizer", "", "HuggingFace tokenizer.json (text prompts, EOS, reward functions' text)")
	f.StringVar(&o.columns, "columns", "", "column mapping, e.g. prompt=question")
	f.BoolVar(&o.strict, "strict", false, "fail on unusable prompt rows instead of skipping them")
	f.IntVar(&o.maxPromptLength, "max-prompt-length", 512, "keep the last N prompt tokens (0 = no limit)")
	f.StringVar(&o.reward, "reward", "", "`RM.onnx` reward model (rewards [batch], from ortalign reward, or a [batch, 1] sequence-classification export)")
	f.StringArrayVar(&o.rewardFns, "reward-fn", nil, "reward function: regex:PATTERN, match:COLUMN, length:TARGET or cmd:PROGRAM (repeatable)")
	f.Float64SliceVar(&o.rewardWeights, "reward-weights", nil, "weights of the rewards (the reward model first, then each --reward-fn; default all 1)")
	f.IntVar(&o.numGenerations, "num-generations", 8, "completions sampled per prompt")
	f.IntVar(&o.maxNewTokens, "max-new-tokens", 256, "most tokens per completion (TRL's max_completion_length)")
	f.Float64Var(&o.temperature, "temperature", 1, "sampling temperature (the policy's log-probs use it too, as TRL)")
	f.Float64Var(&o.topP, "top-p", 1, "nucleus sampling (1 = off)")
	f.IntVar(&o.topK, "top-k", 0, "keep the k most likely tokens (0 = off)")
	f.Float64Var(&o.minP, "min-p", 0, "drop tokens less likely than min-p times the most likely (0 = off)")
	f.Float64Var(&o.repetitionPenalty, "repetition-penalty", 1, "repetition penalty (1 = off)")
	f.IntSliceVar(&o.eos, "eos-token-id", nil, "token id that ends a completion (default: the tokenizer's EOS)")
	f.Float64Var(&o.beta, "beta", 0, "KL coefficient (default 0 for grpo, 0.05 for rloo, as TRL)")
	f.Float64Var(&o.epsilon, "epsilon", 0.2, "clip the importance ratio below at 1 − epsilon")
	f.Float64Var(&o.epsilonHigh, "epsilon-high", 0, "clip above at 1 + epsilon-high (0 = --epsilon)")
	f.IntVar(&o.numIterations, "num-iterations", 1, "optimizer steps per batch of completions (μ)")
	f.StringVar(&o.scaleRewards, "scale-rewards", objective.ScaleGroup, "grpo: scale advantages by the group's std (group), the batch's (batch) or not (none)")
	f.StringVar(&o.lossType, "loss-type", objective.LossDAPO, "grpo loss: dapo, grpo, bnpo, dr_grpo (aggregations of the clipped loss), cispo (the ratio capped at --epsilon-high itself, TRL's; 5 recommended) or sapo")
	f.StringVar(&o.importanceSamplingLevel, "importance-sampling-level", objective.ISToken, "grpo: one importance ratio per token, or per sequence (the mean log-ratio: GSPO)")
	f.BoolVar(&o.normalizeAdvantages, "normalize-advantages", false, "rloo: standardise advantages over the batch")
	f.Float64Var(&o.missingEOSPenalty, "missing-eos-penalty", 0, "subtract from the reward of a completion without EOS")
	f.BoolVar(&o.maskTruncated, "mask-truncated-completions", false, "leave completions without EOS out of the loss")
	addPPOFlags(f, &o.ppo)
	addOptimFlags(f, &o.optimFlags, trainDefaults{lr: 1e-6})
	_ = f.MarkHidden("eval-steps")
	f.Lookup("batch-size").Usage = "prompts per optimizer step (each sampled --num-generations times)"
	f.Lookup("eval-data").Usage = "held-out prompts: the mean reward of completions sampled before and after training"
	f.Lookup("eval-fraction").Usage = "hold out this fraction of --prompts instead of --eval-data"
	f.Lookup("gradient-accumulation-steps").Usage = "micro-batches each step's completions are split into"
	for _, name := range []string{"algo", "model", "prompts", "out"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

// rlConfig maps the flags to the library's loss configuration.
func (o *rlhfOptions) rlConfig() objective.RLConfig {
	beta := o.beta
	if !o.betaSet && o.algo == objective.AlgoRLOO {
		beta = 0.05
	}
	return objective.RLConfig{Algo: o.algo, LossType: o.lossType, Beta: beta, Epsilon: o.epsilon, EpsilonHigh: o.epsilonHigh,
		Temperature: o.temperature, MaxCompletionLength: o.maxNewTokens, ScaleRewards: o.scaleRewards,
		NormalizeAdvantages: o.normalizeAdvantages, ImportanceSamplingLevel: o.importanceSamplingLevel}
}

// validate checks the flags that need no model or data, naming the flag.
func (o *rlhfOptions) validate() error {
	if o.algo != objective.AlgoGRPO && o.algo != objective.AlgoRLOO && o.algo != objective.AlgoPPO {
		return fmt.Errorf("--algo must be grpo, rloo or ppo, got %q", o.algo)
	}
	if o.reward == "" && len(o.rewardFns) == 0 {
		return errors.New("no reward: give --reward RM.onnx and/or --reward-fn SPEC")
	}
	n := len(o.rewardFns)
	if o.reward != "" {
		n++
	}
	if o.rewardWeights != nil && len(o.rewardWeights) != n {
		return fmt.Errorf("--reward-weights has %d values for %d rewards", len(o.rewardWeights), n)
	}
	if o.evalSteps != 0 {
		return errors.New("--eval-steps is not supported by rlhf: held-out prompts are scored before and after training")
	}
	if o.temperature <= 0 {
		return fmt.Errorf("--temperature must be > 0 for online RL (sampling), got %g", o.temperature)
	}
	if o.maxPromptLength < 0 {
		return fmt.Errorf("--max-prompt-length must be >= 0, got %d", o.maxPromptLength)
	}
	if _, err := data.ParseColumns(o.columns); err != nil {
		return fmt.Errorf("--columns: %w", err)
	}
	if o.algo == objective.AlgoPPO {
		return o.validatePPO(n)
	}
	if err := o.rlConfig().Validate(); err != nil {
		return fmt.Errorf("--algo/--loss-type/--importance-sampling-level/--scale-rewards/--beta/--epsilon: %w", err)
	}
	rc := rollout.RLRunConfig{RL: o.rlConfig(), NumGenerations: o.numGenerations, NumIterations: o.numIterations,
		Sample: o.sampleOptions(nil), Rewards: make([]rollout.RewardFunc, n), RewardWeights: o.rewardWeights, MissingEOSPenalty: o.missingEOSPenalty}
	if err := rc.Validate(); err != nil {
		return fmt.Errorf("--num-generations/--num-iterations/--max-new-tokens/sampling flags: %w", err)
	}
	return nil
}

func (o *rlhfOptions) sampleOptions(tok *tokenize.Tokenizer) generate.SampleOptions {
	so := generate.SampleOptions{Temperature: o.temperature, TopK: o.topK, TopP: o.topP, MinP: o.minP,
		RepetitionPenalty: o.repetitionPenalty, MaxNewTokens: o.maxNewTokens}
	for _, id := range o.eos {
		so.EOS = append(so.EOS, int64(id))
	}
	if len(so.EOS) == 0 && tok != nil {
		if id, ok := tok.EOS(); ok {
			so.EOS = []int64{int64(id)}
		}
	}
	return so
}

func runRLHF(ctx context.Context, o *rlhfOptions, stdout, stderr io.Writer) error {
	if err := o.validate(); err != nil {
		return err
	}
	tok, err := loadTokenizer(o.tokenizer)
	if err != nil {
		return fmt.Errorf("--tokenizer: %w", err)
	}
	cfg, err := o.optimFlags.trainConfig(&o.modelFlags, o.threads, tok)
	if err != nil {
		return err
	}
	if err := o.initORT(); err != nil {
		return err
	}
	base, err := onnx.Load(o.model)
	if err != nil {
		return err
	}
	cols, _ := data.ParseColumns(o.columns)
	dopts := encode.DataOptions{Columns: cols, MaxLength: o.maxPromptLength, Truncation: tokenize.KeepEnd, Strict: o.strict,
		Tokenizer: tok, Vocab: lm.StaticVocabSize(base), Warn: stderr}
	train, eval, err := loadTrainEval(ctx, encode.LoadPromptsContext, &o.optimFlags, o.prompts, dopts)
	if err != nil {
		return err
	}
	so := o.sampleOptions(tok)
	if len(so.EOS) == 0 {
		fmt.Fprintln(stderr, "ortalign: warning: no EOS id (no --tokenizer or --eos-token-id): every completion runs to --max-new-tokens")
	}
	rc := rollout.RLRunConfig{RL: o.rlConfig(), NumGenerations: o.numGenerations, NumIterations: o.numIterations, Sample: so,
		RewardWeights: o.rewardWeights, MissingEOSPenalty: o.missingEOSPenalty, MaskTruncated: o.maskTruncated, Eval: eval,
		Notice: func(s string) { fmt.Fprintln(stderr, "ortalign: "+s) }}
	if tok != nil {
		rc.Decode = func(ids []int64) (string, error) { return tok.Decode(intIDs(ids), true) }
	}
	if o.reward != "" {
		rm, err := score.LoadRewardModel(o.reward, lm.ModelOptions{Threads: o.threads, PadID: cfg.PadID})
		if err != nil {
			return fmt.Errorf("--reward: %w", err)
		}
		defer rm.Close()
		rc.Rewards = append(rc.Rewards, rollout.ModelReward{Rewards: rm.Rewards, Batch: o.batchSize})
	}
	fo := rollout.RewardFuncOptions{Prompts: o.prompts, Columns: cols, EOS: so.EOS}
	for _, spec := range o.rewardFns {
		rf, err := rollout.ParseRewardFunc(spec, fo)
		if err != nil {
			return fmt.Errorf("--reward-fn: %w", err)
		}
		rc.Rewards = append(rc.Rewards, rf)
	}
	if o.algo == objective.AlgoPPO {
		return runPPO(ctx, o, base, cfg, train, eval, rc, stdout, stderr)
	}
	eng, err := engine.NewEngine(o.model, base, cfg, objective.RL{Config: rc.RL})
	if err != nil {
		return err
	}
	defer eng.Close()
	printReusedGraph(stderr, eng.ReusedGraph())
	fmt.Fprintf(stderr, "%s: training %d tensors of %s on %d prompts × %d completions (%s, lr %g)\n",
		o.algo, len(eng.Trainable()), o.model, len(train), o.numGenerations, o.optimizer, o.lr)
	ro := o.optimFlags.runOptions("rlhf")
	ro.Stderr = stderr
	res, err := rollout.RunRL(ctx, eng, base, train, rc, ro)
	if err != nil {
		return err
	}
	printRunSummary(stdout, res, fmt.Sprintf("held-out mean reward of sampled completions (%d prompts × %d)", len(eval), o.numGenerations))
	return nil
}
