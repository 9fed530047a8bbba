package objective

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
)

// pairRounds is a source of rounds of two steps each (as online RL's rounds), summed up
// in one line a round, over an offline source's steps.
type pairRounds struct {
	engine.Source[encode.EncodedPair]
}

func (p pairRounds) Plan() engine.Plan {
	pl := p.Source.Plan()
	pl.RoundSteps = 2
	return pl
}

func (p pairRounds) Round(ctx context.Context, step int) (*engine.Round[encode.EncodedPair], error) {
	r := &engine.Round[encode.EncodedPair]{Summary: func(steps []engine.Metrics, lr float64) engine.Metrics {
		return engine.Metrics{{Name: "loss", Value: steps[len(steps)-1].Value("loss")}, {Name: "lr", Value: lr}}
	}}
	for s := step; s < step+2; s++ {
		one, err := p.Source.Round(ctx, s)
		if err != nil {
			return nil, err
		}
		r.Steps = append(r.Steps, one.Steps...)
	}
	return r, nil
}

// readLines decodes a metrics.jsonl into ordered lines.
func readLines(t *testing.T, path string) []engine.Metrics {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []engine.Metrics
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var m engine.Metrics
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// TestMetricsCarryWallClock: every step's line has its seconds (time/step_s, before the
// learning rate, epoch and step), a line that sums up a round has its steps' mean, and
// the run's last line has Hugging Face's train_runtime, train_samples_per_second and
// train_steps_per_second (whose ratio is the items of a step) with the epoch and no
// step; only those are engine.WallClock.
func TestMetricsCarryWallClock(t *testing.T) {
	pairs, pad := enginePairs(t)
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimAdamW}, LR: 1e-3, BatchSize: 2, GradAccum: 2, MaxSteps: 4, Threads: 1, PadID: pad}
	for _, rounds := range []bool{false, true} {
		e := newEngine(t, cfg, 0.1)
		src, err := e.Items(pairs)
		if err != nil {
			t.Fatal(err)
		}
		want := 4 // step lines
		if rounds {
			src, want = pairRounds{src}, 2
		}
		path := filepath.Join(t.TempDir(), "metrics.jsonl")
		if err := e.Run(context.Background(), src, engine.RunConfig[encode.EncodedPair]{MetricsPath: path}); err != nil {
			t.Fatal(err)
		}
		lines := readLines(t, path)
		if len(lines) != want+1 {
			t.Fatalf("rounds %v: %d lines, want %d steps' and the run's last", rounds, len(lines), want)
		}
		for k, m := range lines[:want] {
			n := len(m)
			if m[n-1].Name != "step" || m[n-2].Name != "epoch" || !(m.Value(engine.StepTimeMetric) >= 0) {
				t.Fatalf("rounds %v: line %d %v: want time/step_s, then epoch and step last", rounds, k+1, m)
			}
			if k := m[n-3].Name; k != engine.StepTimeMetric && (rounds || k != "learning_rate" || m[n-4].Name != engine.StepTimeMetric) {
				t.Fatalf("rounds %v: line %v: time/step_s out of place", rounds, m)
			}
		}
		last := lines[want]
		names := make([]string, len(last))
		for i, m := range last {
			names[i] = m.Name
			if !engine.WallClock(m.Name) && m.Name != "epoch" {
				t.Errorf("%s in the last line is not a wall-clock metric", m.Name)
			}
		}
		if strings.Join(names, ",") != "train_runtime,train_samples_per_second,train_steps_per_second,epoch" || last.Value("epoch") != 2 { // 8 pairs: 2 steps an epoch
			t.Fatalf("rounds %v: last line %v", rounds, last)
		}
		// 4 items a step (2 micro-batches of 2); the rates are rounded to 3 decimals.
		if r := last.Value(engine.SamplesPerSecondMetric) / last.Value(engine.StepsPerSecondMetric); math.IsNaN(r) || math.Abs(r-4) > 0.01 {
			t.Errorf("samples/s over steps/s is %g, want 4", r)
		}
	}
	for _, name := range []string{"loss", "grad_norm", "learning_rate", "epoch", "step", "objective/kl"} {
		if engine.WallClock(name) {
			t.Errorf("%s is taken for a wall-clock metric", name)
		}
	}
}
