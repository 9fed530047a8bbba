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

// NewGenerator opens a generator over the engine's forward (ForwardModel, with its ties)
// fed the live parameter buffers: each Generate samples from the current weights, with no
// new session or model copy per optimizer step. o's ParamInputs and Ties are set here.
func (e *Engine[T]) NewGenerator(o GeneratorOptions) (*Generator, error) {
	o.ParamInputs, o.Ties = e.names, e.graph.Ties
	gen, err := NewGenerator(e.path, e.ForwardModel(), o)
	if err != nil {
		return nil, err
	}
	if err := gen.SetParams(e.names, e.shapes, e.params); err != nil {
		gen.Close()
		return nil, fmt.Errorf("%s: %w", e.path, err)
	}
	return gen, nil
}
