package lm

import (
	"fmt"
	"ortalign/onnx"
	"ortalign/onnx/onnxpb"
	"strings"
)

// Names of the value head AddValueHead grafts on a policy.
const (
	// ValueHeadWeightName is the value head's weight, float32 [hidden, 1] (no bias, as
	// transformers' score head), on the policy's final hidden state.
	ValueHeadWeightName = "ortalign.value_head.weight"
	// ValuesOutput is float32 [batch, seq]: the value head at every position p, the value
	// of the state whose next token is p + 1 (TRL's full_value).
	ValuesOutput = "ortalign_values"
)

// AddValueHead returns a copy of the causal LM m with a value head: a float32 [hidden, 1]
// weight ValueHeadWeightName applied to the final hidden state (the LM head's input) at
// every position, output ValuesOutput [batch, seq]. The weight is init when given (say, a
// reward model's score head made by ortalign from the same base: RewardHeadWeights), else
// drawn from normal(0, 0.02) with seed (transformers' fresh score head). The policy's
// outputs are unchanged; RemoveValueHead takes the head off again.
func AddValueHead(m *onnx.Model, init []float32, seed int64) (*onnx.Model, error) {
	m = m.Clone()
	g := m.Graph()
	head, ok := FindLMHead(g)
	if !ok {
		return nil, fmt.Errorf("no final projection logits = hidden · W found: cannot place a value head")
	}
	hidden := hiddenSize(g, head)
	if hidden <= 0 {
		return nil, fmt.Errorf("cannot read the hidden size from the LM head's weight %q", head.Weight)
	}
	if init == nil {
		init = initScoreWeight(int(hidden), RewardHeadOptions{Seed: seed})
	}
	if int64(len(init)) != hidden {
		return nil, fmt.Errorf("value head: %d initial weights for a hidden size of %d", len(init), hidden)
	}
	if onnx.Initializer(g, ValueHeadWeightName) != nil || onnx.Output(g, ValuesOutput) != nil {
		return nil, fmt.Errorf("model already has a value head")
	}
	if err := onnx.AddInitializer(g, onnx.FloatTensor(ValueHeadWeightName, []int64{hidden, 1}, append([]float32(nil), init...))); err != nil {
		return nil, err
	}
	b := onnx.NewBuilder(g, m.Opset(""), valueHeadPrefix)
	h := head.Hidden
	if t, _, _ := onnx.TensorType(onnx.Output(g, LogitsOutput)); t != onnx.Float {
		h = b.Cast(h, onnx.Float)
	}
	v := b.Squeeze(b.MatMul(h, ValueHeadWeightName), []int64{2})
	AddIdentity(g, v, ValuesOutput)
	return m, onnx.AddOutput(g, ValuesOutput, onnx.Float, []onnx.Dim{onnx.DimParam("batch"), onnx.DimParam("sequence")})
}

// RemoveValueHead takes AddValueHead's head off m (in place): the output, its nodes and
// initializers. The rest of the graph is left as it was.
func RemoveValueHead(m *onnx.Model) {
	g := m.Graph()
	onnx.RemoveOutput(g, ValuesOutput)
	nodes, inits := ValueHeadParts(g)
	drop := map[*onnxpb.NodeProto]bool{}
	for _, n := range nodes {
		drop[n] = true
	}
	kept := g.Node[:0]
	for _, n := range g.GetNode() {
		if !drop[n] {
			kept = append(kept, n)
		}
	}
	g.Node = kept
	for _, t := range inits {
		onnx.RemoveInitializer(g, t.GetName())
	}
}

// valueHeadPrefix names AddValueHead's nodes and constants.
const valueHeadPrefix = "ortalign_value"

// valueHeadParts returns the nodes and initializers AddValueHead added to g.
func ValueHeadParts(g *onnxpb.GraphProto) ([]*onnxpb.NodeProto, []*onnxpb.TensorProto) {
	var nodes []*onnxpb.NodeProto
	for _, n := range g.GetNode() {
		if strings.HasPrefix(n.GetName(), valueHeadPrefix+"/") || n.GetName() == ValuesOutput+"_identity" {
			nodes = append(nodes, n)
		}
	}
	var inits []*onnxpb.TensorProto
	for _, t := range g.GetInitializer() {
		if strings.HasPrefix(t.GetName(), valueHeadPrefix+"/") || t.GetName() == ValueHeadWeightName {
			inits = append(inits, t)
		}
	}
	return nodes, inits
}

// RewardHeadWeights returns the score head of a reward model that ortalign grafted on a
// causal LM (NewRewardGraph), [hidden] values, to start a value head from; false for
// other reward models.
func RewardHeadWeights(rm *onnx.Model) ([]float32, bool) {
	kind := ""
	for _, p := range rm.Proto().GetMetadataProps() {
		if p.GetKey() == RewardHeadMetadata {
			kind = p.GetValue()
		}
	}
	if kind != string(RewardHeadGrafted) {
		return nil, false
	}
	w := onnx.Initializer(rm.Graph(), ScoreWeightName)
	if w == nil || len(w.GetDims()) != 2 || w.GetDims()[1] != 1 {
		return nil, false
	}
	v, err := onnx.TensorFloats(w)
	if err != nil {
		return nil, false
	}
	return v, true
}
