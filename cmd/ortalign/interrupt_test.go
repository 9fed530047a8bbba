package main

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ortalign/pipeline/engine"
)

// TestTrainersInterruptedWhileLoading: every trainer whose context is done before it has
// read its data stops there, saying that training had not started (nothing saved).
func TestTrainersInterruptedWhileLoading(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	common := []string{"--model", tinyLlama, "--tokenizer", tinyTok, "--max-length", "128"}
	for _, c := range []struct {
		name string
		run  func(out string) error
	}{
		{"sft", func(out string) error {
			return runSFT(ctx, parseSFT(t, append(common, "--data", sftData, "--out", out)...), io.Discard, io.Discard)
		}},
		{"dpo", func(out string) error {
			return runDPO(ctx, parseDPO(t, append(common, "--data", trainData, "--out", out)...), io.Discard, io.Discard)
		}},
		{"reward", func(out string) error {
			return runReward(ctx, parseReward(t, append(common, "--data", trainData, "--out", out)...), io.Discard, io.Discard)
		}},
		{"kto", func(out string) error {
			return runKTO(ctx, parseKTO(t, append(common, "--data", trainData, "--out", out)...), io.Discard, io.Discard)
		}},
		{"orpo", func(out string) error {
			return runORPO(ctx, parseORPO(t, append(common, "--data", trainData, "--out", out)...), io.Discard, io.Discard)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := c.run(t.TempDir())
			if !errors.Is(err, engine.ErrInterrupted) || err.Error() != errInterruptedBeforeTraining.Error() {
				t.Fatalf("want %q, got %v", errInterruptedBeforeTraining, err)
			}
		})
	}
}

// TestScoreInterrupted: score stopped by a signal says so and writes nothing.
func TestScoreInterrupted(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	out := filepath.Join(t.TempDir(), "scores.jsonl")
	err := runScore(ctx, scoreOpts(tinyData, out), io.Discard, io.Discard)
	if !errors.Is(err, engine.ErrInterrupted) || !strings.Contains(err.Error(), out+" was not written") {
		t.Fatalf("want interrupted, got %v", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatalf("output left behind: %v", err)
	}
}
