package engine

import (
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

// Path is the model file the engine was built from.
func (e *Engine[T]) Path() string { return e.path }

// Config is the engine's configuration.
func (e *Engine[T]) Config() TrainConfig { return e.cfg }

// TrainingGraph is the generated training graph the engine runs.
func (e *Engine[T]) TrainingGraph() *TrainingGraph { return e.graph }

// Optimizer is the engine's optimizer (its step and moments).
func (e *Engine[T]) Optimizer() *Optimizer { return e.opt }
