package rollout

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"ortalign/onnx"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/generate"
	"ortalign/pipeline/objective"
	"ortalign/tokenize"
)

const rlTestModel = "../../testdata/models/llama_opset17.onnx"

// rlTask is the bundled task: prompts of train.jsonl to train on, prompts of test.jsonl
// held out, the tiny Llama and its tokenizer.
func rlTask(t testing.TB, nTrain, nEval int) (train, eval []encode.EncodedPrompt, tok *tokenize.Tokenizer, base *onnx.Model) {
	t.Helper()
	tok, err := tokenize.Load("../../testdata/tokenizer/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	if base, err = onnx.Load(rlTestModel); err != nil {
		t.Fatal(err)
	}
	load := func(path string, n int) []encode.EncodedPrompt {
		l, err := encode.LoadPrompts(path, encode.DataOptions{Tokenizer: tok, Vocab: 512})
		if err != nil {
			t.Fatal(err)
		}
		return l.Items[:n]
	}
	return load("../../testdata/data/train.jsonl", nTrain), load("../../testdata/data/test.jsonl", nEval), tok, base
}

func rlRunConfig(tok *tokenize.Tokenizer, algo string, rewards ...RewardFunc) RLRunConfig {
	eos, _ := tok.EOS()
	return RLRunConfig{
		RL:             objective.RLConfig{Algo: algo, Epsilon: 0.2, Temperature: 1},
		NumGenerations: 8,
		Sample:         generate.SampleOptions{Temperature: 1, MaxNewTokens: 3, EOS: []int64{int64(eos)}},
		Rewards:        rewards,
		Decode: func(ids []int64) (string, error) {
			out := make([]int, len(ids))
			for i, id := range ids {
				out[i] = int(id)
			}
			return tok.Decode(out, true)
		},
	}
}

// rlLearningRun trains the tiny Llama online with algo on 64 prompts of the bundled task
// for steps optimizer steps (batches of 4 prompts × 8 completions of up to 3 tokens,
// rewarded for starting with a space) and checks that the mean reward of completions
// sampled on 16 held-out prompts (same prompts, same seed) rises over the starting
// policy's by more than 0.25, while objective/kl starts at ~0 and stays at most 5.
func rlLearningRun(t *testing.T, algo string, steps int, lr, beta float64) []map[string]float64 {
	t.Helper()
	train, eval, tok, base := rlTask(t, 64, 16)
	rc := rlRunConfig(tok, algo, RegexReward{regexp.MustCompile(`^ `)})
	rc.Eval = eval
	rc.RL.Beta = beta
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimAdamW, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8}, LR: lr, MaxGradNorm: 1,
		BatchSize: 4, MaxSteps: steps, Seed: 1, Shuffle: true, Threads: 2, PadID: 511, TieTransposedCopies: true}
	e, err := engine.NewEngine(rlTestModel, base, cfg, objective.RL{Config: rc.RL})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	out := t.TempDir()
	res, err := RunRL(context.Background(), e, base, train, rc, engine.RunOptions{Out: out, CheckpointEvery: 4})
	if err != nil {
		t.Fatal(err)
	}
	lines := readMetricsLines(t, res.MetricsPath)
	if len(lines) != steps {
		t.Fatalf("%d metrics lines, want %d", len(lines), steps)
	}
	maxKL := 0.0
	for _, l := range lines {
		maxKL = max(maxKL, l["objective/kl"])
	}
	before, after := res.EvalBefore.Value("reward"), res.EvalAfter.Value("reward")
	t.Logf("%s: held-out reward %.3f -> %.3f; train reward %.3f -> %.3f; max objective/kl %.3f", algo, before, after,
		lines[0]["reward"], lines[len(lines)-1]["reward"], maxKL)
	if !(after > before+0.25) {
		t.Errorf("held-out reward %.3f -> %.3f: want a rise of more than 0.25", before, after)
	}
	if lines[0]["objective/kl"] > 1e-3 || maxKL > 5 {
		t.Errorf("objective/kl %.4g at the first step (want ~0: the policy is the reference) and at most %.3g (want <= 5)", lines[0]["objective/kl"], maxKL)
	}
	if _, err := os.Stat(filepath.Join(out, "model.onnx")); err != nil {
		t.Error(err)
	}
	return lines
}

// TestGRPORaisesHeldOutReward: a short GRPO run on the bundled task raises the mean reward
// of completions sampled on held-out prompts over the starting policy (same prompts, same
// seed) by a clear margin, while objective/kl stays bounded; metrics carry TRL's names.
func TestGRPORaisesHeldOutReward(t *testing.T) {
	lines := rlLearningRun(t, objective.AlgoGRPO, 6, 4e-3, 0.04)
	for _, name := range []string{"loss", "grad_norm", "reward", "reward_std", "objective/kl", "objective/entropy", "objective/scores",
		"objective/rlhf_reward", "objective/non_score_reward", "policy/clipfrac_avg", "loss/policy_avg", "completions/mean_length",
		"completions/clipped_ratio", "learning_rate", "step"} {
		if _, ok := lines[0][name]; !ok {
			t.Errorf("metrics lack %s", name)
		}
	}
}

// TestRLOORaisesHeldOutReward: the same for RLOO (KL taken off the reward with TRL's
// beta 0.05, leave-one-out baseline, sequence-level clipped ratio).
func TestRLOORaisesHeldOutReward(t *testing.T) {
	rlLearningRun(t, objective.AlgoRLOO, 8, 4e-3, 0.05)
}

// readMetricsLines reads the lines of steps of metrics.jsonl as maps (not the run's last
// line, its train_runtime, which has no step).
func readMetricsLines(t *testing.T, path string) []map[string]float64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]float64
	for _, line := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
		m := map[string]float64{}
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatalf("%s: %v", strings.TrimSpace(string(line)), err)
		}
		if _, ok := m["step"]; ok {
			out = append(out, m)
		}
	}
	return out
}

// BenchmarkRLStep measures one online RL step on the tiny Llama (GRPO, 4 prompts × 8
// completions of 16 tokens, 2 ORT threads), its parts apart:
//
//	generate  sampling the round's completions with the generator fed the engine's weights
//	generate_built  the same with a generator built from Engine.Model() (constant weights)
//	collect   the whole rollout: generate + rewards + reference log-probs + advantages
//	update    one optimizer step on the round's rollouts (forward + backward + AdamW)
//	rebuild   what each round cost before: a generator built from Engine.Model()
//
//	go test ./pipeline -run '^$' -bench RLStep -benchtime 10x
func BenchmarkRLStep(b *testing.B) {
	train, _, tok, base := rlTask(b, 4, 1)
	rc := rlRunConfig(tok, objective.AlgoGRPO, RegexReward{regexp.MustCompile(`^ `)})
	rc.RL.Beta = 0.04
	rc.Sample.MaxNewTokens = 16
	rc.Sample.EOS = nil // every completion runs to 16 tokens: a fixed amount of work
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimAdamW, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8}, LR: 1e-4, MaxGradNorm: 1,
		BatchSize: 4, MaxSteps: 1, Seed: 1, Threads: 2, PadID: 511, TieTransposedCopies: true}
	e, err := engine.NewEngine(rlTestModel, base, cfg, objective.RL{Config: rc.RL})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	gen, err := PolicyGenerator(e, generate.GeneratorOptions{Threads: cfg.Threads})
	if err != nil {
		b.Fatal(err)
	}
	defer gen.Close()
	ref, err := newRefScorer(base, 1, cfg.Threads, cfg.PadID)
	if err != nil {
		b.Fatal(err)
	}
	defer ref.Close()
	ctx := context.Background()
	tokens := float64(len(train) * rc.NumGenerations * rc.Sample.MaxNewTokens)
	report := func(b *testing.B, start time.Time) {
		el := time.Since(start).Seconds()
		b.ReportMetric(el*1000/float64(b.N), "ms/op")
		b.ReportMetric(tokens*float64(b.N)/el, "tokens/s")
	}
	b.Run("generate", func(b *testing.B) {
		start := time.Now()
		for i := 0; i < b.N; i++ {
			if _, _, _, err := sampleAndScoreGen(ctx, gen, train, rc, uint64(i)); err != nil {
				b.Fatal(err)
			}
		}
		report(b, start)
	})
	b.Run("generate_built", func(b *testing.B) { // the same from constant weights
		m, err := e.Model()
		if err != nil {
			b.Fatal(err)
		}
		built, err := generate.NewGenerator(e.Path(), m, generate.GeneratorOptions{Threads: cfg.Threads})
		if err != nil {
			b.Fatal(err)
		}
		defer built.Close()
		start := time.Now()
		for i := 0; i < b.N; i++ {
			if _, _, _, err := sampleAndScoreGen(ctx, built, train, rc, uint64(i)); err != nil {
				b.Fatal(err)
			}
		}
		report(b, start)
	})
	var round *rlRound
	b.Run("collect", func(b *testing.B) {
		start := time.Now()
		for i := 0; i < b.N; i++ {
			if round, err = collect(ctx, e, gen, ref, train, rc, uint64(i)); err != nil {
				b.Fatal(err)
			}
		}
		report(b, start)
	})
	b.Run("update", func(b *testing.B) {
		micro := [][]objective.Rollout{round.rollouts}
		start := time.Now()
		for i := 0; i < b.N; i++ {
			if _, err := e.StepOn(micro, cfg.LR); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(time.Since(start).Seconds()*1000/float64(b.N), "ms/op")
	})
	b.Run("rebuild", func(b *testing.B) {
		start := time.Now()
		for i := 0; i < b.N; i++ {
			m, err := e.Model()
			if err != nil {
				b.Fatal(err)
			}
			g, err := generate.NewGenerator(e.Path(), m, generate.GeneratorOptions{Threads: cfg.Threads})
			if err != nil {
				b.Fatal(err)
			}
			g.Close()
		}
		b.ReportMetric(time.Since(start).Seconds()*1000/float64(b.N), "ms/op")
	})
}

// TestDumpRLBenchPrompts writes the prompt ids of BenchmarkRLStep (the first 4 prompts of
// testdata/data/train.jsonl, tokenized) as JSON to $ORTALIGN_DUMP_RL_PROMPTS, for
// testdata/bench_generate.py's PyTorch GRPO step. Skipped unless the variable is set.
func TestDumpRLBenchPrompts(t *testing.T) {
	out := os.Getenv("ORTALIGN_DUMP_RL_PROMPTS")
	if out == "" {
		t.Skip("ORTALIGN_DUMP_RL_PROMPTS not set")
	}
	train, _, _, _ := rlTask(t, 4, 1)
	var ids [][]int64
	for _, p := range train {
		ids = append(ids, p.IDs)
	}
	js, err := json.Marshal(ids)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out, js, 0o644); err != nil {
		t.Fatal(err)
	}
}
