package objective

import (
	"math"
	"testing"

	"ortalign/onnx"
	"ortalign/pipeline/engine"
)

// rlOracle is testdata/expected/rl_oracle_llama.json.gz, written by
// testdata/gen_rl_oracle.py with PyTorch autograd in float64 from TRL's formulas.
type rlOracle struct {
	PadID       int64     `json:"pad_id"`
	Group       int       `json:"group"`
	Masked      int       `json:"masked"`
	Rewards     []float64 `json:"rewards"`
	Prompts     [][]int64 `json:"prompts"`
	Completions [][]int64 `json:"completions"`
	Cases       []struct {
		Name                string      `json:"name"`
		Algo                string      `json:"algo"`
		LossType            string      `json:"loss_type"`
		Beta                float64     `json:"beta"`
		Epsilon             float64     `json:"epsilon"`
		EpsilonHigh         float64     `json:"epsilon_high"`
		Temperature         float64     `json:"temperature"`
		ScaleRewards        string      `json:"scale_rewards"`
		MaxCompletionLength int         `json:"max_completion_length"`
		NormalizeAdvantages bool        `json:"normalize_advantages"`
		ISLevel             string      `json:"importance_sampling_level"`
		SAPOTemperaturePos  float64     `json:"sapo_temperature_pos"`
		SAPOTemperatureNeg  float64     `json:"sapo_temperature_neg"`
		Rewards             []float64   `json:"rewards"` // the case's own, when not nil
		Loss                float64     `json:"loss"`
		Advantages          []float64   `json:"advantages"`
		Penalized           []float64   `json:"penalized_rewards"`
		OldLogps            [][]float64 `json:"old_logps"`
		RefLogps            [][]float64 `json:"ref_logps"`
		Grads               map[string]struct {
			Values []float64 `json:"values"`
		} `json:"grads"`
	} `json:"cases"`
}

// TestRLLossesMatchPyTorch: on fixed rollouts, GRPO (each loss type — cispo and sapo
// included —, token and sequence (GSPO) importance sampling, with and without the KL term,
// with a temperature) and RLOO (with the KL in the reward, with normalised advantages)
// give PyTorch's advantages, loss and gradients written from TRL's formulas; dapo, cispo,
// grpo and sapo split into micro-batches combine into the one-batch loss and gradient.
func TestRLLossesMatchPyTorch(t *testing.T) {
	var o rlOracle
	readOracle(t, "../../testdata/expected/rl_oracle_llama.json.gz", &o)
	m, err := onnx.Load("../../testdata/models/llama_opset17.onnx")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range o.Cases {
		t.Run(c.Name, func(t *testing.T) {
			cfg := RLConfig{Algo: c.Algo, LossType: c.LossType, Beta: c.Beta, Epsilon: c.Epsilon, EpsilonHigh: c.EpsilonHigh,
				Temperature: c.Temperature, ScaleRewards: c.ScaleRewards, MaxCompletionLength: c.MaxCompletionLength,
				NormalizeAdvantages: c.NormalizeAdvantages, ImportanceSamplingLevel: c.ISLevel}
			if c.LossType == LossSAPO {
				cfg.SAPOTemperaturePos, cfg.SAPOTemperatureNeg = c.SAPOTemperaturePos, c.SAPOTemperatureNeg
			}
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			rollouts := make([]Rollout, len(o.Prompts))
			for i := range rollouts {
				rollouts[i] = Rollout{Prompt: o.Prompts[i], Completion: o.Completions[i], Masked: i == o.Masked,
					OldLogps: c.OldLogps[i], RefLogps: c.RefLogps[i]}
			}
			rewards := o.Rewards
			if c.Rewards != nil {
				rewards = c.Rewards
			}
			if c.Algo == AlgoRLOO {
				rewards = RLOOPenalized(c.Beta, rewards, rollouts)
				for i := range rewards {
					if d := math.Abs(rewards[i] - c.Penalized[i]); d > 1e-9 {
						t.Errorf("penalised reward %d: %v, PyTorch %v", i, rewards[i], c.Penalized[i])
					}
				}
			}
			adv, err := Advantages(cfg, rewards, o.Group)
			if err != nil {
				t.Fatal(err)
			}
			for i := range adv {
				if d := math.Abs(adv[i] - c.Advantages[i]); d > 1e-9*math.Max(1, math.Abs(c.Advantages[i])) {
					t.Errorf("advantage %d: %v, PyTorch %v", i, adv[i], c.Advantages[i])
				}
				rollouts[i].Advantage = c.Advantages[i]
			}
			tc := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimSGD}, LR: 1, BatchSize: len(rollouts), Threads: 1, PadID: o.PadID}
			e, err := engine.NewEngine("llama", m, tc, RL{Config: cfg})
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			check := func(label string, micro [][]Rollout) {
				got, err := e.Gradients(micro)
				if err != nil {
					t.Fatal(err)
				}
				if d := relErr(got.Value(engine.LossOutput), c.Loss); d > 1e-5 {
					t.Errorf("%s: loss %.9f, PyTorch %.9f (rel %.1e)", label, got.Value(engine.LossOutput), c.Loss, d)
				}
				worst, checked := 0.0, 0
				for i, name := range e.Trainable() {
					w, ok := c.Grads[name]
					if !ok {
						continue
					}
					checked++
					if err := relL2(e.Grads()[i], w.Values); err > worst {
						worst = err
					}
				}
				if checked < len(c.Grads) || checked == 0 {
					t.Fatalf("%s: checked %d gradients of %d in the oracle", label, checked, len(c.Grads))
				}
				if worst > 1e-4 {
					t.Errorf("%s: worst gradient relative L2 error %.2e, want <= 1e-4", label, worst)
				}
				t.Logf("%s: loss %.9f (PyTorch %.9f), %d gradients, worst relative L2 error %.2e, clipfrac %.3f",
					label, got.Value(engine.LossOutput), c.Loss, checked, worst, got.Value("policy/clipfrac_avg"))
			}
			check("one batch", [][]Rollout{rollouts})
			// Losses whose micro-batches combine exactly into the batch's: dapo and cispo by
			// tokens, grpo/sapo/dr_grpo/rloo by sequences (equal halves).
			switch {
			case c.LossType == LossDAPO || c.LossType == LossCISPO:
				check("micro-batches 2+4", [][]Rollout{rollouts[:2], rollouts[2:]})
			case c.Algo == AlgoRLOO || c.LossType == LossGRPO || c.LossType == LossSAPO || c.LossType == LossDrGRPO:
				check("micro-batches 3+3", [][]Rollout{rollouts[:3], rollouts[3:]})
			}
		})
	}
}

// TestRLConfigValidate: settings out of range are errors naming them.
func TestRLConfigValidate(t *testing.T) {
	for _, c := range []RLConfig{
		{Algo: "ppo"}, {Algo: AlgoGRPO, LossType: "x"}, {Algo: AlgoGRPO, ScaleRewards: "x"}, {Algo: AlgoGRPO, Beta: -1},
		{Algo: AlgoGRPO, Epsilon: 1}, {Algo: AlgoGRPO, LossType: LossDrGRPO},
		{Algo: AlgoRLOO, LossType: LossCISPO}, {Algo: AlgoRLOO, ImportanceSamplingLevel: ISSequence},
		{Algo: AlgoGRPO, ImportanceSamplingLevel: "tokens"}, {Algo: AlgoGRPO, LossType: LossSAPO, SAPOTemperatureNeg: -1},
		{Algo: AlgoGRPO, SAPOTemperaturePos: 2},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v: no error", c)
		}
	}
	if err := (RLConfig{Algo: AlgoRLOO, Epsilon: 0.2}).Validate(); err != nil {
		t.Error(err)
	}
}
