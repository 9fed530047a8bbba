package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"ortalign/pipeline/engine"
	"path/filepath"
	"strings"
	"testing"
)

const sftData = "../../testdata/data/sft_train.parquet"

func parseSFT(t *testing.T, args ...string) *sftOptions { return parseFlags(t, newSFTCmd, args...) }

// metricLines reads the training lines of a metrics.jsonl: not eval_ lines, nor the run's
// last line (its train_runtime, with no step).
func metricLines(t *testing.T, path string) []engine.Metrics {
	t.Helper()
	var out []engine.Metrics
	for _, line := range strings.Split(strings.TrimSpace(readFile(t, path)), "\n") {
		var m engine.Metrics
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatal(err)
		}
		_, eval := m.Get("eval_loss")
		if _, step := m.Get("step"); step && !eval {
			out = append(out, m)
		}
	}
	return out
}

// TestSFTThenDPO is the usual pipeline on the bundled data: SFT on the chosen
// completions, then DPO (sigmoid and IPO) from the SFT model; the SFT loss falls, and
// each DPO run takes held-out reward accuracy to at least 90%.
func TestSFTThenDPO(t *testing.T) {
	sftDir := t.TempDir()
	o := parseSFT(t, "--model", tinyLlama, "--data", sftData, "--tokenizer", tinyTok, "--out", sftDir,
		"--max-length", "128", "--lr", "1e-3", "--epochs", "1", "--eval-fraction", "0.1", "--eval-steps", "20")
	var stdout bytes.Buffer
	if err := runSFT(context.Background(), o, &stdout, io.Discard); err != nil {
		t.Fatal(err)
	}
	lines := metricLines(t, filepath.Join(sftDir, "metrics.jsonl"))
	first, last := lines[0], lines[len(lines)-1]
	if len(lines) != 45 || !(last.Value("loss") < 0.8*first.Value("loss")) || last.Value("num_tokens") <= first.Value("num_tokens") {
		t.Fatalf("sft: %d steps, loss %.3f -> %.3f, num_tokens %v -> %v", len(lines), first.Value("loss"), last.Value("loss"), first.Value("num_tokens"), last.Value("num_tokens"))
	}
	if !strings.Contains(stdout.String(), "mean_token_accuracy") {
		t.Fatalf("sft summary has no held-out table: %s", stdout.String())
	}
	sftModel := filepath.Join(sftDir, "model.onnx")
	for _, loss := range []string{"sigmoid", "ipo"} {
		t.Run(loss, func(t *testing.T) {
			out := t.TempDir()
			o := parseDPO(t, "--model", sftModel, "--data", trainData, "--tokenizer", tinyTok, "--out", out,
				"--max-length", "128", "--lr", "1e-3", "--epochs", "1", "--loss", loss, "--eval-data", tinyData)
			if err := runDPO(context.Background(), o, io.Discard, io.Discard); err != nil {
				t.Fatal(err)
			}
			acc := heldOutAccuracy(t, filepath.Join(out, "model.onnx"), sftModel)
			t.Logf("%s after SFT: held-out reward accuracy %.1f%%", loss, 100*acc)
			if acc < 0.9 {
				t.Fatalf("held-out reward accuracy %.1f%%, want >= 90%%", 100*acc)
			}
		})
	}
}

// TestSFTFlags: the command line fills the options through runF, without running.
func TestSFTFlags(t *testing.T) {
	o := parseSFT(t, "--model", "m.onnx", "--data", "d.parquet", "--tokenizer", "tok.json", "--out", "run",
		"--lr", "3e-4", "--epochs", "2", "--batch-size", "4", "--max-length", "256", "--eval-fraction", "0.2", "--lora-r", "8")
	if o.model != "m.onnx" || o.dataPath != "d.parquet" || o.tokenizer != "tok.json" || o.out != "run" || o.lr != 3e-4 ||
		o.epochs != 2 || o.batchSize != 4 || o.maxLength != 256 || o.evalFraction != 0.2 || o.loraR != 8 {
		t.Fatalf("options %+v", o)
	}
	if d := parseSFT(t, "--model", "m.onnx", "--data", "d.parquet", "--out", "run"); d.lr != 2e-5 || d.loraR != 0 {
		t.Fatalf("defaults: lr %g, lora-r %d", d.lr, d.loraR)
	}
}
