package objective

import (
	"fmt"
	"math"
)

// PPOBatchStats are the round-level quantities TRL logs (objective/*), each a mean over
// the rollouts of a per-rollout sum over its tokens.
type PPOBatchStats struct {
	KL, Entropy, NonScoreReward, Score float64
}

// PPOAdvantages computes every rollout's Returns and whitened Advantages from its Score,
// OldLogps, RefLogps and OldValues (Steps values), in float64, as TRL v1.x's
// PPOTrainer.train:
//
//	kl_t  = old_t − ref_t (k1) or (e^{ref_t−old_t} − 1) − (ref_t − old_t) (k3); 0 at the
//	        extra terminal step
//	r_t   = −kl_coef·kl_t, plus the score at the last value step
//	        (with WhitenRewards: r whitened over all value steps of the batch, mean kept)
//	δ_t   = r_t + γ·V_{t+1} − V_t   (V past the last step is 0)
//	A_t   = δ_t + γ·λ·A_{t+1};  returns_t = A_t + V_t
//	A     whitened over all completion tokens of the batch: (A − mean)/sqrt(var + 1e-8),
//	      var unbiased (TRL's masked_whiten)
func PPOAdvantages(c PPOConfig, rollouts []PPORollout) (PPOBatchStats, error) {
	var st PPOBatchStats
	rewards := make([][]float64, len(rollouts))
	for i, r := range rollouts {
		n, steps := len(r.Completion), r.Steps()
		if len(r.OldLogps) != n || len(r.RefLogps) != n {
			return st, fmt.Errorf("rollout %d: %d old and %d reference log-probs for %d completion tokens", i, len(r.OldLogps), len(r.RefLogps), n)
		}
		if len(r.OldValues) != steps {
			return st, fmt.Errorf("rollout %d: %d values for %d value steps", i, len(r.OldValues), steps)
		}
		rw := make([]float64, steps)
		for t := 0; t < n; t++ {
			kl := r.OldLogps[t] - r.RefLogps[t]
			if c.klEstimator() == KLk3 {
				logr := r.RefLogps[t] - r.OldLogps[t]
				kl = math.Expm1(logr) - logr
			}
			rw[t] = -c.KLCoef * kl
			st.KL += kl
			st.NonScoreReward += rw[t]
			st.Entropy -= r.OldLogps[t]
		}
		if steps > 0 {
			rw[steps-1] += r.Score
		}
		st.Score += r.Score
		rewards[i] = rw
	}
	if n := float64(len(rollouts)); n > 0 {
		st.KL, st.Entropy, st.NonScoreReward, st.Score = st.KL/n, st.Entropy/n, st.NonScoreReward/n, st.Score/n
	}
	if c.WhitenRewards {
		mean, inv := whitening(rewards)
		for _, rw := range rewards {
			for t := range rw {
				rw[t] = (rw[t]-mean)*inv + mean
			}
		}
	}
	adv := make([][]float64, len(rollouts))
	for i := range rollouts {
		r := &rollouts[i]
		steps := r.Steps()
		a := make([]float64, steps)
		last := 0.0
		for t := steps - 1; t >= 0; t-- {
			next := 0.0
			if t+1 < steps {
				next = r.OldValues[t+1]
			}
			delta := rewards[i][t] + c.Gamma*next - r.OldValues[t]
			last = delta + c.Gamma*c.Lam*last
			a[t] = last
		}
		r.Returns = make([]float64, steps)
		for t := range a {
			r.Returns[t] = a[t] + r.OldValues[t]
		}
		adv[i] = a[:len(r.Completion)]
	}
	mean, inv := whitening(adv)
	for i := range rollouts {
		r := &rollouts[i]
		r.Advantages = make([]float64, len(adv[i]))
		for t, a := range adv[i] {
			r.Advantages[t] = (a - mean) * inv
		}
	}
	return st, nil
}

// whitening returns the mean of all values of xs and 1/sqrt(var + 1e-8) with var their
// unbiased variance (0 for fewer than two values), TRL's masked_whiten.
func whitening(xs [][]float64) (mean, inv float64) {
	n, sum := 0, 0.0
	for _, x := range xs {
		for _, v := range x {
			sum += v
			n++
		}
	}
	if n == 0 {
		return 0, 1
	}
	mean = sum / float64(n)
	ss := 0.0
	for _, x := range xs {
		for _, v := range x {
			ss += (v - mean) * (v - mean)
		}
	}
	variance := 0.0
	if n > 1 {
		variance = ss / float64(n) * float64(n) / float64(n-1)
	}
	return mean, 1 / math.Sqrt(variance+1e-8)
}
