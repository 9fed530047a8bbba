package pipeline

import (
	"fmt"

	"ortalign/onnx"
)

// ForwardModel returns the causal LM whose initializers Trainable names, as the
// training graph reads them: with an adapter (TrainConfig.Adapter), the adapted model
// (its adapter tensors exist only there); else the user's model, whose transposed
// copies (Ties) the training graph reads from their sources. It is the engine's own: do
// not change it.
func (e *Engine[T]) ForwardModel() *onnx.Model {
	if e.adapted != nil {
		return e.adapted.Model
	}
	return e.base
}

// ParamShapes returns the shapes of the parameter buffers, in Trainable order.
func (e *Engine[T]) ParamShapes() [][]int64 { return e.shapes }

// NewGenerator opens a generator over the engine's forward (ForwardModel, with its ties;
// without PPO's value head, which sampling does not read) fed the live parameter buffers:
// each Generate samples from the current weights, with no new session or model copy per
// optimizer step. o's ParamInputs and Ties are set here.
func (e *Engine[T]) NewGenerator(o GeneratorOptions) (*Generator, error) {
	m := e.ForwardModel()
	if onnx.Output(m.Graph(), ValuesOutput) != nil {
		m = m.Clone()
		RemoveValueHead(m)
	}
	names, _, _ := e.policyParams()
	o.ParamInputs, o.Ties = names, e.graph.Ties
	gen, err := NewGenerator(e.path, m, o)
	if err != nil {
		return nil, err
	}
	if err := e.feedGenerator(gen); err != nil {
		gen.Close()
		return nil, err
	}
	return gen, nil
}

// feedGenerator points gen (NewGenerator's) at the live parameter buffers.
func (e *Engine[T]) feedGenerator(gen *Generator) error {
	names, shapes, params := e.policyParams()
	if err := gen.SetParams(names, shapes, params); err != nil {
		return fmt.Errorf("%s: %w", e.path, err)
	}
	return nil
}

// policyParams are the trainable parameters the policy's logits read: all but a value
// head's.
func (e *Engine[T]) policyParams() (names []string, shapes [][]int64, params [][]float32) {
	for i, name := range e.names {
		if name != ValueHeadWeightName {
			names, shapes, params = append(names, name), append(shapes, e.shapes[i]), append(params, e.params[i])
		}
	}
	return names, shapes, params
}
