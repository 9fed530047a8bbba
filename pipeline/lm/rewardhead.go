package lm

import (
	"fmt"
	"math/rand"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
)

// Names of the reward model's head and output.
const (
	// RewardOutput is a reward model's float32 [batch] output: one scalar reward a row.
	RewardOutput = "rewards"
	// ScoreWeightName is the grafted scalar head's weight, float32 [hidden, 1]: the
	// transpose of transformers' score.weight [1, hidden] (the same values).
	ScoreWeightName = "score.weight"
	// DefaultRewardInitStd is transformers' initializer_range, the standard deviation of
	// a freshly initialised sequence-classification head.
	DefaultRewardInitStd = 0.02
)

// Metadata properties a reward graph carries.
const (
	// RewardVocabMetadata is the base model's vocabulary size, so that ids can be
	// checked against a reward model that no longer computes logits.
	RewardVocabMetadata = "ortalign.vocab_size"
	// RewardHeadMetadata records how the reward head was made (RewardHeadKind).
	RewardHeadMetadata = "ortalign.reward_head"
)

// RewardHeadKind says how NewRewardGraph obtained a model's rewards.
type RewardHeadKind string

const (
	// RewardHeadGrafted: a causal LM; a new scalar head reads the final hidden state of
	// each row's last real token, and the LM head is pruned away.
	RewardHeadGrafted RewardHeadKind = "grafted"
	// RewardHeadExported: a sequence-classification export with a [batch, 1] output,
	// used as is.
	RewardHeadExported RewardHeadKind = "sequence classification"
	// RewardHeadExisting: already a reward model (a rewards [batch] output).
	RewardHeadExisting RewardHeadKind = "reward model"
)

// RewardHeadOptions configure the grafted head.
type RewardHeadOptions struct {
	Seed    int64   // seed of the head's initial weights
	InitStd float64 // their standard deviation; 0 means DefaultRewardInitStd
}

// RewardGraph is a reward graph and how it was made.
type RewardGraph struct {
	Model *onnx.Model
	Kind  RewardHeadKind
	// Weight is the grafted head's initializer (RewardHeadGrafted only).
	Weight string
}

// NewRewardGraph turns a model into a reward model: a graph whose only inputs are
// input_ids and attention_mask (int64 [batch, sequence], right-padded) and whose only
// output is rewards, float32 [batch].
//
//   - A model with a float [batch] rewards output is taken as it is (a reward.onnx this
//     function wrote).
//   - A sequence-classification export — a float output of shape [batch, 1], such as
//     transformers' logits with num_labels=1 — is used as is: rewards is that output,
//     flattened.
//   - Any other causal LM gets a scalar head, as transformers' *ForSequenceClassification
//     with num_labels=1: a new float32 weight [hidden, 1] (no bias), drawn from
//     normal(0, InitStd) with Seed, applied to the final hidden state (the input of the
//     LM head's MatMul) at each row's last real token, index sum(attention_mask) − 1 (right
//     padding). The LM head and whatever only it needed are pruned away.
//
// Inputs other than input_ids and attention_mask are fed inside the graph, so the
// result takes what any scorer has: position_ids become 0..sequence−1 on every row (the
// positions BatchInputs feeds, and transformers' default), and a KV-cache past is an
// empty [batch, heads, 0, head_dim] tensor. A model without attention_mask gets one,
// read by the pooling only. The base model's vocabulary size and the head's kind are
// recorded as metadata properties (RewardVocabMetadata, RewardHeadMetadata).
func NewRewardGraph(m *onnx.Model, o RewardHeadOptions) (*RewardGraph, error) {
	m = m.Clone()
	g := m.Graph()
	if err := CheckInputs(g); err != nil {
		return nil, err
	}
	if onnx.Input(g, InputIDs) == nil {
		return nil, fmt.Errorf("model has no input %q (inputs: %s)", InputIDs, strings.Join(ValueNames(g.GetInput()), ", "))
	}
	res := &RewardGraph{Model: m}
	vocab := RewardVocab(m)
	opset := m.Opset("")
	if err := feedInternally(g, opset); err != nil {
		return nil, err
	}
	b := onnx.NewBuilder(g, opset, "ortalign_reward")
	var rewards string
	if t, dims, ok := onnx.TensorType(onnx.Output(g, RewardOutput)); ok && t == onnx.Float && len(dims) == 1 {
		res.Kind = RewardHeadExisting
	} else if out, ok := classificationOutput(g); ok {
		res.Kind = RewardHeadExported
		if onnx.Names(g)[RewardOutput] {
			// A value of the export already has the name the result's output takes.
			fresh := onnx.UniqueName(g, RewardOutput)
			renameValue(g, RewardOutput, fresh)
			if out == RewardOutput {
				out = fresh
			}
		}
		rewards = b.Reshape(out, b.ConstInt64s([]int64{-1}))
	} else {
		head, ok := FindLMHead(g)
		if !ok {
			return nil, fmt.Errorf("no final projection logits = hidden · W found, and no [batch, 1] output (outputs: %s): cannot place a reward head", strings.Join(ValueNames(g.GetOutput()), ", "))
		}
		hidden := hiddenSize(g, head)
		if hidden <= 0 {
			return nil, fmt.Errorf("cannot read the hidden size from the LM head's weight %q", head.Weight)
		}
		res.Kind = RewardHeadGrafted
		if vocab == 0 {
			vocab = StaticVocabSize(m)
		}
		res.Weight = onnx.UniqueName(g, ScoreWeightName)
		if err := onnx.AddInitializer(g, onnx.FloatTensor(res.Weight, []int64{hidden, 1}, initScoreWeight(int(hidden), o))); err != nil {
			return nil, err
		}
		if onnx.Input(g, AttentionMask) == nil {
			if err := onnx.AddInput(g, AttentionMask, onnx.Int64, []onnx.Dim{onnx.DimParam("batch"), onnx.DimParam("sequence")}); err != nil {
				return nil, err
			}
		}
		rewards = b.Reshape(b.MatMul(LastTokenHidden(b, head.Hidden, hidden), res.Weight), b.ConstInt64s([]int64{-1}))
	}
	if rewards != "" {
		onnx.RemoveOutput(g, RewardOutput)
		AddIdentity(g, rewards, RewardOutput)
	}
	g.Output = []*onnxpb.ValueInfoProto{onnx.TensorValueInfo(RewardOutput, onnx.Float, []onnx.Dim{onnx.DimParam("batch")})}
	if err := onnx.TopologicalSort(g); err != nil {
		return nil, err
	}
	onnx.Prune(g, []string{InputIDs, AttentionMask})
	// input_ids then attention_mask, nothing else.
	ids, mask := onnx.Input(g, InputIDs), onnx.Input(g, AttentionMask)
	if mask == nil {
		if err := onnx.AddInput(g, AttentionMask, onnx.Int64, []onnx.Dim{onnx.DimParam("batch"), onnx.DimParam("sequence")}); err != nil {
			return nil, err
		}
		mask = onnx.Input(g, AttentionMask)
	}
	if len(g.GetInput()) != 2 {
		return nil, fmt.Errorf("reward graph has inputs %s, want input_ids and attention_mask", strings.Join(ValueNames(g.GetInput()), ", "))
	}
	g.Input = []*onnxpb.ValueInfoProto{ids, mask}
	if vocab > 0 {
		setMetadata(m, RewardVocabMetadata, strconv.FormatInt(vocab, 10))
	}
	setMetadata(m, RewardHeadMetadata, string(res.Kind))
	return res, nil
}

// classificationOutput finds a float output of shape [batch, 1].
func classificationOutput(g *onnxpb.GraphProto) (string, bool) {
	for _, out := range g.GetOutput() {
		t, dims, ok := onnx.TensorType(out)
		if ok && t.IsFloat() && len(dims) == 2 && dims[1].IsKnown() && dims[1].Value == 1 && !dims[0].IsKnown() {
			if t != onnx.Float {
				return "", false
			}
			return out.GetName(), true
		}
	}
	return "", false
}

// hiddenSize is the width of the LM head's input: the rows of W [hidden, vocab], or the
// columns of the [vocab, hidden] embedding a tied head transposes.
func hiddenSize(g *onnxpb.GraphProto, head lmHead) int64 {
	if w := onnx.Initializer(g, head.Weight); w != nil {
		return w.GetDims()[0]
	}
	if tr := onnx.Producers(g)[head.Weight]; tr != nil {
		if w := onnx.Initializer(g, tr.GetInput()[0]); w != nil {
			return w.GetDims()[1]
		}
	}
	return 0
}

// initScoreWeight draws the head's weights from normal(0, std) with the seed.
func initScoreWeight(hidden int, o RewardHeadOptions) []float32 {
	std := o.InitStd
	if std == 0 {
		std = DefaultRewardInitStd
	}
	r := rand.New(rand.NewSource(o.Seed))
	w := make([]float32, hidden)
	for i := range w {
		w[i] = float32(r.NormFloat64() * std)
	}
	return w
}

// lastTokenHidden gathers hidden [batch, seq, width] at each row's last real token,
// sum(attention_mask) − 1 (0 for a row without one): [batch, width] float32.
func LastTokenHidden(b *onnx.Builder, hidden string, width int64) string {
	mask := b.Cast(AttentionMask, onnx.Int64)
	last := b.Max(b.Sub(b.ReduceSum(mask, []int64{1}, false), b.ConstScalarInt64(1)), b.ConstScalarInt64(0)) // [batch]
	batch := b.Squeeze(b.Slice(b.Shape(InputIDs), []int64{0}, []int64{1}, []int64{0}, nil), []int64{0})
	seq := b.Squeeze(b.Slice(b.Shape(InputIDs), []int64{1}, []int64{2}, []int64{0}, nil), []int64{0})
	rowStart := b.Mul(b.Op("Range", []string{b.ConstScalarInt64(0), batch, b.ConstScalarInt64(1)}), seq)
	flat := b.Reshape(hidden, b.ConstInt64s([]int64{-1, width}))
	pooled := b.Gather(flat, b.Add(rowStart, last), 0)
	return b.Cast(pooled, onnx.Float)
}

// feedInternally replaces the graph inputs other than input_ids and attention_mask by
// values computed inside the graph: position_ids 0..sequence−1 on every row, and an
// empty past for every KV-cache input.
func feedInternally(g *onnxpb.GraphProto, opset int64) error {
	b := onnx.NewBuilder(g, opset, "ortalign_reward_in")
	var drop []string
	for _, in := range g.GetInput() {
		name := in.GetName()
		if onnx.Initializer(g, name) != nil || name == InputIDs || name == AttentionMask {
			continue
		}
		t, dims, _ := onnx.TensorType(in)
		switch {
		case name == PositionIDs:
			seq := b.Slice(b.Shape(InputIDs), []int64{1}, []int64{2}, []int64{0}, nil)
			r := b.Op("Range", []string{b.ConstScalarInt64(0), b.Squeeze(seq, []int64{0}), b.ConstScalarInt64(1)})
			pos := b.Expand(b.Unsqueeze(r, []int64{0}), b.Shape(InputIDs))
			if t != onnx.Int64 && t != onnx.Undefined {
				pos = b.Cast(pos, t)
			}
			AddIdentity(g, pos, name)
		case isPastInput(name):
			if len(dims) != 4 || !dims[1].IsKnown() || !dims[3].IsKnown() {
				return fmt.Errorf("KV-cache input %q needs static heads and head_dim, has %v", name, dims)
			}
			batch := b.Slice(b.Shape(InputIDs), []int64{0}, []int64{1}, []int64{0}, nil)
			shape := b.Concat(0, batch, b.ConstInt64s([]int64{dims[1].Value, 0, dims[3].Value}))
			empty := b.Op("ConstantOfShape", []string{shape}, onnx.AttrTensor("value", onnx.FloatTensor("", []int64{1}, []float32{0})))
			if t != onnx.Float && t != onnx.Undefined {
				empty = b.Cast(empty, t)
			}
			AddIdentity(g, empty, name)
		default:
			return fmt.Errorf("unsupported model input %q", name)
		}
		drop = append(drop, name)
	}
	for _, name := range drop {
		onnx.RemoveInput(g, name)
	}
	return nil
}

// renameValue renames the value old to new in g's nodes, outputs and value infos.
func renameValue(g *onnxpb.GraphProto, old, new string) {
	for _, n := range g.GetNode() {
		for i, in := range n.GetInput() {
			if in == old {
				n.Input[i] = new
			}
		}
		for i, out := range n.GetOutput() {
			if out == old {
				n.Output[i] = new
			}
		}
	}
	for _, vis := range [][]*onnxpb.ValueInfoProto{g.GetOutput(), g.GetValueInfo()} {
		for _, vi := range vis {
			if vi.GetName() == old {
				vi.Name = proto.String(new)
			}
		}
	}
}

// setMetadata sets a model metadata property.
func setMetadata(m *onnx.Model, key, value string) {
	for _, p := range m.Proto().GetMetadataProps() {
		if p.GetKey() == key {
			p.Value = proto.String(value)
			return
		}
	}
	m.Proto().MetadataProps = append(m.Proto().MetadataProps, &onnxpb.StringStringEntryProto{Key: proto.String(key), Value: proto.String(value)})
}

// rewardVocab reads RewardVocabMetadata (0 when absent).
func RewardVocab(m *onnx.Model) int64 {
	for _, p := range m.Proto().GetMetadataProps() {
		if p.GetKey() == RewardVocabMetadata {
			v, _ := strconv.ParseInt(p.GetValue(), 10, 64)
			return v
		}
	}
	return 0
}
