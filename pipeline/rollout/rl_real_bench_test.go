package rollout

import (
	"context"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"ortalign/onnx"
	"ortalign/pipeline/encode"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/generate"
	"ortalign/pipeline/objective"
)

// BenchmarkRLStepReal is one GRPO step at the size users bring (scripts/bench_generate.sh
// with BENCH_GEN_REAL=1): the model at ORTALIGN_BENCH_RL_MODEL (the SmolLM2-135M shape of
// testdata/gen_bench_real.py; skipped when unset), 8 prompts of 32 tokens, 4 completions
// each of 64 tokens sampled at temperature 1 (no EOS: a fixed amount of work), a length
// reward, β 0.04 (reference log-probs), full fine-tuning with AdamW and gradient
// checkpointing, the 32 rollouts in 4 micro-batches, ORTALIGN_BENCH_THREADS threads
// (default 2). After a warm-up round of 8 tokens, one round is collected and the update
// taken twice (the first opens the training session). Reported: generation, scoring
// (rewards, old and reference log-probs) and the two updates in seconds, the generated
// tokens/s, and the process's peak RSS.
func BenchmarkRLStepReal(b *testing.B) {
	model := os.Getenv("ORTALIGN_BENCH_RL_MODEL")
	if model == "" {
		b.Skip("ORTALIGN_BENCH_RL_MODEL names no model")
	}
	threads := 2
	if s := os.Getenv("ORTALIGN_BENCH_THREADS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			b.Fatal(err)
		}
		threads = n
	}
	const prompts, G, promptLen, newTokens = 8, 4, 32, 64
	base, err := onnx.Load(model)
	if err != nil {
		b.Fatal(err)
	}
	train := make([]encode.EncodedPrompt, prompts)
	for i := range train {
		ids := make([]int64, promptLen)
		for t := range ids {
			ids[t] = int64((i*131+t*17+3)%500) + 1
		}
		train[i] = encode.EncodedPrompt{Index: i, IDs: ids}
	}
	rc := RLRunConfig{
		RL:             objective.RLConfig{Algo: objective.AlgoGRPO, Epsilon: 0.2, Temperature: 1, Beta: 0.04},
		NumGenerations: G,
		Sample:         generate.SampleOptions{Temperature: 1, MaxNewTokens: newTokens},
		Rewards:        []RewardFunc{LengthReward{Target: 32}},
	}
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimAdamW, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8}, LR: 1e-6, MaxGradNorm: 1,
		BatchSize: prompts * G / 4, GradAccum: 4, MaxSteps: 1, Seed: 1, Threads: threads, TieTransposedCopies: true, GradientCheckpointing: true}
	start := time.Now()
	e, err := engine.NewEngine(model, base, cfg, objective.RL{Config: rc.RL})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	gen, err := PolicyGenerator(e, generate.GeneratorOptions{Threads: threads})
	if err != nil {
		b.Fatal(err)
	}
	defer gen.Close()
	ref, err := newRefScorer(base, 1, threads, cfg.PadID)
	if err != nil {
		b.Fatal(err)
	}
	defer ref.Close()
	b.Logf("engine, generator (cache %s) and reference ready in %.1f s", gen.CacheMode(), time.Since(start).Seconds())
	ctx := context.Background()
	warm := rc
	warm.Sample.MaxNewTokens = 8
	if _, err := collect(ctx, e, gen, ref, train, warm, 0); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	round, err := collect(ctx, e, gen, ref, train, rc, 1)
	if err != nil {
		b.Fatal(err)
	}
	var micro [][]objective.Rollout
	for lo := 0; lo < len(round.rollouts); lo += cfg.BatchSize {
		micro = append(micro, round.rollouts[lo:lo+cfg.BatchSize])
	}
	var updates []float64
	for range 2 {
		t := time.Now()
		if _, err := e.StepOn(micro, cfg.LR); err != nil {
			b.Fatal(err)
		}
		updates = append(updates, time.Since(t).Seconds())
	}
	b.StopTimer()
	genS := round.metrics.Value("time/generation_s")
	b.ReportMetric(genS, "generate_s")
	b.ReportMetric(round.metrics.Value("time/rollout_s")-genS, "score_s")
	b.ReportMetric(updates[0], "update1_s")
	b.ReportMetric(updates[1], "update2_s")
	b.ReportMetric(float64(prompts*G*newTokens)/genS, "gen_tokens/s")
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		b.ReportMetric(float64(ru.Maxrss)/1024, "peakRSS_MB")
	}
}
