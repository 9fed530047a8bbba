package lm

import (
	"fmt"
	"math"
	"sort"
	"strings"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
	"ortalign/onnx/ort"

	"google.golang.org/protobuf/proto"
)

// Names of the values the log-prob head adds to a causal LM graph.
const (
	// CompletionMaskInput is float32 [batch, seq]: 1 where input_ids[t] is a completion
	// token whose log-prob counts, 0 on prompt and padding positions.
	CompletionMaskInput = "completion_mask"
	// SequenceLogpsOutput is float32 [batch]: the sum over completion tokens t of
	// log softmax(logits[t-1])[input_ids[t]].
	SequenceLogpsOutput = "sequence_logps"
	// VocabSizeOutput is int64 [1]: the last dimension of logits, read once to check ids.
	VocabSizeOutput = "ortalign_vocab_size"
)

// Standard input and output names of an exported causal LM (optimum / torch.onnx.export).
const (
	InputIDs      = "input_ids"
	AttentionMask = "attention_mask"
	PositionIDs   = "position_ids"
	LogitsOutput  = "logits"
)

// AppendLogProbHead adds to a causal LM the sub-graph that turns its logits into
// per-sequence completion log-probs inside ONNX Runtime, so [batch, seq, vocab] logits
// never leave the session. It returns the name of the float32 [batch] output. The model's
// own outputs are dropped (and what only they needed pruned): the head's graph computes
// log-probs, nothing else.
//
// When the logits come from a final projection logits = hidden · W (+ b), as in every
// exported decoder, the head applies the projection only at the positions that predict
// a completion token: prompt and padding positions never reach the [vocab]-wide matmul
// and softmax, in the forward pass or in training's backward pass. Other models get the
// full logits. The completion mask is read as 0/1.
func AppendLogProbHead(m *onnx.Model) (string, error) {
	return appendLogProbHead(m, true)
}

func appendLogProbHead(m *onnx.Model, allowSparse bool) (string, error) {
	out, err := AppendLogProbHeadWith(m, HeadOptions{Dense: !allowSparse})
	return out.SequenceLogps, err
}

// Optional outputs of the log-prob head (HeadOptions).
const (
	// TokenLogpsOutput is float32 [batch, seq]: at a completion position t (t >= 1),
	// log softmax(logits[t-1])[input_ids[t]]; 0 at every other position. Its sum over a
	// row is the row's sequence_logps.
	TokenLogpsOutput = "token_logps"
	// TokenCorrectOutput is float32 [batch]: the number of the row's completion tokens t
	// (t >= 1) for which argmax(logits[t-1]) == input_ids[t] (the first index on ties, as
	// torch.argmax). It is not differentiable: SFT's mean_token_accuracy is its sum over
	// rows divided by the number of completion tokens.
	TokenCorrectOutput = "token_correct"
	// TokenWPOLogpsOutput is float32 [batch, seq]: at a completion position t,
	// token_logps[t] − log Σ_v p_v², with p = softmax(logits[t-1]): the per-token
	// log-prob of WPO (TRL's use_weighting, Eq. 2 of the WPO paper), whose mean over a
	// row's completion tokens is the log of its weight; 0 at every other position.
	TokenWPOLogpsOutput = "token_wpo_logps"
	// CompletionLogitsOutput is float32 [batch]: per row, the sum over completion
	// positions t (t >= 1) of the mean over the vocabulary of logits[t-1]. Divided by
	// the rows' completion tokens it is TRL's logits/chosen (and /rejected): the mean of
	// every logit that predicts a completion token. It is not differentiated.
	CompletionLogitsOutput = "completion_logits"
)

// HeadOptions selects the log-prob head's optional outputs and path.
type HeadOptions struct {
	TokenLogps    bool // add TokenLogpsOutput
	TokenCorrect  bool // add TokenCorrectOutput
	TokenWPOLogps bool // add TokenWPOLogpsOutput
	// CompletionLogits adds CompletionLogitsOutput.
	CompletionLogits bool
	// Dense computes the full [batch, seq, vocab] logits even when the model's final
	// projection is recognised (the sparse path projects completion positions only).
	Dense bool
}

// HeadOutputs names the outputs AppendLogProbHeadWith added; an optional one not asked
// for is "".
type HeadOutputs struct {
	SequenceLogps, VocabSize                string
	TokenLogps, TokenCorrect, TokenWPOLogps string
	CompletionLogits                        string
	// Sparse reports whether the head projects completion positions only.
	Sparse bool
}

// AppendLogProbHeadWith is AppendLogProbHead with optional per-token outputs: every
// output of AppendLogProbHead (sequence_logps, the vocabulary size) plus those o asks
// for. With the zero HeadOptions it builds exactly AppendLogProbHead's graph.
func AppendLogProbHeadWith(m *onnx.Model, o HeadOptions) (HeadOutputs, error) {
	g := m.Graph()
	if onnx.Output(g, LogitsOutput) == nil {
		return HeadOutputs{}, fmt.Errorf("model has no output %q (outputs: %s); a causal LM must output logits [batch, seq, vocab]",
			LogitsOutput, strings.Join(ValueNames(g.GetOutput()), ", "))
	}
	if onnx.Input(g, InputIDs) == nil {
		return HeadOutputs{}, fmt.Errorf("model has no input %q (inputs: %s)", InputIDs, strings.Join(ValueNames(g.GetInput()), ", "))
	}
	if err := onnx.AddInput(g, CompletionMaskInput, onnx.Float, []onnx.Dim{onnx.DimParam("batch"), onnx.DimParam("sequence")}); err != nil {
		return HeadOutputs{}, err
	}
	b := onnx.NewBuilder(g, m.Opset(""), "ortalign_logp")
	logitsType, _, _ := onnx.TensorType(onnx.Output(g, LogitsOutput))
	var h HeadValues
	head, sparse := FindLMHead(g)
	sparse = sparse && !o.Dense
	if sparse {
		h = SparseSequenceLogps(b, head, logitsType, InputIDs, CompletionMaskInput)
	} else {
		logits := LogitsOutput
		if logitsType != onnx.Float {
			logits = b.Cast(logits, onnx.Float)
		}
		h = DenseSequenceLogps(b, logits, InputIDs, CompletionMaskInput)
		h.vocab = b.Slice(b.Shape(LogitsOutput), []int64{2}, []int64{3}, []int64{0}, nil)
	}
	// The optional values, built after the default ones so that the default graph is
	// unchanged.
	type extra struct {
		name, value string
		dims        []onnx.Dim
	}
	var extras []extra
	batchSeq := []onnx.Dim{onnx.DimParam("batch"), onnx.DimParam("sequence")}
	if o.TokenLogps {
		extras = append(extras, extra{TokenLogpsOutput, h.PerPosition(b, h.Tok), batchSeq})
	}
	if o.TokenCorrect {
		extras = append(extras, extra{TokenCorrectOutput, h.correct(b), []onnx.Dim{onnx.DimParam("batch")}})
	}
	if o.TokenWPOLogps {
		// log Σ_v p_v² = log Σ_v exp(2·log p_v); log p <= 0, so no overflow, and the sum
		// is at least max p² >= 1/vocab².
		lse2 := b.Log(b.ReduceSum(b.Exp(b.Mul(b.ConstFloat(2), h.Lp)), []int64{h.VocabAxis}, false))
		extras = append(extras, extra{TokenWPOLogpsOutput, h.PerPosition(b, b.Sub(h.Tok, lse2)), batchSeq})
	}
	if o.CompletionLogits {
		extras = append(extras, extra{CompletionLogitsOutput, h.completionLogits(b), []onnx.Dim{onnx.DimParam("batch")}})
	}
	var inputs []string
	for _, in := range g.GetInput() {
		inputs = append(inputs, in.GetName())
	}
	g.Output = nil
	AddIdentity(g, h.seqLogps, SequenceLogpsOutput)
	if err := onnx.AddOutput(g, SequenceLogpsOutput, onnx.Float, []onnx.Dim{onnx.DimParam("batch")}); err != nil {
		return HeadOutputs{}, err
	}
	AddIdentity(g, h.vocab, VocabSizeOutput)
	if err := onnx.AddOutput(g, VocabSizeOutput, onnx.Int64, []onnx.Dim{onnx.DimValue(1)}); err != nil {
		return HeadOutputs{}, err
	}
	res := HeadOutputs{SequenceLogps: SequenceLogpsOutput, VocabSize: VocabSizeOutput, Sparse: sparse}
	for _, e := range extras {
		AddIdentity(g, e.value, e.name)
		if err := onnx.AddOutput(g, e.name, onnx.Float, e.dims); err != nil {
			return HeadOutputs{}, err
		}
		switch e.name {
		case TokenLogpsOutput:
			res.TokenLogps = e.name
		case TokenCorrectOutput:
			res.TokenCorrect = e.name
		case TokenWPOLogpsOutput:
			res.TokenWPOLogps = e.name
		case CompletionLogitsOutput:
			res.CompletionLogits = e.name
		}
	}
	onnx.Prune(g, inputs)
	return res, nil
}

// headValues are the log-prob head's intermediate values. Sparse path: lp is the
// [N, vocab] log-softmax of the N positions that predict a completion token, logits
// their float logits, targets [N] the predicted ids, tok [N] their log-probs, owner the
// 0/1 [batch, N] matrix of each position's row. Dense path: lp and logits are
// [batch, seq, vocab], targets [batch, seq] the next ids, tok [batch, seq] the next
// tokens' log-probs (at the predicting position) and nextMask the shifted completion
// mask; owner is "".
type HeadValues struct {
	seqLogps, vocab            string
	logits, Lp, targets, Tok   string
	owner, nextMask, ids, mask string
	VocabAxis                  int64 // the vocabulary axis of logits and lp
	// Sparse path: the gathered [N, hidden] states, the projection and the logits' type.
	hidden     string
	head       lmHead
	logitsType onnx.DataType
}

// perPosition lays out per-prediction values v (tok's layout) as [batch, seq] at the
// predicted (target) position t, 0 where t is not a completion position or t = 0.
func (h HeadValues) PerPosition(b *onnx.Builder, v string) string {
	if h.owner == "" {
		// Dense: v is at the predicting position t-1; mask, then shift right by one.
		return ShiftRight(b, b.Mul(v, h.nextMask))
	}
	// Sparse: the k-th prediction is the k-th completion position t >= 1 in row-major
	// order (the k-th non-zero of the mask with column 0 cleared). Other positions read
	// an appended 0.
	flat := b.ConstInt64s([]int64{-1})
	isComp := b.Cast(b.Reshape(ShiftRight(b, ShiftLeft(b, h.mask)), flat), onnx.Bool)
	k := b.Sub(b.Op("CumSum", []string{b.Cast(isComp, onnx.Int64), b.ConstScalarInt64(0)}), b.ConstScalarInt64(1))
	padded := b.Concat(0, v, b.ConstFloats([]float32{0}))
	idx := b.Where(isComp, k, b.Shape(v))
	return b.Reshape(b.Gather(padded, idx, 0), b.Shape(h.ids))
}

// correct counts, per row, the completion predictions whose argmax is the target.
func (h HeadValues) correct(b *onnx.Builder) string {
	if h.owner == "" {
		pred := b.Op("ArgMax", []string{h.logits}, onnx.AttrInt("axis", 2), onnx.AttrInt("keepdims", 0))
		hit := b.Mul(b.Cast(b.Equal(pred, h.targets), onnx.Float), h.nextMask)
		return b.ReduceSum(hit, []int64{1}, false)
	}
	pred := b.Op("ArgMax", []string{h.logits}, onnx.AttrInt("axis", 1), onnx.AttrInt("keepdims", 0))
	return b.MatMul(h.owner, b.Cast(b.Equal(pred, h.targets), onnx.Float))
}

// completionLogits sums, per row, the vocabulary mean of the logits at the positions
// that predict a completion token. On the sparse path the mean is taken through the
// projection, hidden · mean_v W[:, v] (+ mean b): the same value, without keeping the
// [N, vocab] logits alive for it.
func (h HeadValues) completionLogits(b *onnx.Builder) string {
	if h.owner == "" {
		return b.ReduceSum(b.Mul(b.ReduceMean(h.logits, []int64{2}, false), h.nextMask), []int64{1}, false)
	}
	mean := b.MatMul(h.hidden, b.ReduceMean(h.head.Weight, []int64{1}, true)) // [N, 1]
	if h.head.Bias != "" {
		mean = b.Add(mean, b.ReduceMean(h.head.Bias, []int64{0}, true))
	}
	if h.logitsType != onnx.Float {
		mean = b.Cast(mean, onnx.Float)
	}
	return b.MatMul(h.owner, b.Squeeze(mean, []int64{1}))
}

// lmHead is a causal LM's final projection: logits = hidden · weight (+ bias).
type lmHead struct {
	Hidden, Weight, Bias string
}

// findLMHead recognises logits = MatMul(hidden, W) or Add(MatMul(hidden, W), b) with a
// 2-D W: an initializer, or the Transpose of one (a tied embedding).
func FindLMHead(g *onnxpb.GraphProto) (lmHead, bool) {
	producers := onnx.Producers(g)
	n := producers[LogitsOutput]
	var head lmHead
	if n != nil && n.GetOpType() == "Add" && len(n.GetInput()) == 2 {
		for i, in := range n.GetInput() {
			mm, bias := producers[in], n.GetInput()[1-i]
			if t := onnx.Initializer(g, bias); mm != nil && mm.GetOpType() == "MatMul" && t != nil && len(t.GetDims()) == 1 {
				n, head.Bias = mm, bias
				break
			}
		}
	}
	if n == nil || n.GetOpType() != "MatMul" || len(n.GetInput()) != 2 {
		return lmHead{}, false
	}
	head.Hidden, head.Weight = n.GetInput()[0], n.GetInput()[1]
	w := onnx.Initializer(g, head.Weight)
	if tr := producers[head.Weight]; w == nil && tr != nil && tr.GetOpType() == "Transpose" {
		w = onnx.Initializer(g, tr.GetInput()[0])
	}
	if w == nil || len(w.GetDims()) != 2 {
		return lmHead{}, false
	}
	return head, true
}

// sparseSequenceLogps is sequenceLogps computed only at the positions t-1 whose next
// token t is a completion token: their hidden states are gathered into [N, hidden], the
// projection and log-softmax run on those N rows, and a 0/1 [batch, N] matrix sums each
// sequence's N log-probs. It returns the [batch] log-probs, the [1] vocabulary size and
// the intermediate values (headValues).
func SparseSequenceLogps(b *onnx.Builder, head lmHead, logitsType onnx.DataType, ids, mask string) HeadValues {
	flat := b.ConstInt64s([]int64{-1})
	rows := b.Reshape(b.Op("NonZero", []string{b.Reshape(ShiftLeft(b, mask), flat)}), flat) // [N] in batch*seq
	seqLen := b.Squeeze(b.Slice(b.Shape(ids), []int64{1}, []int64{2}, []int64{0}, nil), []int64{0})
	batch := b.Squeeze(b.Slice(b.Shape(ids), []int64{0}, []int64{1}, []int64{0}, nil), []int64{0})
	width := b.Slice(b.Shape(head.Hidden), []int64{2}, []int64{3}, []int64{0}, nil)
	hidden := b.Gather(b.Reshape(head.Hidden, b.Concat(0, flat, width)), rows, 0) // [N, hidden]
	logits := b.MatMul(hidden, head.Weight)
	if head.Bias != "" {
		logits = b.Add(logits, head.Bias)
	}
	if logitsType != onnx.Float {
		logits = b.Cast(logits, onnx.Float)
	}
	targets := b.Gather(b.Reshape(ShiftLeft(b, ids), flat), rows, 0) // [N]
	lp := b.LogSoftmax(logits, -1)
	tok := b.Squeeze(b.GatherElements(lp, b.Unsqueeze(targets, []int64{1}), 1), []int64{1})
	rowOf := b.Div(rows, seqLen)
	one := b.ConstScalarInt64(1)
	zero := b.ConstScalarInt64(0)
	owner := b.Cast(b.Equal(b.Unsqueeze(b.Op("Range", []string{zero, batch, one}), []int64{1}), b.Unsqueeze(rowOf, []int64{0})), onnx.Float)
	vocab := b.Slice(b.Shape(logits), []int64{1}, []int64{2}, []int64{0}, nil)
	return HeadValues{
		seqLogps: b.MatMul(owner, tok), vocab: vocab,
		logits: logits, Lp: lp, targets: targets, Tok: tok, owner: owner, ids: ids, mask: mask, VocabAxis: 1,
		hidden: hidden, head: head, logitsType: logitsType,
	}
}

// sequenceLogps emits sum_t mask[t] * log softmax(logits[t-1])[ids[t]] over t >= 1, and
// returns the name of the [batch] result, from full [batch, seq, vocab] logits. The shift
// by one is applied to the small ids and mask (next-token targets, with a masked dummy at
// the last position) rather than to the logits, which would cost a copy forward and a
// pad in the backward pass.
func sequenceLogps(b *onnx.Builder, logits, ids, mask string) string {
	return DenseSequenceLogps(b, logits, ids, mask).seqLogps
}

// denseSequenceLogps is sequenceLogps with its intermediate values (headValues; vocab
// is left to the caller).
func DenseSequenceLogps(b *onnx.Builder, logits, ids, mask string) HeadValues {
	next := ShiftLeft(b, ids)
	nextMask := ShiftLeft(b, mask)
	lp := b.LogSoftmax(logits, -1)
	tok := b.Squeeze(b.GatherElements(lp, b.Unsqueeze(next, []int64{2}), 2), []int64{2})
	return HeadValues{
		seqLogps: b.ReduceSum(b.Mul(tok, nextMask), []int64{1}, false),
		logits:   logits, Lp: lp, targets: next, Tok: tok, nextMask: nextMask, ids: ids, mask: mask, VocabAxis: 2,
	}
}

// shiftLeft returns x[:, 1:] followed by a column of zeros: [batch, seq] -> [batch, seq].
func ShiftLeft(b *onnx.Builder, x string) string {
	const end = math.MaxInt64
	first := b.Slice(x, []int64{0}, []int64{1}, []int64{1}, nil)
	zeroCol := b.Sub(first, first)
	return b.Concat(1, b.Slice(x, []int64{1}, []int64{end}, []int64{1}, nil), zeroCol)
}

// shiftRight returns a column of zeros followed by x[:, :-1]: [batch, seq] -> [batch, seq].
func ShiftRight(b *onnx.Builder, x string) string {
	first := b.Slice(x, []int64{0}, []int64{1}, []int64{1}, nil)
	zeroCol := b.Sub(first, first)
	return b.Concat(1, zeroCol, b.Slice(x, []int64{0}, []int64{-1}, []int64{1}, nil))
}

func AddIdentity(g *onnxpb.GraphProto, from, to string) {
	g.Node = append(g.Node, &onnxpb.NodeProto{
		Name: proto.String(to + "_identity"), OpType: proto.String("Identity"),
		Input: []string{from}, Output: []string{to},
	})
}

func ValueNames(vs []*onnxpb.ValueInfoProto) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = v.GetName()
	}
	return out
}

// Sequence is one tokenized row: its ids and which of its tokens' log-probs count.
type Sequence struct {
	IDs []int64
	// CompletionStart is the index of the first completion token. When Mask is nil the
	// tokens from it on count.
	CompletionStart int
	// Mask, when non-nil, holds one entry per id and marks the tokens whose log-probs
	// count, in place of CompletionStart (which then is the first marked token): a
	// conversation learns only its assistant turns. Nil means "from CompletionStart on".
	Mask []bool
}

// Counts reports whether the log-prob of token t (the completion mask at t) counts.
func (s Sequence) Counts(t int) bool {
	if s.Mask != nil {
		return t < len(s.Mask) && s.Mask[t]
	}
	return t >= s.CompletionStart && t < len(s.IDs)
}

// CompletionTokens is the number of tokens whose log-probs count. Token 0 never does:
// nothing before it predicts it (the log-prob head reads the mask from position 1).
func (s Sequence) CompletionTokens() int {
	if s.Mask != nil {
		n := 0
		for t := 1; t < len(s.Mask) && t < len(s.IDs); t++ {
			if s.Mask[t] {
				n++
			}
		}
		return n
	}
	return max(0, len(s.IDs)-max(s.CompletionStart, 1))
}

// ModelOptions configures a LogProbModel.
type ModelOptions struct {
	// Threads is ONNX Runtime's intra-op thread count; 0 means all cores.
	Threads int
	// PadID fills right padding; any id the model accepts will do since padded
	// positions are masked out.
	PadID int64
}

// LogProbModel is a causal LM loaded in ONNX Runtime with the log-prob head.
type LogProbModel struct {
	Path    string
	sess    *ort.Session
	vocab   int64
	opts    ModelOptions
	hasMask bool
	hasPos  bool
	Pasts   []PastInput
}

// pastInput is a KV-cache input fed as an empty past: [batch, heads, 0, head_dim].
type PastInput struct {
	Name string
	Dims []int64 // -1 where dynamic
}

// LoadLogProbModel loads the causal LM at path and prepares it for scoring.
func LoadLogProbModel(path string, o ModelOptions) (*LogProbModel, error) {
	m, err := onnx.Load(path)
	if err != nil {
		return nil, err
	}
	// The loaded model is ours: the head goes onto it directly, with no copy of the
	// weights (a clone costs the model's size again at the peak of loading).
	return newLogProbModel(path, m, o)
}

// NewLogProbModel prepares an already loaded model; path only labels errors. m is not
// changed (the head is added to a copy).
func NewLogProbModel(path string, m *onnx.Model, o ModelOptions) (*LogProbModel, error) {
	return newLogProbModel(path, m.Clone(), o)
}

// newLogProbModel prepares m, which it changes.
func newLogProbModel(path string, m *onnx.Model, o ModelOptions) (*LogProbModel, error) {
	lm := &LogProbModel{Path: path, opts: o}
	g := m.Graph()
	if err := CheckInputs(g); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	lm.hasMask = onnx.Input(g, AttentionMask) != nil
	lm.hasPos = onnx.Input(g, PositionIDs) != nil
	var err error
	if lm.Pasts, err = PastInputs(g); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if _, err := AppendLogProbHead(m); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	lm.sess, err = NewModelSession(m, []string{SequenceLogpsOutput, VocabSizeOutput}, ort.Options{Threads: o.Threads})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	// One tiny forward to learn the vocabulary size and prove the model runs.
	out, err := lm.run([]Sequence{{IDs: []int64{0, 0}, CompletionStart: 1}})
	if err != nil {
		lm.Close()
		return nil, fmt.Errorf("%s: probe run: %w", path, err)
	}
	lm.vocab = out[VocabSizeOutput].I64[0]
	return lm, nil
}

// VocabSize is the size of the model's logits' last dimension.
func (lm *LogProbModel) VocabSize() int64 { return lm.vocab }

// Close releases the ONNX Runtime session.
func (lm *LogProbModel) Close() {
	if lm.sess != nil {
		lm.sess.Destroy()
		lm.sess = nil
	}
}

// SequenceLogps returns, for each row, the sum of its completion tokens' log-probs.
// Rows are right-padded to the longest one in a single batch.
func (lm *LogProbModel) SequenceLogps(rows []Sequence) ([]float64, error) {
	for i, r := range rows {
		for t, id := range r.IDs {
			if id < 0 || id >= lm.vocab {
				return nil, fmt.Errorf("%s: row %d position %d: token id %d outside the model's vocabulary [0, %d)", lm.Path, i, t, id, lm.vocab)
			}
		}
	}
	out, err := lm.run(rows)
	if err != nil {
		width := 0
		for _, r := range rows {
			width = max(width, len(r.IDs))
		}
		return nil, fmt.Errorf("%s: batch of %d sequences of up to %d tokens (longer than the model's positions? lower the maximum length): %w", lm.Path, len(rows), width, err)
	}
	res := make([]float64, len(rows))
	for i, v := range out[SequenceLogpsOutput].F32 {
		res[i] = float64(v)
	}
	return res, nil
}

func (lm *LogProbModel) run(rows []Sequence) (map[string]*ort.Tensor, error) {
	in := BatchInputs(rows, lm.opts.PadID)
	feeds := map[string]*ort.Tensor{InputIDs: in.IDs, CompletionMaskInput: in.CompletionMask}
	if lm.hasMask {
		feeds[AttentionMask] = in.AttentionMask
	}
	if lm.hasPos {
		feeds[PositionIDs] = in.PositionIDs
	}
	AddEmptyPast(feeds, lm.Pasts, int64(len(rows)))
	return lm.sess.Run(feeds, nil)
}

// checkInputs rejects a model with graph inputs ortalign cannot feed.
func CheckInputs(g *onnxpb.GraphProto) error {
	for _, in := range g.GetInput() {
		name := in.GetName()
		if onnx.Initializer(g, name) != nil || name == InputIDs || name == AttentionMask || name == PositionIDs || isPastInput(name) {
			continue
		}
		return fmt.Errorf("unsupported model input %q (supported: input_ids, attention_mask, position_ids, past_key_values.*)", name)
	}
	return nil
}

func isPastInput(name string) bool {
	return strings.HasPrefix(name, "past_key_values") || strings.HasPrefix(name, "past.")
}

// pastInputs returns g's KV-cache inputs (past_key_values* or past.*, not initializers),
// which are fed as an empty past.
func PastInputs(g *onnxpb.GraphProto) ([]PastInput, error) {
	var pasts []PastInput
	for _, in := range g.GetInput() {
		name := in.GetName()
		if !isPastInput(name) || onnx.Initializer(g, name) != nil {
			continue
		}
		_, dims, _ := onnx.TensorType(in)
		if len(dims) != 4 {
			return nil, fmt.Errorf("KV-cache input %q has rank %d, want 4", name, len(dims))
		}
		pd := make([]int64, 4)
		for i, d := range dims {
			pd[i] = -1
			if d.IsKnown() {
				pd[i] = d.Value
			}
		}
		if pd[1] < 0 || pd[3] < 0 {
			return nil, fmt.Errorf("KV-cache input %q needs static heads and head_dim, has %v", name, dims)
		}
		pasts = append(pasts, PastInput{Name: name, Dims: pd})
	}
	return pasts, nil
}

// addEmptyPast feeds every KV-cache input an empty past: float32 [batch, heads, 0, head_dim].
func AddEmptyPast(feeds map[string]*ort.Tensor, pasts []PastInput, batch int64) {
	for _, p := range pasts {
		feeds[p.Name] = ort.MustFloatTensor([]int64{batch, p.Dims[1], 0, p.Dims[3]}, nil)
	}
}

// Batch holds the model inputs of a right-padded batch.
type Batch struct {
	IDs, AttentionMask, PositionIDs, CompletionMask *ort.Tensor
}

// BatchInputs right-pads rows to the longest and builds input_ids, attention_mask,
// position_ids (0..len-1) and the completion mask (Sequence.Counts: the row's Mask when
// it has one, else the tokens from CompletionStart on).
func BatchInputs(rows []Sequence, padID int64) Batch { return PaddedBatchInputs(rows, padID, 1) }

// paddedBatchInputs is BatchInputs with the width rounded up to a multiple of multiple.
func PaddedBatchInputs(rows []Sequence, padID int64, multiple int) Batch {
	width := 0
	for _, r := range rows {
		width = max(width, len(r.IDs))
	}
	width = padWidth(width, multiple)
	n := len(rows) * width
	shape := []int64{int64(len(rows)), int64(width)}
	ids := make([]int64, n)
	mask := make([]int64, n)
	pos := make([]int64, n)
	comp := make([]float32, n)
	for i, r := range rows {
		base := i * width
		for t := 0; t < width; t++ {
			pos[base+t] = int64(t)
			if t < len(r.IDs) {
				ids[base+t] = r.IDs[t]
				mask[base+t] = 1
				if r.Counts(t) {
					comp[base+t] = 1
				}
			} else {
				ids[base+t] = padID
			}
		}
	}
	return Batch{
		IDs:            ort.MustInt64Tensor(shape, ids),
		AttentionMask:  ort.MustInt64Tensor(shape, mask),
		PositionIDs:    ort.MustInt64Tensor(shape, pos),
		CompletionMask: ort.MustFloatTensor(shape, comp),
	}
}

// LengthBatches groups item indices into batches of at most size items with similar
// lengths (longest first), which cuts padding. length(i) is item i's padded length.
func LengthBatches(n, size int, length func(i int) int) [][]int {
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return length(order[a]) > length(order[b]) })
	var out [][]int
	for start := 0; start < n; start += size {
		out = append(out, order[start:min(start+size, n)])
	}
	return out
}

// StaticVocabSize reads a causal LM's vocabulary size from its graph without running it:
// the logits' last dimension when the export fixes it, else the width of the final
// projection's weight. It returns 0 when neither says (ids are then not checked up front).
func StaticVocabSize(m *onnx.Model) int64 {
	g := m.Graph()
	if _, dims, ok := onnx.TensorType(onnx.Output(g, LogitsOutput)); ok && len(dims) == 3 && dims[2].IsKnown() {
		return dims[2].Value
	}
	head, ok := FindLMHead(g)
	if !ok {
		return 0
	}
	if w := onnx.Initializer(g, head.Weight); w != nil {
		return w.GetDims()[1]
	}
	// A tied head: the Transpose of the [vocab, hidden] embedding.
	if tr := onnx.Producers(g)[head.Weight]; tr != nil {
		if w := onnx.Initializer(g, tr.GetInput()[0]); w != nil {
			return w.GetDims()[0]
		}
	}
	return 0
}
