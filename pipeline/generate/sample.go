package generate

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
)

// SampleOptions configures Generator.Generate. The logits processors are transformers':
// the repetition penalty first, then (when sampling) temperature, top-k, top-p and min-p,
// in that order, each with min_tokens_to_keep = 1.
type SampleOptions struct {
	// Temperature divides the logits before sampling; 0 means greedy decoding (argmax of
	// the repetition-penalised logits; the other warpers are not applied, as
	// transformers' do_sample=False).
	Temperature float64
	// TopK keeps the TopK highest logits (and any tied with the k-th); 0 disables.
	TopK int
	// TopP keeps the smallest set of most likely tokens whose probability reaches TopP;
	// 1 disables.
	TopP float64
	// MinP removes tokens whose probability is below MinP times the top token's; 0 disables.
	MinP float64
	// RepetitionPenalty divides positive and multiplies negative logits of every token
	// already in the row (prompt included); 1 disables. Padding is not counted.
	RepetitionPenalty float64
	// MaxNewTokens bounds each completion; a row that reaches it finishes with "length".
	MaxNewTokens int
	// NumReturnSequences is the number of completions per prompt (default 1).
	NumReturnSequences int
	// Seed seeds the sampler. Row (prompt index i, return index r) draws from its own
	// source seeded from (Seed, i, r), so the output depends neither on the batch it is in
	// nor on thread counts.
	Seed uint64
	// EOS ends a row ("eos") when sampled; the token is kept in the completion.
	EOS []int64
	// Stop ends a row ("stop") as soon as its decoded completion contains one of these
	// strings; Completion.Text is cut before it (the ids keep every sampled token). Needs
	// Decode.
	Stop []string
	// Decode turns completion ids into text (Completion.Text); needed for Stop.
	Decode func(ids []int64) (string, error)
	// PaddingSide is "left" (default, as transformers generates) or "right": how a batch
	// of prompts of different lengths is laid out for the cached prefill. Position ids
	// follow the attention mask (cumsum − 1), so both give the same tokens. A cache
	// written in place (GroupQueryAttention) always takes rows right-padded, as the op
	// reads them.
	PaddingSide string
	// BatchSize bounds the rows decoded together (0: all of them). With a cache written in
	// place, a finished row's slot takes the next row waiting; otherwise the rows go in
	// consecutive batches. Tokens do not depend on it.
	BatchSize int
	// Done, when set, is called with a row's Prompt.Index as each row (one of a prompt's
	// NumReturnSequences) finishes: progress through a long Generate call.
	Done func(prompt int)
}

// rowsDone reports finished rows to Done.
func (o *SampleOptions) rowsDone(rows []*genRow) {
	if o.Done == nil {
		return
	}
	for _, r := range rows {
		o.Done(r.pi)
	}
}

// Finish reasons.
const (
	FinishEOS    = "eos"
	FinishStop   = "stop"
	FinishLength = "length"
)

// Check reports whether the options are valid (zero values take their defaults).
func (o SampleOptions) Check() error { return o.normalize() }

func (o *SampleOptions) normalize() error {
	if o.NumReturnSequences == 0 {
		o.NumReturnSequences = 1
	}
	if o.RepetitionPenalty == 0 {
		o.RepetitionPenalty = 1
	}
	if o.TopP == 0 {
		o.TopP = 1
	}
	if o.PaddingSide == "" {
		o.PaddingSide = "left"
	}
	switch {
	case o.Temperature < 0 || math.IsNaN(o.Temperature):
		return fmt.Errorf("temperature %v: want >= 0 (0 is greedy)", o.Temperature)
	case o.TopK < 0:
		return fmt.Errorf("top-k %d: want >= 0 (0 disables)", o.TopK)
	case !(o.TopP > 0 && o.TopP <= 1):
		return fmt.Errorf("top-p %v: want in (0, 1]", o.TopP)
	case !(o.MinP >= 0 && o.MinP <= 1):
		return fmt.Errorf("min-p %v: want in [0, 1]", o.MinP)
	case !(o.RepetitionPenalty > 0):
		return fmt.Errorf("repetition penalty %v: want > 0", o.RepetitionPenalty)
	case o.MaxNewTokens < 0:
		return fmt.Errorf("max new tokens %d: want >= 0", o.MaxNewTokens)
	case o.BatchSize < 0:
		return fmt.Errorf("batch size %d: want >= 0 (0 is all rows)", o.BatchSize)
	case o.NumReturnSequences < 0:
		return fmt.Errorf("num return sequences %d: want >= 1", o.NumReturnSequences)
	case o.PaddingSide != "left" && o.PaddingSide != "right":
		return fmt.Errorf("padding side %q: want left or right", o.PaddingSide)
	case len(o.Stop) > 0 && o.Decode == nil:
		return errors.New("stop strings need a tokenizer to decode completions")
	}
	for _, s := range o.Stop {
		if s == "" {
			return errors.New("empty stop string")
		}
	}
	return nil
}

// rowSource is the random source of one (prompt, return) row.
func rowSource(seed uint64, prompt, ret int) *rand.Rand {
	return rand.New(rand.NewPCG(Splitmix64(seed), Splitmix64(uint64(prompt)<<32^uint64(uint32(ret))^0x9e3779b97f4a7c15)))
}

func Splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// processLogits applies the repetition penalty and, when sampling, the warpers to raw
// logits, writing the scores to s (len(raw)); filtered tokens get -Inf.
func processLogits(s []float64, raw []float32, seen map[int64]struct{}, o *SampleOptions) {
	for i, v := range raw {
		s[i] = float64(v)
	}
	if p := o.RepetitionPenalty; p != 1 {
		for tok := range seen {
			if tok < 0 || int(tok) >= len(s) {
				continue
			}
			if v := s[tok]; v < 0 {
				s[tok] = v * p
			} else {
				s[tok] = v / p
			}
		}
	}
	if o.Temperature == 0 {
		return
	}
	if t := o.Temperature; t != 1 {
		for i := range s {
			s[i] /= t
		}
	}
	if k := o.TopK; k > 0 && k < len(s) {
		topK(s, k)
	}
	if o.TopP < 1 {
		topP(s, o.TopP)
	}
	if o.MinP > 0 {
		minP(s, o.MinP)
	}
}

// topK is TopKLogitsWarper: scores below the k-th largest become -Inf.
func topK(s []float64, k int) {
	c := slices.Clone(s)
	slices.SortFunc(c, func(a, b float64) int {
		switch {
		case a > b:
			return -1
		case a < b:
			return 1
		}
		return 0
	})
	kth := c[k-1]
	for i, v := range s {
		if v < kth {
			s[i] = math.Inf(-1)
		}
	}
}

// topP is TopPLogitsWarper: in ascending order of score, tokens whose cumulative
// probability is <= 1 - p are removed; the most likely token always stays.
func topP(s []float64, p float64) {
	idx := make([]int, 0, len(s))
	for i, v := range s {
		if !math.IsInf(v, -1) {
			idx = append(idx, i)
		}
	}
	sort.SliceStable(idx, func(a, b int) bool { return s[idx[a]] < s[idx[b]] })
	probs := softmaxOf(s, idx)
	cum := 0.0
	for j, i := range idx {
		cum += probs[j]
		if cum <= 1-p && j < len(idx)-1 {
			s[i] = math.Inf(-1)
		}
	}
}

// minP is MinPLogitsWarper: tokens with probability below p times the top probability
// are removed (the top token always stays).
func minP(s []float64, p float64) {
	var idx []int
	for i, v := range s {
		if !math.IsInf(v, -1) {
			idx = append(idx, i)
		}
	}
	probs := softmaxOf(s, idx)
	top := 0.0
	for _, q := range probs {
		top = max(top, q)
	}
	best := argmax(s)
	for j, i := range idx {
		if probs[j] < p*top && i != best {
			s[i] = math.Inf(-1)
		}
	}
}

// softmaxOf returns the softmax of s over the indices idx (in idx's order).
func softmaxOf(s []float64, idx []int) []float64 {
	m := math.Inf(-1)
	for _, i := range idx {
		m = max(m, s[i])
	}
	out := make([]float64, len(idx))
	z := 0.0
	for j, i := range idx {
		out[j] = math.Exp(s[i] - m)
		z += out[j]
	}
	for j := range out {
		out[j] /= z
	}
	return out
}

// argmax returns the first index of the largest score (torch.argmax's choice on ties).
func argmax[T float32 | float64](s []T) int {
	best := 0
	for i, v := range s {
		if v > s[best] {
			best = i
		}
	}
	return best
}

// sampleScores draws an index with probability softmax(s), from one uniform draw.
func sampleScores(s []float64, rng *rand.Rand) int {
	m := math.Inf(-1)
	for _, v := range s {
		m = max(m, v)
	}
	z := 0.0
	for _, v := range s {
		if !math.IsInf(v, -1) {
			z += math.Exp(v - m)
		}
	}
	u := rng.Float64() * z
	cum, last := 0.0, -1
	for i, v := range s {
		if math.IsInf(v, -1) {
			continue
		}
		cum += math.Exp(v - m)
		last = i
		if u < cum {
			return i
		}
	}
	return last
}

// nextToken picks a row's next token from its raw logits, whose log Σ exp is logz.
// Greedy decoding without a repetition penalty takes the argmax of the raw logits;
// sampling from softmax(raw) (temperature 1, no penalty or filter) draws against the
// normalizer exp(logz − max) rather than summing it again.
func nextToken(buf []float64, raw []float32, logz float64, seen map[int64]struct{}, o *SampleOptions, rng *rand.Rand) int64 {
	plain := o.RepetitionPenalty == 1 && o.TopK == 0 && o.TopP == 1 && o.MinP == 0
	switch {
	case plain && o.Temperature == 0:
		return int64(argmax(raw))
	case plain && o.Temperature == 1:
		return int64(sampleRaw(raw, logz, rng))
	}
	processLogits(buf, raw, seen, o)
	if o.Temperature == 0 {
		return int64(argmax(buf))
	}
	return int64(sampleScores(buf, rng))
}

// sampleRaw is sampleScores on the raw logits as float64, with Σ exp(raw − max) taken as
// exp(logz − max).
func sampleRaw(raw []float32, logz float64, rng *rand.Rand) int {
	m := float64(raw[argmax(raw)])
	u := rng.Float64() * math.Exp(logz-m)
	cum, last := 0.0, -1
	for i, v := range raw {
		if math.IsInf(float64(v), -1) {
			continue
		}
		cum += math.Exp(float64(v) - m)
		last = i
		if u < cum {
			return i
		}
	}
	return last
}
