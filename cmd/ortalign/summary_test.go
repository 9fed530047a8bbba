package main

import (
	"bytes"
	"testing"

	"ortalign/pipeline/engine"
)

// TestPrintRunSummary: the files a run wrote, then the held-out table only when the run
// had held-out data.
func TestPrintRunSummary(t *testing.T) {
	res := &engine.RunResult{ModelPath: "run/model.onnx", MetricsPath: "run/metrics.jsonl"}
	var b bytes.Buffer
	printRunSummary(&b, res, "held-out metrics (3 pairs)")
	if got := b.String(); got != "wrote run/model.onnx and run/metrics.jsonl\n" {
		t.Fatalf("without held-out data: %q", got)
	}
	res.EvalBefore = engine.Metrics{{Name: "eval_loss", Value: 0.75}}
	res.EvalAfter = engine.Metrics{{Name: "eval_loss", Value: 0.25}}
	b.Reset()
	printRunSummary(&b, res, "held-out metrics (3 pairs)")
	var table bytes.Buffer
	engine.FormatComparison(&table, res.EvalBefore, res.EvalAfter)
	want := "wrote run/model.onnx and run/metrics.jsonl\nheld-out metrics (3 pairs):\n" + table.String()
	if got := b.String(); got != want || !bytes.Contains(table.Bytes(), []byte("0.75")) {
		t.Fatalf("with held-out data:\n%s\nwant\n%s", got, want)
	}
}
