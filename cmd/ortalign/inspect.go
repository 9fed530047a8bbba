package main

import (
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"ortalign/onnx"
	"ortalign/onnx/autodiff"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/generate"
	"ortalign/pipeline/lm"
	"ortalign/pipeline/objective"
)

// inspectOptions are the arguments of `ortalign inspect`.
type inspectOptions struct {
	*globalOptions
	model string
}

// newInspectCmd builds the command; runF replaces inspectModel in tests of argument
// parsing.
func newInspectCmd(g *globalOptions, runF func(*inspectOptions) error) *cobra.Command {
	o := &inspectOptions{globalOptions: g}
	return &cobra.Command{
		Use:   "inspect MODEL.onnx",
		Short: "Show a model's inputs, outputs, opsets, parameter count, op histogram, trainability and KV cache",
		Long: `Show a model's inputs, outputs, opsets, parameter count and op histogram; whether ortalign
can differentiate it for training; and how generation decodes with it: with the export's own
KV cache (past_key_values.* inputs), with one derived from the graph (checked against decoding
without a cache, as generate does), or without a cache, and why. The KV cache check runs the
model with ONNX Runtime.`,
		Example: `  ortalign inspect testdata/models/llama_opset17.onnx`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.model = args[0]
			if runF != nil {
				return runF(o)
			}
			return inspectModel(o, cmd.OutOrStdout())
		},
	}
}

// inspectModel prints the model's summary, trainability and KV cache.
func inspectModel(o *inspectOptions, w io.Writer) error {
	m, err := onnx.Load(o.model)
	if err != nil {
		return err
	}
	printSummary(w, o.model, onnx.Summary(m))
	printTrainability(w, m)
	if err := o.initORT(); err != nil {
		fmt.Fprintf(w, "KV cache:   not checked: %v\n", err)
		return nil
	}
	printKVCache(w, o.model, m, o.threads)
	return nil
}

// printKVCache says how generation decodes with the model (generate.InspectKVCache).
func printKVCache(w io.Writer, path string, m *onnx.Model, threads int) {
	info, err := generate.InspectKVCache(path, m, threads)
	switch {
	case err != nil:
		fmt.Fprintf(w, "KV cache:   cannot generate with this model: %v\n", err)
	case info.Mode == "none":
		fmt.Fprintf(w, "KV cache:   none; generation re-runs the whole sequence at every step (%s)\n", info.Reason)
	case info.Mode == "export":
		fmt.Fprintln(w, "KV cache:   the export's own (past_key_values.* inputs):")
	default:
		fmt.Fprintln(w, "KV cache:   derived from the graph (checked against decoding without a cache):")
	}
	if err == nil {
		for _, d := range info.Detail {
			fmt.Fprintf(w, "  %s\n", d)
		}
	}
}

func printSummary(w io.Writer, path string, s onnx.ModelSummary) {
	fmt.Fprintf(w, "model:      %s\n", path)
	fmt.Fprintf(w, "producer:   %s %s (IR version %d)\n", s.ProducerName, s.ProducerVersion, s.IRVersion)
	var opsets []string
	for _, o := range s.Opsets {
		d := o.Domain
		if d == "" {
			d = "ai.onnx"
		}
		opsets = append(opsets, fmt.Sprintf("%s %d", d, o.Version))
	}
	fmt.Fprintf(w, "opsets:     %s\n", strings.Join(opsets, ", "))
	fmt.Fprintf(w, "parameters: %d in %d initializers (%.1f MB)\n", s.ParamCount, s.Initializers, float64(s.ParamBytes)/1e6)
	fmt.Fprintln(w, "inputs:")
	for _, v := range s.Inputs {
		fmt.Fprintf(w, "  %-24s %s %s\n", v.Name, v.ElemType, dimsString(v.Dims))
	}
	fmt.Fprintln(w, "outputs:")
	for _, v := range s.Outputs {
		fmt.Fprintf(w, "  %-24s %s %s\n", v.Name, v.ElemType, dimsString(v.Dims))
	}
	fmt.Fprintf(w, "ops (%d nodes):\n", s.Nodes)
	ops := make([]string, 0, len(s.OpHistogram))
	for op := range s.OpHistogram {
		ops = append(ops, op)
	}
	sort.Slice(ops, func(i, j int) bool {
		if s.OpHistogram[ops[i]] != s.OpHistogram[ops[j]] {
			return s.OpHistogram[ops[i]] > s.OpHistogram[ops[j]]
		}
		return ops[i] < ops[j]
	})
	for _, op := range ops {
		fmt.Fprintf(w, "  %-24s %d\n", op, s.OpHistogram[op])
	}
}

func dimsString(dims []onnx.Dim) string {
	if dims == nil {
		return "[?]"
	}
	parts := make([]string, len(dims))
	for i, d := range dims {
		parts[i] = d.String()
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// printTrainability says whether ortalign can differentiate the model for training, and
// lists the nodes on the training path whose ops lack a gradient rule.
func printTrainability(w io.Writer, m *onnx.Model) {
	names, err := lm.TrainableNames(m, nil)
	fwd := m.Clone()
	if err == nil {
		err = objective.AppendPreferenceLoss(fwd, objective.LossConfig{Type: objective.LossSigmoid, Beta: 0.1})
	}
	if err != nil {
		fmt.Fprintf(w, "training:   not trainable as a causal LM: %v\n", err)
		return
	}
	missing := autodiff.Unsupported(fwd, engine.LossOutput, names)
	if len(missing) == 0 {
		fmt.Fprintf(w, "training:   %d trainable tensors; every op on the path to the loss has a gradient rule\n", len(names))
		return
	}
	fmt.Fprintf(w, "training:   %d nodes on the path to the loss have no gradient rule:\n", len(missing))
	for _, n := range missing {
		fmt.Fprintf(w, "  %s\n", n)
	}
}
