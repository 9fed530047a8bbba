package main

import (
	"fmt"
	"io"

	"ortalign/pipeline/engine"
)

// printRunSummary prints the end of a training run: the model and metrics files it
// wrote, then, when the run had held-out data, heldOut (e.g. "held-out metrics (40
// pairs)") and the held-out metrics before and after training.
func printRunSummary(w io.Writer, res *engine.RunResult, heldOut string) {
	fmt.Fprintf(w, "wrote %s and %s\n", res.ModelPath, res.MetricsPath)
	if res.EvalAfter != nil {
		fmt.Fprintf(w, "%s:\n", heldOut)
		engine.FormatComparison(w, res.EvalBefore, res.EvalAfter)
	}
}
