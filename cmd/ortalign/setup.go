package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"ortalign/onnx"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/lm"
)

// prepareTraining is the common start of every trainer: the flags are checked and the
// tokenizer loaded before anything heavy, then ONNX Runtime and the model are loaded.
func prepareTraining(g *globalOptions, d *dataFlags, m *modelFlags, o *optimFlags, tokPath string) (encode.DataOptions, engine.TrainConfig, *onnx.Model, error) {
	data, err := d.options(tokPath)
	if err != nil {
		return data, engine.TrainConfig{}, nil, err
	}
	cfg, err := o.trainConfig(m, g.threads, data.Tokenizer)
	if err != nil {
		return data, cfg, nil, err
	}
	if err := g.initORT(); err != nil {
		return data, cfg, nil, err
	}
	base, err := onnx.Load(m.model)
	if err != nil {
		return data, cfg, nil, err
	}
	data.Vocab = lm.StaticVocabSize(base)
	return data, cfg, base, nil
}

// printNotices reports what the engine decided on its own (e.g. layers it could not
// checkpoint).
func printNotices(stderr io.Writer, notices []string) {
	for _, n := range notices {
		fmt.Fprintf(stderr, "notice: %s\n", n)
	}
}

// printReusedGraph says when the engine took its training graph from the run's
// directory (path, from Engine.ReusedGraph) instead of building it.
func printReusedGraph(stderr io.Writer, path string) {
	if path != "" {
		fmt.Fprintf(stderr, "training graph: reused %s (built for this model and options)\n", path)
	}
}

// runner is a command's RunE: runF when a test replaces the work (flag parsing only),
// else run with the command's context and output streams.
func runner[O any](o *O, runF func(*O) error, run func(context.Context, *O, io.Writer, io.Writer) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, _ []string) error {
		if runF != nil {
			return runF(o)
		}
		return run(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr())
	}
}
