package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"ortalign/pipeline/objective"
)

// cpoOptions are the flags of `ortalign cpo` (TRL's CPOConfig names in kebab case).
type cpoOptions struct {
	refFreeOptions
	loss                     string
	cpoAlpha, labelSmoothing float64
	simpoGamma               optionalFloat
}

// newCPOCmd builds the command; runF replaces runCPO in tests of flag parsing.
func newCPOCmd(g *globalOptions, runF func(*cpoOptions) error) *cobra.Command {
	o := &cpoOptions{refFreeOptions: refFreeOptions{globalOptions: g}}
	cmd := &cobra.Command{
		Use:   "cpo --model M.onnx --data D.parquet --out DIR [--loss sigmoid|hinge|ipo|simpo]",
		Short: "Align a model on preference pairs with CPO or SimPO: no reference model",
		Long: `cpo trains the model on preference pairs with TRL's CPOTrainer loss: per pair, with c, r
the chosen and rejected completions' log-probs (summed; averaged over their tokens for
ipo and simpo) and d = c − r,

  sigmoid  −(1−ε)·logσ(βd) − ε·logσ(−βd)     (ε = --label-smoothing)
  hinge    relu(1 − βd)
  ipo      (d − 1/(2β))²
  simpo    the sigmoid loss on d − γ/β        (γ = --simpo-gamma)

averaged over pairs, plus --cpo-alpha times the NLL of the chosen completions. SimPO as
its paper is --loss simpo --cpo-alpha 0. No reference model and no reference pass.

Writes DIR/model.onnx, DIR/metrics.jsonl (TRL's names: loss, nll_loss, rewards/* = β ·
the compared log-probs, logps/*) and DIR/checkpoint.bin, as dpo; running the same command
again resumes from the checkpoint.`,
		Example: `  ortalign cpo --loss simpo --cpo-alpha 0 --beta 2 --simpo-gamma 0.5 \
      --model model.onnx --data train.parquet --tokenizer tokenizer.json --out simpo1 --lr 5e-4`,
		Args: cobra.NoArgs,
		RunE: runner(o, runF, runCPO),
	}
	f := cmd.Flags()
	addRefFreeFlags(f, &o.refFreeOptions, "β: the temperature of the loss (for ipo, its regularisation τ)")
	f.StringVar(&o.loss, "loss", objective.CPOSigmoid, "loss type: "+strings.Join(objective.CPOLossTypes, ", "))
	f.Float64Var(&o.cpoAlpha, "cpo-alpha", objective.DefaultCPOAlpha, "weight of the chosen completions' NLL (0 = none: SimPO with --loss simpo)")
	f.Var(&o.simpoGamma, "simpo-gamma", fmt.Sprintf("target reward margin γ of --loss simpo (default %g)", objective.DefaultSimPOGamma))
	f.Float64Var(&o.labelSmoothing, "label-smoothing", 0, "label noise ε of the sigmoid and simpo losses")
	for _, name := range []string{"model", "data", "out"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

// config maps the flags to the library's CPO objective, checked; errors name the flags.
func (o *cpoOptions) config() (objective.CPO, error) {
	c := objective.CPO{Loss: o.loss, Beta: o.beta, Alpha: o.cpoAlpha, LabelSmoothing: o.labelSmoothing}
	switch {
	case o.simpoGamma.set && o.loss != objective.CPOSimPO:
		return c, fmt.Errorf("--simpo-gamma applies to --loss simpo only")
	case o.loss == objective.CPOSimPO:
		c.SimPOGamma = objective.DefaultSimPOGamma
		if o.simpoGamma.set {
			c.SimPOGamma = o.simpoGamma.v
		}
	}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("loss flags (--loss, --beta, --cpo-alpha, --simpo-gamma, --label-smoothing): %w", err)
	}
	return c, nil
}

func runCPO(ctx context.Context, o *cpoOptions, stdout, stderr io.Writer) error {
	c, err := o.config()
	if err != nil {
		return err
	}
	what := fmt.Sprintf("CPO %s loss, β %g, NLL weight %g", c.Loss, c.Beta, c.Alpha)
	return runRefFree(ctx, &o.refFreeOptions, c, what, stdout, stderr)
}
