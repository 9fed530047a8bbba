package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
)

// TestDPOStepReferenceEqualsPrecomputed: on the bundled data, dpo with each step's
// reference log-probs computed as the step comes (the default) writes the model.onnx
// and metrics.jsonl (but for wall-clock values) of --precompute-ref-log-probs, with
// held-out pairs evaluated along the way, with the starting model as the reference and
// with a --ref model; stderr says which way it went.
func TestDPOStepReferenceEqualsPrecomputed(t *testing.T) {
	for _, ref := range []bool{false, true} {
		name := "starting model"
		if ref {
			name = "--ref"
		}
		t.Run(name, func(t *testing.T) {
			run := func(pre bool) (string, string) {
				t.Helper()
				out := t.TempDir()
				extra := []string{"--max-steps", "6", "--eval-data", tinyData, "--eval-steps", "3", "--batch-size", "4", "--gradient-accumulation-steps", "2"}
				if pre {
					extra = append(extra, "--precompute-ref-log-probs")
				}
				if ref {
					extra = append(extra, "--ref", tinyLlama)
				}
				var stderr bytes.Buffer
				if err := runDPO(context.Background(), dpoOpts(t, out, extra...), &bytes.Buffer{}, &stderr); err != nil {
					t.Fatal(err)
				}
				return out, stderr.String()
			}
			step, stepLog := run(false)
			pre, preLog := run(true)
			if !strings.Contains(stepLog, "each step's as it comes") || strings.Contains(preLog, "each step's as it comes") || !strings.Contains(preLog, "reference: ") {
				t.Errorf("stderr does not say how the reference was computed:\n%s\n--precompute-ref-log-probs:\n%s", stepLog, preLog)
			}
			if strings.Contains(stepLog, "reference: ") {
				t.Errorf("a pass over the data before training:\n%s", stepLog)
			}
			if a, b := readFile(t, filepath.Join(step, "model.onnx")), readFile(t, filepath.Join(pre, "model.onnx")); a != b {
				t.Error("model.onnx differs from the precomputed run's")
			}
			a := untimed(t, []byte(readFile(t, filepath.Join(step, "metrics.jsonl"))))
			b := untimed(t, []byte(readFile(t, filepath.Join(pre, "metrics.jsonl"))))
			if a != b || strings.Count(a, `"eval_loss"`) != 2 {
				t.Errorf("metrics (wall-clock values left out), each step's reference:\n%s\nprecomputed:\n%s", a, b)
			}
		})
	}
}
