package pipeline

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
	inputIDs      = "input_ids"
	attentionMask = "attention_mask"
	positionIDs   = "position_ids"
	logitsOutput  = "logits"
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
	g := m.Graph()
	if onnx.Output(g, logitsOutput) == nil {
		return "", fmt.Errorf("model has no output %q (outputs: %s); a causal LM must output logits [batch, seq, vocab]",
			logitsOutput, strings.Join(valueNames(g.GetOutput()), ", "))
	}
	if onnx.Input(g, inputIDs) == nil {
		return "", fmt.Errorf("model has no input %q (inputs: %s)", inputIDs, strings.Join(valueNames(g.GetInput()), ", "))
	}
	if err := onnx.AddInput(g, CompletionMaskInput, onnx.Float, []onnx.Dim{onnx.DimParam("batch"), onnx.DimParam("sequence")}); err != nil {
		return "", err
	}
	b := onnx.NewBuilder(g, m.Opset(""), "ortalign_logp")
	logitsType, _, _ := onnx.TensorType(onnx.Output(g, logitsOutput))
	var seqLogps, vocab string
	if head, ok := findLMHead(g); ok && allowSparse {
		seqLogps, vocab = sparseSequenceLogps(b, head, logitsType, inputIDs, CompletionMaskInput)
	} else {
		logits := logitsOutput
		if logitsType != onnx.Float {
			logits = b.Cast(logits, onnx.Float)
		}
		seqLogps = sequenceLogps(b, logits, inputIDs, CompletionMaskInput)
		vocab = b.Slice(b.Shape(logitsOutput), []int64{2}, []int64{3}, []int64{0}, nil)
	}
	var inputs []string
	for _, in := range g.GetInput() {
		inputs = append(inputs, in.GetName())
	}
	g.Output = nil
	addIdentity(g, seqLogps, SequenceLogpsOutput)
	if err := onnx.AddOutput(g, SequenceLogpsOutput, onnx.Float, []onnx.Dim{onnx.DimParam("batch")}); err != nil {
		return "", err
	}
	addIdentity(g, vocab, VocabSizeOutput)
	if err := onnx.AddOutput(g, VocabSizeOutput, onnx.Int64, []onnx.Dim{onnx.DimValue(1)}); err != nil {
		return "", err
	}
	onnx.Prune(g, inputs)
	return SequenceLogpsOutput, nil
}

// lmHead is a causal LM's final projection: logits = hidden · weight (+ bias).
type lmHead struct {
	hidden, weight, bias string
}

// findLMHead recognises logits = MatMul(hidden, W) or Add(MatMul(hidden, W), b) with a
// 2-D W: an initializer, or the Transpose of one (a tied embedding).
func findLMHead(g *onnxpb.GraphProto) (lmHead, bool) {
	producers := onnx.Producers(g)
	n := producers[logitsOutput]
	var head lmHead
	if n != nil && n.GetOpType() == "Add" && len(n.GetInput()) == 2 {
		for i, in := range n.GetInput() {
			mm, bias := producers[in], n.GetInput()[1-i]
			if t := onnx.Initializer(g, bias); mm != nil && mm.GetOpType() == "MatMul" && t != nil && len(t.GetDims()) == 1 {
				n, head.bias = mm, bias
				break
			}
		}
	}
	if n == nil || n.GetOpType() != "MatMul" || len(n.GetInput()) != 2 {
		return lmHead{}, false
	}
	head.hidden, head.weight = n.GetInput()[0], n.GetInput()[1]
	w := onnx.Initializer(g, head.weight)
	if tr := producers[head.weight]; w == nil && tr != nil && tr.GetOpType() == "Transpose" {
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
// sequence's N log-probs. Returns the [batch] log-probs and the [1] vocabulary size.
func sparseSequenceLogps(b *onnx.Builder, head lmHead, logitsType onnx.DataType, ids, mask string) (string, string) {
	flat := b.ConstInt64s([]int64{-1})
	rows := b.Reshape(b.Op("NonZero", []string{b.Reshape(shiftLeft(b, mask), flat)}), flat) // [N] in batch*seq
	seqLen := b.Squeeze(b.Slice(b.Shape(ids), []int64{1}, []int64{2}, []int64{0}, nil), []int64{0})
	batch := b.Squeeze(b.Slice(b.Shape(ids), []int64{0}, []int64{1}, []int64{0}, nil), []int64{0})
	width := b.Slice(b.Shape(head.hidden), []int64{2}, []int64{3}, []int64{0}, nil)
	hidden := b.Gather(b.Reshape(head.hidden, b.Concat(0, flat, width)), rows, 0) // [N, hidden]
	logits := b.MatMul(hidden, head.weight)
	if head.bias != "" {
		logits = b.Add(logits, head.bias)
	}
	if logitsType != onnx.Float {
		logits = b.Cast(logits, onnx.Float)
	}
	targets := b.Gather(b.Reshape(shiftLeft(b, ids), flat), rows, 0) // [N]
	tok := b.Squeeze(b.GatherElements(b.LogSoftmax(logits, -1), b.Unsqueeze(targets, []int64{1}), 1), []int64{1})
	rowOf := b.Div(rows, seqLen)
	one := b.ConstScalarInt64(1)
	zero := b.ConstScalarInt64(0)
	owner := b.Cast(b.Equal(b.Unsqueeze(b.Op("Range", []string{zero, batch, one}), []int64{1}), b.Unsqueeze(rowOf, []int64{0})), onnx.Float)
	vocab := b.Slice(b.Shape(logits), []int64{1}, []int64{2}, []int64{0}, nil)
	return b.MatMul(owner, tok), vocab
}

// sequenceLogps emits sum_t mask[t] * log softmax(logits[t-1])[ids[t]] over t >= 1, and
// returns the name of the [batch] result, from full [batch, seq, vocab] logits. The shift
// by one is applied to the small ids and mask (next-token targets, with a masked dummy at
// the last position) rather than to the logits, which would cost a copy forward and a
// pad in the backward pass.
func sequenceLogps(b *onnx.Builder, logits, ids, mask string) string {
	next := shiftLeft(b, ids)
	nextMask := shiftLeft(b, mask)
	lp := b.LogSoftmax(logits, -1)
	tok := b.Squeeze(b.GatherElements(lp, b.Unsqueeze(next, []int64{2}), 2), []int64{2})
	return b.ReduceSum(b.Mul(tok, nextMask), []int64{1}, false)
}

// shiftLeft returns x[:, 1:] followed by a column of zeros: [batch, seq] -> [batch, seq].
func shiftLeft(b *onnx.Builder, x string) string {
	const end = math.MaxInt64
	first := b.Slice(x, []int64{0}, []int64{1}, []int64{1}, nil)
	zeroCol := b.Sub(first, first)
	return b.Concat(1, b.Slice(x, []int64{1}, []int64{end}, []int64{1}, nil), zeroCol)
}

func addIdentity(g *onnxpb.GraphProto, from, to string) {
	g.Node = append(g.Node, &onnxpb.NodeProto{
		Name: proto.String(to + "_identity"), OpType: proto.String("Identity"),
		Input: []string{from}, Output: []string{to},
	})
}

func valueNames(vs []*onnxpb.ValueInfoProto) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = v.GetName()
	}
	return out
}

// Sequence is one tokenized row: its ids and the index of its first completion token.
type Sequence struct {
	IDs             []int64
	CompletionStart int
}

// CompletionTokens is the number of tokens whose log-probs count.
func (s Sequence) CompletionTokens() int { return len(s.IDs) - s.CompletionStart }

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
	pasts   []pastInput
}

// pastInput is a KV-cache input fed as an empty past: [batch, heads, 0, head_dim].
type pastInput struct {
	name string
	dims []int64 // -1 where dynamic
}

// LoadLogProbModel loads the causal LM at path and prepares it for scoring.
func LoadLogProbModel(path string, o ModelOptions) (*LogProbModel, error) {
	m, err := onnx.Load(path)
	if err != nil {
		return nil, err
	}
	return NewLogProbModel(path, m, o)
}

// NewLogProbModel prepares an already loaded model; path only labels errors.
func NewLogProbModel(path string, m *onnx.Model, o ModelOptions) (*LogProbModel, error) {
	m = m.Clone()
	lm := &LogProbModel{Path: path, opts: o}
	g := m.Graph()
	if err := checkInputs(g); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	lm.hasMask = onnx.Input(g, attentionMask) != nil
	lm.hasPos = onnx.Input(g, positionIDs) != nil
	var err error
	if lm.pasts, err = pastInputs(g); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if _, err := AppendLogProbHead(m); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	lm.sess, err = newModelSession(m, []string{SequenceLogpsOutput, VocabSizeOutput}, ort.Options{Threads: o.Threads})
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
		return nil, fmt.Errorf("%s: batch of %d sequences of up to %d tokens (longer than the model's positions? lower --max-length): %w", lm.Path, len(rows), width, err)
	}
	res := make([]float64, len(rows))
	for i, v := range out[SequenceLogpsOutput].F32 {
		res[i] = float64(v)
	}
	return res, nil
}

func (lm *LogProbModel) run(rows []Sequence) (map[string]*ort.Tensor, error) {
	in := BatchInputs(rows, lm.opts.PadID)
	feeds := map[string]*ort.Tensor{inputIDs: in.IDs, CompletionMaskInput: in.CompletionMask}
	if lm.hasMask {
		feeds[attentionMask] = in.AttentionMask
	}
	if lm.hasPos {
		feeds[positionIDs] = in.PositionIDs
	}
	addEmptyPast(feeds, lm.pasts, int64(len(rows)))
	return lm.sess.Run(feeds, nil)
}

// checkInputs rejects a model with graph inputs ortalign cannot feed.
func checkInputs(g *onnxpb.GraphProto) error {
	for _, in := range g.GetInput() {
		name := in.GetName()
		if onnx.Initializer(g, name) != nil || name == inputIDs || name == attentionMask || name == positionIDs || isPastInput(name) {
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
func pastInputs(g *onnxpb.GraphProto) ([]pastInput, error) {
	var pasts []pastInput
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
		pasts = append(pasts, pastInput{name: name, dims: pd})
	}
	return pasts, nil
}

// addEmptyPast feeds every KV-cache input an empty past: float32 [batch, heads, 0, head_dim].
func addEmptyPast(feeds map[string]*ort.Tensor, pasts []pastInput, batch int64) {
	for _, p := range pasts {
		feeds[p.name] = &ort.Tensor{Shape: []int64{batch, p.dims[1], 0, p.dims[3]}, F32: []float32{}}
	}
}

// Batch holds the model inputs of a right-padded batch.
type Batch struct {
	IDs, AttentionMask, PositionIDs, CompletionMask *ort.Tensor
}

// BatchInputs right-pads rows to the longest and builds input_ids, attention_mask,
// position_ids (0..len-1) and the completion mask.
func BatchInputs(rows []Sequence, padID int64) Batch {
	width := 0
	for _, r := range rows {
		width = max(width, len(r.IDs))
	}
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
				if t >= r.CompletionStart {
					comp[base+t] = 1
				}
			} else {
				ids[base+t] = padID
			}
		}
	}
	return Batch{
		IDs:            &ort.Tensor{Shape: shape, I64: ids},
		AttentionMask:  &ort.Tensor{Shape: shape, I64: mask},
		PositionIDs:    &ort.Tensor{Shape: shape, I64: pos},
		CompletionMask: &ort.Tensor{Shape: shape, F32: comp},
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
