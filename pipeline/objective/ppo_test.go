package objective

import (
	"math"
	"testing"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/lm"
)

// ppoOracle is testdata/expected/ppo_oracle_llama.json.gz, written by
// testdata/gen_ppo_oracle.py with PyTorch autograd in float64 from TRL's PPOTrainer.
type ppoOracle struct {
	PadID       int64     `json:"pad_id"`
	Scores      []float64 `json:"scores"`
	ValueWeight []float32 `json:"value_weight"`
	Prompts     [][]int64 `json:"prompts"`
	Completions [][]int64 `json:"completions"`
	Cases       []struct {
		Name           string      `json:"name"`
		KLCoef         float64     `json:"kl_coef"`
		KLEstimator    string      `json:"kl_estimator"`
		Cliprange      float64     `json:"cliprange"`
		CliprangeValue float64     `json:"cliprange_value"`
		VFCoef         float64     `json:"vf_coef"`
		Gamma          float64     `json:"gamma"`
		Lam            float64     `json:"lam"`
		WhitenRewards  bool        `json:"whiten_rewards"`
		Temperature    float64     `json:"temperature"`
		MaxNewTokens   int         `json:"max_new_tokens"`
		Steps          []int       `json:"steps"`
		OldLogps       [][]float64 `json:"old_logps"`
		RefLogps       [][]float64 `json:"ref_logps"`
		OldValues      [][]float64 `json:"old_values"`
		Advantages     [][]float64 `json:"advantages"`
		Returns        [][]float64 `json:"returns"`
		Loss           float64     `json:"loss"`
		PolicyLoss     float64     `json:"policy_loss"`
		ValueLoss      float64     `json:"value_loss"`
		PolicyClipfrac float64     `json:"policy_clipfrac"`
		ValueClipfrac  float64     `json:"value_clipfrac"`
		Grads          map[string]struct {
			Values []float64 `json:"values"`
		} `json:"grads"`
		ValueGrad []float64 `json:"value_grad"`
	} `json:"cases"`
}

// TestPPOMatchesPyTorch: on fixed rollouts (prompts, completions, scores, old and
// reference log-probs, old values), PPOAdvantages gives TRL's GAE returns and whitened
// advantages (float64, 1e-9), and the PPO graph gives PyTorch's loss, its policy and value
// parts, clip fractions and the gradients of every parameter and of the value head, for
// TRL's defaults (k1) and for k3 with whitened rewards, γ < 1 and a temperature.
func TestPPOMatchesPyTorch(t *testing.T) {
	var o ppoOracle
	readOracle(t, "../../testdata/expected/ppo_oracle_llama.json.gz", &o)
	m, err := onnx.Load("../../testdata/models/llama_opset17.onnx")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range o.Cases {
		t.Run(c.Name, func(t *testing.T) {
			cfg := PPOConfig{KLCoef: c.KLCoef, KLEstimator: c.KLEstimator, Cliprange: c.Cliprange, CliprangeValue: c.CliprangeValue,
				VFCoef: c.VFCoef, Gamma: c.Gamma, Lam: c.Lam, WhitenRewards: c.WhitenRewards, Temperature: c.Temperature}
			rollouts := make([]PPORollout, len(o.Prompts))
			for i := range rollouts {
				rollouts[i] = PPORollout{Prompt: o.Prompts[i], Completion: o.Completions[i], Score: o.Scores[i],
					Terminal: len(o.Completions[i]) < c.MaxNewTokens, OldLogps: c.OldLogps[i], RefLogps: c.RefLogps[i], OldValues: c.OldValues[i]}
				if rollouts[i].Steps() != c.Steps[i] {
					t.Fatalf("rollout %d: %d value steps, TRL %d", i, rollouts[i].Steps(), c.Steps[i])
				}
			}
			if _, err := PPOAdvantages(cfg, rollouts); err != nil {
				t.Fatal(err)
			}
			for i, r := range rollouts {
				for j := range r.Advantages {
					if d := math.Abs(r.Advantages[j] - c.Advantages[i][j]); d > 1e-9*math.Max(1, math.Abs(c.Advantages[i][j])) {
						t.Errorf("advantage %d/%d: %v, PyTorch %v", i, j, r.Advantages[j], c.Advantages[i][j])
					}
				}
				if len(r.Returns) != len(c.Returns[i]) {
					t.Fatalf("rollout %d: %d returns, PyTorch %d", i, len(r.Returns), len(c.Returns[i]))
				}
				for j := range r.Returns {
					if d := math.Abs(r.Returns[j] - c.Returns[i][j]); d > 1e-9*math.Max(1, math.Abs(c.Returns[i][j])) {
						t.Errorf("return %d/%d: %v, PyTorch %v", i, j, r.Returns[j], c.Returns[i][j])
					}
				}
			}
			tc := engine.TrainConfig{Optim: engine.OptimConfig{Name: engine.OptimSGD}, LR: 1, BatchSize: len(rollouts), Threads: 1, PadID: o.PadID}
			e, err := NewPPOEngine("llama", m, tc, cfg, o.ValueWeight)
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			got, err := e.Gradients([][]PPORollout{rollouts})
			if err != nil {
				t.Fatal(err)
			}
			for _, x := range []struct {
				name      string
				want, tol float64
			}{{engine.LossOutput, c.Loss, 1e-5}, {"loss/policy_avg", c.PolicyLoss, 1e-5}, {"loss/value_avg", c.ValueLoss, 1e-5},
				{"policy/clipfrac_avg", c.PolicyClipfrac, 1e-9}, {"val/clipfrac_avg", c.ValueClipfrac, 1e-9}} {
				v := got.Value(x.name)
				if d := nanToInf(math.Abs(v-x.want) / math.Max(math.Abs(x.want), 1e-3)); d > x.tol {
					t.Errorf("%s %.9f, PyTorch %.9f (rel %.1e)", x.name, v, x.want, d)
				}
			}
			worst, checked := 0.0, 0
			for i, name := range e.Trainable() {
				want := []float64(nil)
				if name == lm.ValueHeadWeightName {
					want = c.ValueGrad
				} else if w, ok := c.Grads[name]; ok {
					want = w.Values
				}
				if want == nil {
					continue
				}
				checked++
				err := relL2(e.Grads()[i], want)
				if err > 1e-4 {
					t.Errorf("%s: gradient relative L2 error %.2e", name, err)
				}
				worst = max(worst, err)
			}
			if checked < len(c.Grads)+1 {
				t.Fatalf("checked %d gradients of %d in the oracle", checked, len(c.Grads)+1)
			}
			t.Logf("loss %.9f (PyTorch %.9f), %d gradients (value head included), worst relative L2 error %.2e, clipfrac %.3f/%.3f",
				got.Value(engine.LossOutput), c.Loss, checked, worst, got.Value("policy/clipfrac_avg"), got.Value("val/clipfrac_avg"))
		})
	}
}

// TestPPOAdvantagesByHand: GAE and whitening on numbers worked out by hand (γ = 1, λ = 1:
// returns are the rewards to go), and the k1/k3 penalties.
func TestPPOAdvantagesByHand(t *testing.T) {
	rs := []PPORollout{
		{Prompt: []int64{1}, Completion: []int64{2, 3}, Terminal: true, Score: 1, OldLogps: []float64{-1, -2}, RefLogps: []float64{-1.5, -1},
			OldValues: []float64{0.5, 0.25, 0.125}},
		{Prompt: []int64{1}, Completion: []int64{4}, Score: -1, OldLogps: []float64{-0.5}, RefLogps: []float64{-0.5}, OldValues: []float64{0.1}},
	}
	st, err := PPOAdvantages(PPOConfig{KLCoef: 0.1, Gamma: 1, Lam: 1}, rs)
	if err != nil {
		t.Fatal(err)
	}
	// k1: kl = old − ref = [0.5, −1] and [0]; rewards [−0.05, 0.1, 1] and [−1].
	wantRet := [][]float64{{1.05, 1.1, 1}, {-1}}
	for i, r := range rs {
		for j, v := range r.Returns {
			if math.Abs(v-wantRet[i][j]) > 1e-12 {
				t.Errorf("return %d/%d = %v, want %v", i, j, v, wantRet[i][j])
			}
		}
	}
	// Advantages before whitening: 1.05−0.5, 1.1−0.25, −1−0.1.
	raw := []float64{0.55, 0.85, -1.1}
	mean := (raw[0] + raw[1] + raw[2]) / 3
	v := 0.0
	for _, x := range raw {
		v += (x - mean) * (x - mean)
	}
	inv := 1 / math.Sqrt(v/2+1e-8)
	got := []float64{rs[0].Advantages[0], rs[0].Advantages[1], rs[1].Advantages[0]}
	for i := range raw {
		if w := (raw[i] - mean) * inv; math.Abs(got[i]-w) > 1e-12 {
			t.Errorf("advantage %d = %v, want %v", i, got[i], w)
		}
	}
	if math.Abs(st.KL-(-0.5/2)) > 1e-12 || math.Abs(st.Score) > 1e-12 || math.Abs(st.NonScoreReward-0.05/2) > 1e-12 {
		t.Errorf("stats %+v", st)
	}
	if _, err := PPOAdvantages(PPOConfig{KLCoef: 0.1, KLEstimator: KLk3, Gamma: 1, Lam: 1}, rs); err != nil {
		t.Fatal(err)
	}
	// k3 of logr = ref − old: −0.5 and 1; the return at step 0 is the sum of the rewards.
	k3a, k3b := math.Exp(-0.5)-1+0.5, math.Exp(1)-1-1
	if want := 1 - 0.1*k3a - 0.1*k3b; math.Abs(rs[0].Returns[0]-want) > 1e-12 {
		t.Errorf("k3 return %v, want %v", rs[0].Returns[0], want)
	}
}

// TestValueHeadRoundTrip: AddValueHead keeps the policy's outputs and RemoveValueHead
// gives back the user's graph exactly; a grafted reward model's score head starts it.
func TestValueHeadRoundTrip(t *testing.T) {
	m, err := onnx.Load("../../testdata/models/llama_opset17.onnx")
	if err != nil {
		t.Fatal(err)
	}
	mv, err := lm.AddValueHead(m, nil, 3)
	if err != nil {
		t.Fatal(err)
	}
	if onnx.Output(mv.Graph(), lm.ValuesOutput) == nil || onnx.Output(mv.Graph(), lm.LogitsOutput) == nil {
		t.Fatal("value head model lacks values or logits")
	}
	lm.RemoveValueHead(mv)
	if !proto.Equal(mv.Proto(), m.Proto()) {
		t.Error("RemoveValueHead did not give back the model")
	}
	rg, err := lm.NewRewardGraph(m, lm.RewardHeadOptions{Seed: 9})
	if err != nil {
		t.Fatal(err)
	}
	w, ok := lm.RewardHeadWeights(rg.Model)
	if !ok {
		t.Fatal("no score head in a grafted reward model")
	}
	mv, err = lm.AddValueHead(m, w, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := onnx.TensorFloats(onnx.Initializer(mv.Graph(), lm.ValueHeadWeightName))
	want, _ := onnx.TensorFloats(onnx.Initializer(rg.Model.Graph(), lm.ScoreWeightName))
	if len(got) != len(want) || got[0] != want[0] || got[len(got)-1] != want[len(want)-1] {
		t.Error("value head not started from the reward model's score head")
	}
}

// TestPPOConfigValidate: settings out of range are errors.
func TestPPOConfigValidate(t *testing.T) {
	for _, c := range []PPOConfig{{KLEstimator: "k2"}, {KLCoef: -1}, {Cliprange: 1}, {CliprangeValue: -1}, {VFCoef: -1}, {Gamma: 2}, {Lam: -0.1}, {Temperature: -1}} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v: no error", c)
		}
	}
	if err := DefaultPPOConfig().Validate(); err != nil {
		t.Error(err)
	}
}
