package rollout

import (
	"context"
	"math"
	"ortalign/onnx"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/lm"
	"ortalign/pipeline/objective"
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

// TestPPORaisesHeldOutReward: a short PPO run on the bundled task (tiny Llama, regex
// reward) raises the mean reward of completions sampled on held-out prompts over the
// starting policy (same prompts, same seed), with objective/kl bounded; the metrics carry
// TRL's names; model.onnx is the policy alone.
func TestPPORaisesHeldOutReward(t *testing.T) {
	train, eval, tok, base := rlTask(t, 256, 64)
	rl := rlRunConfig(tok, objective.AlgoGRPO, RegexReward{regexp.MustCompile(`^ `)})
	pc := objective.DefaultPPOConfig()
	pc.Temperature = 1
	rc := PPORunConfig{PPO: pc, NumPPOEpochs: 4, NumMiniBatches: 1, Sample: rl.Sample, Rewards: rl.Rewards, Decode: rl.Decode, Eval: eval}
	cfg := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimAdamW, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8}, LR: 2e-3, MaxGradNorm: 1,
		BatchSize: 16, MaxSteps: 32, Seed: 1, Shuffle: true, Threads: 2, PadID: 511, TieTransposedCopies: true}
	e, err := objective.NewPPOEngine(rlTestModel, base, cfg, pc, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	out := t.TempDir()
	res, err := RunPPO(context.Background(), e, base, train, rc, engine.RunOptions{Out: out})
	if err != nil {
		t.Fatal(err)
	}
	lines := readMetricsLines(t, res.MetricsPath)
	if len(lines) != 8 {
		t.Fatalf("%d metrics lines, want 8 (one a round)", len(lines))
	}
	for _, name := range []string{"loss", "grad_norm", "objective/kl", "objective/entropy", "objective/non_score_reward",
		"objective/rlhf_reward", "objective/scores", "policy/approxkl_avg", "policy/clipfrac_avg", "loss/policy_avg",
		"loss/value_avg", "val/clipfrac_avg", "policy/entropy_avg", "val/ratio", "val/ratio_var", "val/num_eos_tokens",
		"lr", "episode", "step"} {
		if _, ok := lines[0][name]; !ok {
			t.Errorf("metrics lack %s", name)
		}
	}
	maxKL := 0.0
	for _, l := range lines {
		maxKL = max(maxKL, l["objective/kl"])
		t.Logf("step %v: scores %.3f kl %.4f loss/value %.4f val/clipfrac %.3f policy/clipfrac %.3f approxkl %.4f",
			l["step"], l["objective/scores"], l["objective/kl"], l["loss/value_avg"], l["val/clipfrac_avg"], l["policy/clipfrac_avg"], l["policy/approxkl_avg"])
	}
	before, after := res.EvalBefore.Value("reward"), res.EvalAfter.Value("reward")
	t.Logf("held-out reward %.3f -> %.3f; max objective/kl %.3f", before, after, maxKL)
	if !(after > before+0.25) {
		t.Errorf("held-out reward %.3f -> %.3f: want a rise of more than 0.25", before, after)
	}
	if math.Abs(lines[0]["objective/kl"]) > 1e-3 || maxKL > 5 {
		t.Errorf("objective/kl %.4g in the first round (want ~0) and at most %.3g (want <= 5)", lines[0]["objective/kl"], maxKL)
	}
	got, err := onnx.Load(filepath.Join(out, "model.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	if onnx.Output(got.Graph(), lm.ValuesOutput) != nil || onnx.Initializer(got.Graph(), lm.ValueHeadWeightName) != nil {
		t.Error("model.onnx carries the value head")
	}
	if _, err := os.Stat(res.CheckpointPath); err != nil {
		t.Error(err)
	}
}
