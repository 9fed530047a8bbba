package main

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/spf13/pflag"

	"ortalign/onnx/lora"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/lm"
	"ortalign/tokenize"
)

// trainDefaults are an objective's defaults for the shared training flags (TRL's
// config classes differ in learning rate and little else).
type trainDefaults struct {
	lr float64
}

// modelFlags choose the model and what of it trains.
type modelFlags struct {
	model  string
	freeze string
	untie  bool
	loraFlags
}

// loraFlags train LoRA adapters instead of the model's weights (PEFT's LoraConfig names).
type loraFlags struct {
	loraR         int
	loraAlpha     float64
	loraDropout   float64
	loraTargets   string
	loraBaseModel string
	saveAdapter   bool
}

func addModelFlags(f *pflag.FlagSet, m *modelFlags) {
	f.StringVar(&m.model, "model", "", "starting policy (ONNX causal LM)")
	f.StringVar(&m.freeze, "freeze", "", "regexp of initializer names to keep frozen")
	f.BoolVar(&m.untie, "untie", false, "train transposed copies of a weight (GPT-2's exported lm_head) separately instead of as the weight they copy")
	f.IntVar(&m.loraR, "lora-r", 0, "LoRA rank: train low-rank adapters on --lora-target-modules instead of the weights, merged into model.onnx at the end (0 = off)")
	f.Float64Var(&m.loraAlpha, "lora-alpha", engine.DefaultLoRAAlpha, "LoRA alpha: the adapters' update is scaled by alpha/r")
	f.Float64Var(&m.loraDropout, "lora-dropout", 0, "LoRA dropout (only 0 is supported: the training graph has no training-mode Dropout)")
	f.StringVar(&m.loraTargets, "lora-target-modules", "", "comma-separated module names to adapt, PEFT's matching (a module path equal to or ending in .NAME), or all-linear (default: "+strings.Join(lora.DefaultTargetModules, ",")+")")
	f.StringVar(&m.loraBaseModel, "lora-base-model", "", "base_model_name_or_path written to adapter_config.json (--save-adapter; default: name_or_path of the tokenizer_config.json beside --tokenizer, else the --model folder's absolute path)")
	f.BoolVar(&m.saveAdapter, "save-adapter", false, "also write the LoRA adapter alone to --out as PEFT does (adapter_model.safetensors, adapter_config.json)")
}

// lora returns the LoRA adapter the flags ask for (nil without --lora-r); errors name
// the flag.
func (l *loraFlags) lora(out string, seed int64) (*engine.LoRA, error) {
	switch {
	case l.loraR < 0:
		return nil, fmt.Errorf("--lora-r must be >= 0, got %d", l.loraR)
	case l.loraR == 0 && (l.saveAdapter || l.loraTargets != "" || l.loraDropout != 0 || l.loraBaseModel != ""):
		return nil, fmt.Errorf("--save-adapter, --lora-target-modules, --lora-dropout and --lora-base-model need --lora-r")
	case l.loraR == 0:
		return nil, nil
	}
	c := &engine.LoRA{R: l.loraR, Alpha: l.loraAlpha, Dropout: l.loraDropout, Seed: seed, BaseModel: l.loraBaseModel}
	for _, name := range strings.Split(l.loraTargets, ",") {
		if name = strings.TrimSpace(name); name != "" {
			c.TargetModules = append(c.TargetModules, name)
		}
	}
	if l.saveAdapter {
		c.SaveDir = out
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("LoRA flags (--lora-r, --lora-alpha, --lora-dropout, --lora-target-modules): %w", err)
	}
	return c, nil
}

func (m *modelFlags) freezeRegexp() (*regexp.Regexp, error) {
	if m.freeze == "" {
		return nil, nil
	}
	re, err := regexp.Compile(m.freeze)
	if err != nil {
		return nil, fmt.Errorf("--freeze: %w", err)
	}
	return re, nil
}

// optimFlags are the optimizer, schedule and batching flags of every trainer, with the
// names and defaults of Hugging Face's TrainingArguments.
type optimFlags struct {
	optimizer                  string
	lr, weightDecay            float64
	beta1, beta2, eps          float64
	maxGradNorm                float64
	scheduler                  string
	warmupSteps                int
	warmupRatio                float64
	batchSize, accum           int
	epochs, maxSteps           int
	seed                       int64
	noShuffle                  bool
	gradientCheckpointing      bool
	padToMultipleOf            int
	checkpointEvery, evalSteps int
	evalData                   string
	evalFraction               float64
	out                        string
}

func addOptimFlags(f *pflag.FlagSet, o *optimFlags, d trainDefaults) {
	f.StringVar(&o.out, "out", "", "output directory: model.onnx, metrics.jsonl, checkpoint.bin (a checkpoint there is resumed)")
	f.StringVar(&o.optimizer, "optimizer", engine.OptimAdamW, "optimizer: adamw or sgd")
	f.Float64Var(&o.lr, "lr", d.lr, "peak learning rate")
	f.Float64Var(&o.weightDecay, "weight-decay", 0, "weight decay (decoupled for adamw, L2 for sgd)")
	f.Float64Var(&o.beta1, "adam-beta1", 0.9, "AdamW β1")
	f.Float64Var(&o.beta2, "adam-beta2", 0.999, "AdamW β2")
	f.Float64Var(&o.eps, "adam-epsilon", 1e-8, "AdamW ε")
	f.Float64Var(&o.maxGradNorm, "max-grad-norm", 1.0, "clip the gradient norm (0 = off)")
	f.StringVar(&o.scheduler, "lr-scheduler", engine.SchedulerLinear, "learning-rate schedule: constant, constant_with_warmup, linear or cosine")
	f.IntVar(&o.warmupSteps, "warmup-steps", 0, "linear warm-up optimizer steps")
	f.Float64Var(&o.warmupRatio, "warmup-ratio", 0, "warm-up as a fraction of all optimizer steps (when --warmup-steps is 0)")
	f.IntVar(&o.batchSize, "batch-size", 8, "items per micro-batch")
	f.IntVar(&o.accum, "gradient-accumulation-steps", 1, "micro-batches per optimizer step")
	f.IntVar(&o.epochs, "epochs", 3, "passes over the data")
	f.IntVar(&o.maxSteps, "max-steps", 0, "optimizer steps to run (overrides --epochs when > 0)")
	f.Int64Var(&o.seed, "seed", 42, "seed of the data order and of --eval-fraction")
	f.BoolVar(&o.noShuffle, "no-shuffle", false, "keep the data order")
	f.BoolVar(&o.gradientCheckpointing, "gradient-checkpointing", true, "recompute each decoder layer's forward in the backward pass instead of keeping its activations: same gradients, about half the activation memory on a 12-layer model for 10-20% more compute (as TRL; =false keeps them)")
	f.IntVar(&o.padToMultipleOf, "pad-to-multiple-of", lm.DefaultPadToMultipleOf, "pad each micro-batch's sequences to a multiple of N tokens (TRL's pad_to_multiple_of): the training graph is opened once per batch shape, so fewer shapes start faster (1 = pad to the longest only)")
	f.IntVar(&o.checkpointEvery, "checkpoint-every", 500, "optimizer steps between checkpoints (also saved at the end and on Ctrl-C)")
	f.StringVar(&o.evalData, "eval-data", "", "held-out data: metrics before and after training")
	f.Float64Var(&o.evalFraction, "eval-fraction", 0, "hold out this fraction of --data for evaluation instead of --eval-data")
	f.IntVar(&o.evalSteps, "eval-steps", 0, "log eval_* metrics to metrics.jsonl every N optimizer steps and after the last (0 = only before and after training)")
}

// validate checks the flags that need no model, naming the flag.
func (o *optimFlags) validate() error {
	switch {
	case o.out == "":
		return fmt.Errorf("--out is required")
	case o.evalData != "" && o.evalFraction > 0:
		return fmt.Errorf("--eval-data and --eval-fraction exclude each other")
	case o.evalFraction < 0 || o.evalFraction >= 1:
		return fmt.Errorf("--eval-fraction must be in [0, 1), got %g", o.evalFraction)
	case o.evalSteps < 0:
		return fmt.Errorf("--eval-steps must be >= 0, got %d", o.evalSteps)
	case o.checkpointEvery < 0:
		return fmt.Errorf("--checkpoint-every must be >= 0, got %d", o.checkpointEvery)
	case o.accum <= 0:
		return fmt.Errorf("--gradient-accumulation-steps must be positive, got %d", o.accum)
	case o.epochs <= 0:
		return fmt.Errorf("--epochs must be positive, got %d", o.epochs)
	case o.padToMultipleOf <= 0:
		return fmt.Errorf("--pad-to-multiple-of must be positive, got %d", o.padToMultipleOf)
	}
	return nil
}

// trainConfig builds the engine's configuration; errors name the flag at fault. tok
// (nil for pre-tokenized data) gives the padding id and, for --save-adapter, the default
// of --lora-base-model.
func (o *optimFlags) trainConfig(m *modelFlags, threads int, tok *tokenize.Tokenizer) (engine.TrainConfig, error) {
	c := engine.TrainConfig{
		Optim:       engine.OptimConfig{Name: o.optimizer, WeightDecay: o.weightDecay, Beta1: o.beta1, Beta2: o.beta2, Eps: o.eps},
		LR:          o.lr,
		Scheduler:   o.scheduler,
		WarmupSteps: o.warmupSteps,
		WarmupRatio: o.warmupRatio,
		MaxGradNorm: o.maxGradNorm,
		BatchSize:   o.batchSize,
		GradAccum:   o.accum,
		Epochs:      o.epochs,
		MaxSteps:    o.maxSteps,
		Seed:        o.seed,
		Shuffle:     !o.noShuffle,
		Threads:     threads,
		PadID:       padID(tok),

		TieTransposedCopies:   !m.untie,
		GradientCheckpointing: o.gradientCheckpointing,
		PadToMultipleOf:       o.padToMultipleOf,
		// A resumed run (same --out) reuses the training graph the first one built.
		GraphCache: o.out,
	}
	if err := o.validate(); err != nil {
		return c, err
	}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("training flags (--optimizer, --lr, --adam-*, --lr-scheduler, --warmup-*, --batch-size, --max-steps): %w", err)
	}
	l, err := m.lora(o.out, o.seed)
	if err != nil {
		return c, err
	}
	if l != nil {
		if l.SaveDir != "" && l.BaseModel == "" {
			tokPath := ""
			if tok != nil {
				tokPath = tok.Path()
			}
			if l.BaseModel, err = engine.PEFTBaseModel(m.model, tokPath); err != nil {
				return c, fmt.Errorf("--lora-base-model (its default, from --tokenizer or --model): %w", err)
			}
		}
		c.Adapter = *l
	}
	c.Freeze, err = m.freezeRegexp()
	return c, err
}

// referenceFlags say when a reference-model objective (DPO) computes its reference
// log-probs.
type referenceFlags struct {
	precomputeRef bool
}

func addReferenceFlags(f *pflag.FlagSet, r *referenceFlags) {
	f.BoolVar(&r.precomputeRef, "precompute-ref-log-probs", false, "compute every training item's reference log-probs (pairs; KTO's rows and KL pairs) before the first step (TRL's precompute_ref_log_probs) instead of each step's as it comes")
}

// runOptions are the engine's run settings from the flags.
func (o *optimFlags) runOptions(label string) engine.RunOptions {
	return engine.RunOptions{Out: o.out, CheckpointEvery: o.checkpointEvery, EvalSteps: o.evalSteps, Label: label}
}

// loadTrainEval reads the training items of dataPath and the held-out ones: --eval-data,
// or a seeded --eval-fraction of the training items.
func loadTrainEval[T any](ctx context.Context, load func(context.Context, string, encode.DataOptions) (*encode.Loaded[T], error), o *optimFlags, dataPath string, data encode.DataOptions) (train, eval []T, err error) {
	l, err := load(ctx, dataPath, data)
	if err != nil {
		return nil, nil, loadError(err)
	}
	train = l.Items
	if o.evalData != "" {
		held, err := load(ctx, o.evalData, data)
		if err != nil {
			return nil, nil, loadError(err)
		}
		return train, held.Items, nil
	}
	if train, eval, err = engine.SplitEval(train, o.evalFraction, o.seed); err != nil {
		return nil, nil, fmt.Errorf("--eval-fraction: %w", err)
	}
	if len(train) == 0 {
		return nil, nil, fmt.Errorf("%s: nothing to train on", dataPath)
	}
	return train, eval, nil
}

// loadError is a dataset's loading error as a trainer reports it: a signal stops the run
// before training (nothing saved), and missing columns hint at --columns.
func loadError(err error) error {
	if errors.Is(err, context.Canceled) {
		return errInterruptedBeforeTraining
	}
	return flagHints(err)
}
