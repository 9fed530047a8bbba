package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"ortalign/internal/atomicfile"
	"ortalign/onnx"
	"ortalign/onnx/autodiff"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/objective"
)

// artifactsOptions are the flags of `ortalign artifacts`.
type artifactsOptions struct {
	modelFlags
	lossFlags
	out string
}

// newArtifactsCmd builds the command; runF replaces runArtifacts in tests of flag
// parsing.
func newArtifactsCmd(g *globalOptions, runF func(*artifactsOptions) error) *cobra.Command {
	o := &artifactsOptions{}
	cmd := &cobra.Command{
		Use:   "artifacts --model M.onnx --loss sigmoid --out DIR",
		Short: "Write the generated training graph and its manifest, to drive training from your own code",
		Long: `artifacts writes DIR/training.onnx — the model with a preference-loss head and the
generated backward pass, in standard ONNX operators that any ONNX Runtime build runs — and
DIR/manifest.json, which lists its data inputs, the trainable parameters (fed as inputs;
start from the model's initializers of the same names) with the output holding each one's
gradient, and all outputs. One session run gives the loss, the per-sequence log-probs and
every gradient; apply your optimizer to the parameters and feed them back.`,
		Example: `  ortalign artifacts --model model.onnx --loss sigmoid --beta 0.1 --out artifacts/`,
		Args:    cobra.NoArgs,
		RunE: runner(o, runF, func(_ context.Context, o *artifactsOptions, stdout, _ io.Writer) error {
			return runArtifacts(g, o, stdout)
		}),
	}
	f := cmd.Flags()
	addModelFlags(f, &o.modelFlags)
	f.StringVar(&o.out, "out", "", "output directory")
	addLossFlags(f, &o.lossFlags)
	_ = cmd.MarkFlagRequired("model")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

func runArtifacts(g *globalOptions, o *artifactsOptions, stdout io.Writer) error {
	freeze, err := o.freezeRegexp()
	if err != nil {
		return err
	}
	loss, err := o.lossFlags.config()
	if err != nil {
		return err
	}
	if err := g.initORT(); err != nil {
		return err
	}
	m, err := onnx.Load(o.model)
	if err != nil {
		return err
	}
	res, err := engine.BuildTrainingGraph(m, objective.DPO{Loss: loss}, engine.GraphConfig{Freeze: freeze, TieTransposedCopies: !o.untie})
	if err != nil {
		return fmt.Errorf("%s: %w", o.model, err)
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	graphPath := filepath.Join(o.out, "training.onnx")
	if err := res.Model.Save(graphPath, onnx.SaveOptions{}); err != nil {
		return err
	}
	manifest := struct {
		Source string               `json:"source_model"`
		Loss   objective.LossConfig `json:"loss_config"`
		autodiff.Manifest
	}{o.model, loss, res.Manifest}
	b, err := json.MarshalIndent(manifest, "", "  ")
	if err != nil {
		return err
	}
	manifestPath := filepath.Join(o.out, "manifest.json")
	err = atomicfile.WriteFile(manifestPath, func(w io.Writer) error {
		_, err := w.Write(append(b, '\n'))
		return err
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s (%d trainable tensors) and %s\n", graphPath, len(res.Trainable), manifestPath)
	return nil
}
