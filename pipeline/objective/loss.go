package objective

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx"
	"ortalign/onnx/autodiff"
	"ortalign/onnx/onnxpb"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/lm"
)

// Names of the values a preference-loss head adds.
const (
	// RefChosenInput and RefRejectedInput are float32 [pairs]: reference log-probs.
	RefChosenInput   = "ref_chosen_logps"
	RefRejectedInput = "ref_rejected_logps"
	// WPOStopGradient is the value of a preference graph with use_weighting that holds
	// the pairs' WPO weights [pairs]: computed from the policy, treated as constants by
	// the backward pass, as TRL computes them under torch.no_grad. The graph lists it in
	// its autodiff.StopGradientMetadata property, which autodiff.Build reads.
	WPOStopGradient = "ortalign_loss/wpo_weights"
)

// Loss types, with TRL v1.x's names (DPOConfig.loss_type) and formulas (DPOTrainer).
// In the formulas, for each pair, s_c and s_r are the chosen and rejected scores (the
// log-ratios log π − log π_ref mapped by the f-divergence; the log-ratios themselves
// with the default reverse KL), δ = s_c − s_r, ε the label smoothing, σ the sigmoid.
const (
	LossSigmoid     = "sigmoid"      // DPO: −logσ(βδ); with ε, cDPO (see LossConfig.LabelSmoothing)
	LossHinge       = "hinge"        // SLiC: relu(1 − βδ)
	LossIPO         = "ipo"          // IPO: (δ' − 1/(2β))², δ' = s_c/n_c − s_r/n_r (n: completion tokens)
	LossExoPair     = "exo_pair"     // EXO: σ(βδ)(logσ(βδ) − log(1−ε)) + σ(−βδ)(logσ(−βδ) − log ε); ε > 0
	LossNCAPair     = "nca_pair"     // NCA: −logσ(βs_c) − ½logσ(−βs_c) − ½logσ(−βs_r)
	LossRobust      = "robust"       // rDPO: ((1−ε)(−logσ(βδ)) + ε·logσ(−βδ)) / (1−2ε)
	LossBCOPair     = "bco_pair"     // BCO: −logσ(βs_c) − logσ(−βs_r) (TRL v1.x: no running reward mean)
	LossSPPOHard    = "sppo_hard"    // SPPO (hard labels): (s_c − 1/(2β))² + (s_r + 1/(2β))²
	LossAOT         = "aot"          // AOT paired: smoothed DPO on sort(π_c − π_r) − sort(ref_c − ref_r) over the batch
	LossAOTUnpaired = "aot_unpaired" // AOT unpaired: smoothed DPO on sort(lr_c) − sort(lr_r) (lr: log-ratios)
	LossAPOZero     = "apo_zero"     // APO-zero: 1 − σ(β·lr_c) + σ(β·lr_r)
	LossAPODown     = "apo_down"     // APO-down: σ(β·lr_c) + 1 − σ(βδ)
	LossDiscoPop    = "discopop"     // DiscoPOP: z = βδ, m = σ(z/τ): −logσ(z)(1−m) + exp(−z)·m
	LossSFT         = "sft"          // NLL of the chosen completions: mean over all their tokens of −log p
	LossSigmoidNorm = "sigmoid_norm" // −logσ(β(s_c/n_c − s_r/n_r)) (TRL ≥ 1.7)
)

// LossTypes lists every loss type, in TRL's order.
var LossTypes = []string{
	LossSigmoid, LossHinge, LossIPO, LossExoPair, LossNCAPair, LossRobust, LossBCOPair, LossSPPOHard,
	LossAOT, LossAOTUnpaired, LossAPOZero, LossAPODown, LossDiscoPop, LossSFT, LossSigmoidNorm,
}

// F-divergences (TRL's f_divergence_type): how a log-ratio u = log π − log π_ref becomes
// the score s the losses compare.
const (
	FDivReverseKL = "reverse_kl"       // s = u (DPO; the default)
	FDivForwardKL = "forward_kl"       // s = −exp(−u)
	FDivJS        = "js_divergence"    // s = logσ(u)
	FDivAlpha     = "alpha_divergence" // s = exp(min((α−1)u, 80)) / (α−1); α = 1 is reverse_kl
)

// Defaults of LossConfig's optional numbers (TRL's).
const (
	DefaultFAlphaCoef  = 1.0
	DefaultDiscoPopTau = 0.05
)

// LossConfig selects the preference loss: one or several of TRL's loss types (the loss is
// the weighted sum of their means over the pairs) and their options. It is recorded in
// checkpoints (JSON).
type LossConfig struct {
	// Type is a single loss type: the form configurations had before Types existed.
	// Set Type or Types.
	Type string `json:"type,omitempty"`
	// Types are TRL's loss_type list; Weights its loss_weights (nil: all 1).
	Types   []string  `json:"loss_type,omitempty"`
	Weights []float64 `json:"loss_weights,omitempty"`
	Beta    float64   `json:"beta"`
	// LabelSmoothing is the label noise ε of robust, exo_pair (where it must be > 0), aot
	// and aot_unpaired (as TRL v1.x) and, on the sigmoid loss, of cDPO:
	// −(1−ε)·logσ(βδ) − ε·logσ(−βδ), the cDPO paper's and TRL < 1.0's formula (TRL v1.x
	// ignores ε for sigmoid; with the default 0 the two agree).
	LabelSmoothing float64 `json:"label_smoothing"`
	// IPOSumLogps uses summed log-probs in the IPO loss, as the IPO paper writes it,
	// instead of TRL's average over completion tokens.
	IPOSumLogps bool `json:"ipo_sum_logps,omitempty"`
	// FDivergence is one of the FDiv constants; "" means reverse_kl.
	FDivergence string `json:"f_divergence_type,omitempty"`
	// FAlphaCoef is α of alpha_divergence; 0 means DefaultFAlphaCoef (α = 0 itself is
	// forward_kl).
	FAlphaCoef float64 `json:"f_alpha_divergence_coef,omitempty"`
	// DiscoPopTau is τ of discopop; 0 means DefaultDiscoPopTau.
	DiscoPopTau float64 `json:"discopop_tau,omitempty"`
	// UseWeighting is WPO (TRL's use_weighting): each pair's loss terms are multiplied by
	// exp(w_c + w_r), w the mean over the row's completion tokens of
	// log p(token) − log Σ_v p_v² (TokenWPOLogpsOutput), computed without gradient.
	UseWeighting bool `json:"use_weighting,omitempty"`
	// LDAlpha is LD-DPO's α (TRL's ld_alpha; nil: off): a row's log-prob is the sum over
	// its first min(n_c, n_r) completion tokens plus α times the sum over the rest, n_c
	// and n_r the pair's completion lengths. The reference log-probs fed to the graph must
	// be weighted the same way (LDLogps).
	LDAlpha *float64 `json:"ld_alpha,omitempty"`
	// ReferenceFree takes every reference log-prob as 0 (the inputs are still fed, and
	// ignored): the implicit reference model gives all completions equal probability.
	ReferenceFree bool `json:"reference_free,omitempty"`
}

// LossTypes returns the configured loss types: Types, or Type alone.
func (c LossConfig) LossTypes() []string {
	if len(c.Types) > 0 {
		return c.Types
	}
	if c.Type != "" {
		return []string{c.Type}
	}
	return nil
}

// LossWeights returns one weight per loss type (1 where Weights is nil).
func (c LossConfig) LossWeights() []float64 {
	if len(c.Weights) > 0 {
		return c.Weights
	}
	w := make([]float64, len(c.LossTypes()))
	for i := range w {
		w[i] = 1
	}
	return w
}

// Uses reports whether the configuration includes loss type t.
func (c LossConfig) Uses(t string) bool { return slices.Contains(c.LossTypes(), t) }

func (c LossConfig) fDivergence() string {
	if c.FDivergence == "" {
		return FDivReverseKL
	}
	return c.FDivergence
}

func (c LossConfig) fAlpha() float64 {
	if c.FAlphaCoef == 0 {
		return DefaultFAlphaCoef
	}
	return c.FAlphaCoef
}

func (c LossConfig) discoPopTau() float64 {
	if c.DiscoPopTau == 0 {
		return DefaultDiscoPopTau
	}
	return c.DiscoPopTau
}

// ParseLossTypes reads a comma-separated list of loss types ("sigmoid,sft").
func ParseLossTypes(s string) ([]string, error) {
	var out []string
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if !slices.Contains(LossTypes, f) {
			return nil, fmt.Errorf("unknown loss type %q (want %s)", f, strings.Join(LossTypes, ", "))
		}
		out = append(out, f)
	}
	return out, nil
}

// ParseWeights reads a comma-separated list of finite numbers ("1,0.5"); "" gives nil.
func ParseWeights(s string) ([]float64, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []float64
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
			return nil, fmt.Errorf("loss weight %q is not a finite number", strings.TrimSpace(f))
		}
		out = append(out, v)
	}
	return out, nil
}

// Validate reports unknown types and out-of-range or inapplicable parameters.
func (c LossConfig) Validate() error {
	types := c.LossTypes()
	if len(types) == 0 {
		return fmt.Errorf("no loss type given (want one or more of %s)", strings.Join(LossTypes, ", "))
	}
	if c.Type != "" && len(c.Types) > 0 && !slices.Equal(c.Types, []string{c.Type}) {
		return fmt.Errorf("loss type %q and loss types %v both given; set one", c.Type, c.Types)
	}
	for _, t := range types {
		if !slices.Contains(LossTypes, t) {
			return fmt.Errorf("unknown loss %q (want %s)", t, strings.Join(LossTypes, ", "))
		}
	}
	if len(c.Weights) > 0 && len(c.Weights) != len(types) {
		return fmt.Errorf("%d loss weights for %d loss types", len(c.Weights), len(types))
	}
	for _, w := range c.Weights {
		if math.IsNaN(w) || math.IsInf(w, 0) {
			return fmt.Errorf("loss weight %g is not finite", w)
		}
	}
	if !(c.Beta > 0) || math.IsInf(c.Beta, 0) {
		return fmt.Errorf("beta must be positive, got %g", c.Beta)
	}
	if !(c.LabelSmoothing >= 0 && c.LabelSmoothing < 0.5) {
		return fmt.Errorf("label smoothing must be in [0, 0.5), got %g", c.LabelSmoothing)
	}
	smoothed := []string{LossSigmoid, LossRobust, LossExoPair, LossAOT, LossAOTUnpaired}
	if c.LabelSmoothing != 0 && !slices.ContainsFunc(types, func(t string) bool { return slices.Contains(smoothed, t) }) {
		return fmt.Errorf("label smoothing applies to the %s losses only", strings.Join(smoothed, ", "))
	}
	if c.Uses(LossExoPair) && c.LabelSmoothing == 0 {
		return fmt.Errorf("the exo_pair loss needs label smoothing > 0 (the EXO paper uses 1e-3)")
	}
	if c.IPOSumLogps && !c.Uses(LossIPO) {
		return fmt.Errorf("summed log-probs are an option of the ipo loss only")
	}
	switch c.fDivergence() {
	case FDivReverseKL, FDivForwardKL, FDivJS, FDivAlpha:
	default:
		return fmt.Errorf("unknown f-divergence %q (want %s, %s, %s or %s)", c.FDivergence, FDivReverseKL, FDivForwardKL, FDivJS, FDivAlpha)
	}
	if math.IsNaN(c.FAlphaCoef) || math.IsInf(c.FAlphaCoef, 0) {
		return fmt.Errorf("f-divergence alpha coefficient must be finite, got %g", c.FAlphaCoef)
	}
	if c.FAlphaCoef != 0 && c.fDivergence() != FDivAlpha {
		return fmt.Errorf("the alpha coefficient applies to the %s f-divergence only", FDivAlpha)
	}
	if c.DiscoPopTau < 0 || math.IsNaN(c.DiscoPopTau) || math.IsInf(c.DiscoPopTau, 0) {
		return fmt.Errorf("discopop tau must be positive, got %g", c.DiscoPopTau)
	}
	if c.DiscoPopTau != 0 && !c.Uses(LossDiscoPop) {
		return fmt.Errorf("tau is an option of the discopop loss only")
	}
	if c.UseWeighting && (c.Uses(LossAOT) || c.Uses(LossAOTUnpaired)) {
		return fmt.Errorf("WPO weighting does not apply to the aot and aot_unpaired losses, which sort the pairs")
	}
	if a := c.LDAlpha; a != nil && !(*a >= 0 && *a <= 1) {
		return fmt.Errorf("LD-DPO alpha must be in [0, 1], got %g", *a)
	}
	return nil
}

// AppendPreferenceLoss turns a causal LM into the forward graph of preference training:
// inputs input_ids/attention_mask/position_ids for 2n rows (n chosen rows, then n rejected
// rows), completion_mask, ref_chosen_logps and ref_rejected_logps [n]; outputs the scalar
// loss and sequence_logps [2n]: the policy's completion log-probs the loss compares
// (summed; with LDAlpha, LD-weighted), for metrics. With UseWeighting, the backward pass
// must treat WPOStopGradient as a constant (the graph says so in its metadata, which
// autodiff.Build reads). New loss types are a few lines in
// lossPerPair.
func AppendPreferenceLoss(m *onnx.Model, cfg LossConfig) error {
	return AppendPreferenceLossWith(m, cfg, lm.HeadOptions{})
}

// AppendPreferenceLossWith is AppendPreferenceLoss that also keeps the log-prob head's
// optional outputs that keep asks for (token_logps, token_correct, token_wpo_logps), for
// metrics. keep.Dense forces the dense head.
func AppendPreferenceLossWith(m *onnx.Model, cfg LossConfig, keep lm.HeadOptions) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	opts := keep
	opts.TokenLogps = keep.TokenLogps || cfg.LDAlpha != nil
	opts.TokenWPOLogps = keep.TokenWPOLogps || cfg.UseWeighting
	head, err := lm.AppendLogProbHeadWith(m, opts)
	if err != nil {
		return err
	}
	g := m.Graph()
	onnx.RemoveOutput(g, head.VocabSize)
	for name, kept := range map[string]bool{head.TokenLogps: keep.TokenLogps, head.TokenWPOLogps: keep.TokenWPOLogps} {
		if name != "" && !kept {
			onnx.RemoveOutput(g, name)
		}
	}
	for _, name := range []string{RefChosenInput, RefRejectedInput} {
		if err := onnx.AddInput(g, name, onnx.Float, []onnx.Dim{onnx.DimParam("pairs")}); err != nil {
			return err
		}
	}
	b := onnx.NewBuilder(g, m.Opset(""), "ortalign_loss")
	l := &lossBuilder{b: b, cfg: cfg}
	l.n = b.Shape(RefChosenInput) // [1] = number of pairs
	rawLogps := lm.SequenceLogpsOutput
	logps := rawLogps
	if cfg.LDAlpha != nil {
		// The loss and the sequence_logps output use the LD-weighted log-probs: the head's
		// Identity is renamed, and sequence_logps redefined below.
		for _, n := range g.GetNode() {
			for i, o := range n.GetOutput() {
				if o == lm.SequenceLogpsOutput {
					n.Output[i] = b.Name("raw_sequence_logps")
					n.Name = proto.String(n.Output[i] + "_identity")
					rawLogps = n.Output[i]
				}
			}
		}
		logps = l.ldLogps(head.TokenLogps, *cfg.LDAlpha)
		lm.AddIdentity(g, logps, lm.SequenceLogpsOutput)
	}
	l.rawLogps = rawLogps
	l.chosen, l.rejected = l.halves(logps)
	l.refC, l.refR = RefChosenInput, RefRejectedInput
	if cfg.ReferenceFree {
		zeros := b.Expand(b.ConstFloat(0), l.n)
		l.refC, l.refR = zeros, zeros
	}
	l.lrC, l.lrR = b.Sub(l.chosen, l.refC), b.Sub(l.rejected, l.refR)
	l.sC, l.sR = l.score(l.lrC), l.score(l.lrR)
	l.delta = b.Sub(l.sC, l.sR)
	var weights string
	if cfg.UseWeighting {
		weights = l.wpoWeights(head.TokenWPOLogps)
		markStopGradient(m, weights)
	}
	total := ""
	for i, t := range cfg.LossTypes() {
		perPair := l.lossPerPair(t)
		if weights != "" {
			perPair = b.Mul(perPair, weights)
		}
		term := b.ReduceMean(perPair, []int64{0}, false)
		if w := cfg.LossWeights()[i]; w != 1 {
			term = b.Mul(term, b.ConstFloat(float32(w)))
		}
		if total == "" {
			total = term
		} else {
			total = b.Add(total, term)
		}
	}
	lm.AddIdentity(g, total, engine.LossOutput)
	return onnx.AddOutput(g, engine.LossOutput, onnx.Float, []onnx.Dim{})
}

// lossBuilder holds the per-pair values the loss formulas read, all [pairs]: policy
// (chosen, rejected) and reference (refC, refR) log-probs, log-ratios lrC, lrR, scores
// sC, sR (the log-ratios through the f-divergence) and delta = sC − sR.
type lossBuilder struct {
	b                            *onnx.Builder
	cfg                          LossConfig
	n                            string // [1] number of pairs
	rawLogps                     string // [2n] summed log-probs, without LD weighting
	chosen, rejected, refC, refR string
	lrC, lrR, sC, sR, delta      string
	counts, shiftedCounts        string // [2n] completion tokens (see below), at least 1
}

// halves splits a [2n] value into its chosen and rejected halves.
func (l *lossBuilder) halves(x string) (string, string) {
	b := l.b
	zero, end, axis0 := b.ConstInt64s([]int64{0}), b.ConstInt64s([]int64{math.MaxInt64}), b.ConstInt64s([]int64{0})
	return b.Op("Slice", []string{x, zero, l.n, axis0}), b.Op("Slice", []string{x, l.n, end, axis0})
}

// completionCounts is TRL's completion_mask.sum(dim=1).clamp(min=1) (IPO, sigmoid_norm).
func (l *lossBuilder) completionCounts() string {
	if l.counts == "" {
		l.counts = l.b.Max(l.b.ReduceSum(lm.CompletionMaskInput, []int64{1}, false), l.b.ConstFloat(1))
	}
	return l.counts
}

// predictedCounts is TRL's shift_completion_mask.sum(dim=1).clamp(min=1): completion
// tokens after position 0 (SFT, WPO). It equals completionCounts when every prompt is
// non-empty.
func (l *lossBuilder) predictedCounts() string {
	if l.shiftedCounts == "" {
		l.shiftedCounts = l.b.ReduceSum(lm.ShiftLeft(l.b, lm.CompletionMaskInput), []int64{1}, false)
	}
	return l.shiftedCounts
}

// score maps a log-ratio u by the f-divergence (TRL v1.x's chosen_scores).
func (l *lossBuilder) score(u string) string {
	b := l.b
	switch l.cfg.fDivergence() {
	case FDivForwardKL:
		return b.Neg(b.Exp(b.Neg(u)))
	case FDivJS:
		return b.Neg(softplus(b, b.Neg(u)))
	case FDivAlpha:
		a := l.cfg.fAlpha()
		if math.Abs(a-1) < 1e-6 {
			return u
		}
		t := b.Min(b.Mul(b.ConstFloat(float32(a-1)), u), b.ConstFloat(80))
		return b.Mul(b.Exp(t), b.ConstFloat(float32(1/(a-1))))
	}
	return u
}

func softplus(b *onnx.Builder, x string) string { return b.Op("Softplus", []string{x}) }

// smoothedDPO is (1−ε)·(−logσ(z)) + ε·(−logσ(−z)) with −logσ(z) = softplus(−z).
func (l *lossBuilder) smoothedDPO(z string) string {
	b := l.b
	loss := softplus(b, b.Neg(z))
	if eps := l.cfg.LabelSmoothing; eps > 0 {
		loss = b.Add(b.Mul(b.ConstFloat(float32(1-eps)), loss), b.Mul(b.ConstFloat(float32(eps)), softplus(b, z)))
	}
	return loss
}

// sortAsc sorts a [n] value ascending over the batch (torch.sort): TopK's indices, then
// a Gather, so that the gradient flows through Gather.
func (l *lossBuilder) sortAsc(x string) string {
	b := l.b
	idx := b.OpN("TopK", []string{x, l.n}, 2, onnx.AttrInt("axis", 0), onnx.AttrInt("largest", 0), onnx.AttrInt("sorted", 1))[1]
	return b.Gather(x, idx, 0)
}

// lossPerPair is the table of loss formulas: loss type t's [n] per-pair losses.
func (l *lossBuilder) lossPerPair(t string) string {
	b, cfg := l.b, l.cfg
	beta := b.ConstFloat(float32(cfg.Beta))
	eps := cfg.LabelSmoothing
	z := b.Mul(beta, l.delta) // βδ
	switch t {
	case LossHinge:
		return b.Relu(b.Sub(b.ConstFloat(1), z))
	case LossIPO, LossSigmoidNorm:
		d := l.delta
		if t == LossSigmoidNorm || !cfg.IPOSumLogps {
			// TRL averages the scores over completion tokens, at least 1.
			cC, cR := l.halves(l.completionCounts())
			d = b.Sub(b.Div(l.sC, cC), b.Div(l.sR, cR))
		}
		if t == LossSigmoidNorm {
			return softplus(b, b.Neg(b.Mul(beta, d)))
		}
		d = b.Sub(d, b.ConstFloat(float32(1/(2*cfg.Beta))))
		return b.Mul(d, d)
	case LossExoPair:
		// σ(z)·(logσ(z) − log(1−ε)) + σ(−z)·(logσ(−z) − log ε)
		logQw, logQl := b.Neg(softplus(b, b.Neg(z))), b.Neg(softplus(b, z))
		qw, ql := b.Sigmoid(z), b.Sigmoid(b.Neg(z))
		return b.Add(b.Mul(qw, b.Sub(logQw, b.ConstFloat(float32(math.Log1p(-eps))))),
			b.Mul(ql, b.Sub(logQl, b.ConstFloat(float32(math.Log(eps))))))
	case LossNCAPair:
		rc, rr := b.Mul(beta, l.sC), b.Mul(beta, l.sR)
		half := b.ConstFloat(0.5)
		return b.Add(softplus(b, b.Neg(rc)), b.Add(b.Mul(half, softplus(b, rc)), b.Mul(half, softplus(b, rr))))
	case LossRobust:
		// ((1−ε)·(−logσ(z)) − ε·(−logσ(−z))) / (1−2ε)
		loss := b.Sub(b.Mul(b.ConstFloat(float32(1-eps)), softplus(b, b.Neg(z))),
			b.Mul(b.ConstFloat(float32(eps)), softplus(b, z)))
		return b.Div(loss, b.ConstFloat(float32(1-2*eps)))
	case LossBCOPair:
		return b.Add(softplus(b, b.Neg(b.Mul(beta, l.sC))), softplus(b, b.Mul(beta, l.sR)))
	case LossSPPOHard:
		half := b.ConstFloat(float32(0.5 / cfg.Beta))
		w, r := b.Sub(l.sC, half), b.Add(l.sR, half)
		return b.Add(b.Mul(w, w), b.Mul(r, r))
	case LossAOT:
		d := b.Sub(l.sortAsc(b.Sub(l.chosen, l.rejected)), l.sortAsc(b.Sub(l.refC, l.refR)))
		return l.smoothedDPO(b.Mul(beta, d))
	case LossAOTUnpaired:
		d := b.Sub(l.sortAsc(l.lrC), l.sortAsc(l.lrR))
		return l.smoothedDPO(b.Mul(beta, d))
	case LossAPOZero:
		return b.Add(b.Sub(b.ConstFloat(1), b.Sigmoid(b.Mul(beta, l.lrC))), b.Sigmoid(b.Mul(beta, l.lrR)))
	case LossAPODown:
		return b.Add(b.Sigmoid(b.Mul(beta, l.lrC)), b.Sub(b.ConstFloat(1), b.Sigmoid(z)))
	case LossDiscoPop:
		mod := b.Sigmoid(b.Mul(z, b.ConstFloat(float32(1/cfg.discoPopTau()))))
		return b.Add(b.Mul(softplus(b, b.Neg(z)), b.Sub(b.ConstFloat(1), mod)), b.Mul(b.Exp(b.Neg(z)), mod))
	case LossSFT:
		// Cross-entropy over every chosen completion token of the batch (not LD-weighted),
		// the same value for each pair.
		c, _ := l.halves(l.rawLogps)
		tokens, _ := l.halves(l.predictedCounts())
		nll := b.Neg(b.Div(b.ReduceSum(c, []int64{0}, false), b.ReduceSum(tokens, []int64{0}, false)))
		return b.Expand(nll, l.n)
	}
	// sigmoid
	return l.smoothedDPO(z)
}

// wpoWeights is TRL's WPO weight per pair, exp(w_c)·exp(w_r) with w the mean of a row's
// token_wpo_logps over its completion tokens (at least 1), named WPOStopGradient.
func (l *lossBuilder) wpoWeights(tokenWPO string) string {
	b := l.b
	mean := b.Div(b.ReduceSum(tokenWPO, []int64{1}, false), b.Max(l.predictedCounts(), b.ConstFloat(1)))
	w := b.Exp(mean)
	c, r := l.halves(w)
	weights := b.Mul(c, r)
	lm.AddIdentity(b.Graph(), weights, WPOStopGradient)
	return WPOStopGradient
}

// markStopGradient records value in m's autodiff.StopGradientMetadata property, so that
// autodiff.Build treats it as a constant.
func markStopGradient(m *onnx.Model, value string) {
	for _, p := range m.Proto().GetMetadataProps() {
		if p.GetKey() == autodiff.StopGradientMetadata {
			p.Value = proto.String(p.GetValue() + "," + value)
			return
		}
	}
	m.Proto().MetadataProps = append(m.Proto().MetadataProps, &onnxpb.StringStringEntryProto{
		Key: proto.String(autodiff.StopGradientMetadata), Value: proto.String(value),
	})
}

// ldLogps is LD-DPO's log-prob of each row from token_logps [2n, seq]: the sum over the
// first min(n_c, n_r) completion tokens (n: the pair's completion lengths) plus α times
// the sum over the rest (TRL's shared and tail masks).
func (l *lossBuilder) ldLogps(tokenLogps string, alpha float64) string {
	b := l.b
	// Completion positions after position 0, as TRL's shifted mask, in the target layout.
	mask := lm.ShiftRight(b, lm.ShiftLeft(b, lm.CompletionMaskInput))
	pos := b.Op("CumSum", []string{mask, b.ConstScalarInt64(1)}) // 1, 2, ... along the completion
	lens := b.ReduceSum(mask, []int64{1}, false)
	lc, lr := l.halves(lens)
	shared := b.Min(lc, lr)
	shared = b.Unsqueeze(b.Concat(0, shared, shared), []int64{1}) // [2n, 1]
	inShared := b.Cast(b.Op("And", []string{b.Greater(pos, b.ConstFloat(0)), b.Not(b.Greater(pos, shared))}), onnx.Float)
	inTail := b.Cast(b.Greater(pos, shared), onnx.Float)
	weight := b.Add(inShared, b.Mul(b.ConstFloat(float32(alpha)), inTail))
	return b.ReduceSum(b.Mul(tokenLogps, weight), []int64{1}, false)
}

// LDLogps is LD-DPO's weighting (LossConfig.LDAlpha) of a pair's completion-token
// log-probs, for the reference log-probs: chosen and rejected hold the log-probs of each
// completion token in order (TokenLogpsOutput, or LogProbModel.TokenLogps).
func LDLogps(chosen, rejected []float64, alpha float64) (float64, float64) {
	shared := min(len(chosen), len(rejected))
	sum := func(tok []float64) float64 {
		var s, tail float64
		for i, v := range tok {
			if i < shared {
				s += v
			} else {
				tail += v
			}
		}
		return s + alpha*tail
	}
	return sum(chosen), sum(rejected)
}
