package rollout

import (
	"fmt"
	"ortalign/onnx"
	"ortalign/pipeline/engine"
	"ortalign/pipeline/generate"
	"ortalign/pipeline/lm"
)

// PolicyGenerator opens a generator over the engine's forward (ForwardModel, with its ties;
// without PPO's value head, which sampling does not read) fed the live parameter buffers:
// each Generate samples from the current weights, with no new session or model copy per
// optimizer step. o's ParamInputs and Ties are set here.
func PolicyGenerator[T any](e *engine.Engine[T], o generate.GeneratorOptions) (*generate.Generator, error) {
	m := e.ForwardModel()
	if onnx.Output(m.Graph(), lm.ValuesOutput) != nil {
		m = m.Clone()
		lm.RemoveValueHead(m)
	}
	names, _, _ := policyParams(e)
	o.ParamInputs, o.Ties = names, e.Ties()
	gen, err := generate.NewGenerator(e.Path(), m, o)
	if err != nil {
		return nil, err
	}
	if err := feedGenerator(e, gen); err != nil {
		gen.Close()
		return nil, err
	}
	return gen, nil
}

// feedGenerator points gen (NewGenerator's) at the live parameter buffers.
func feedGenerator[T any](e *engine.Engine[T], gen *generate.Generator) error {
	names, shapes, params := policyParams(e)
	if err := gen.SetParams(names, shapes, params); err != nil {
		return fmt.Errorf("%s: %w", e.Path(), err)
	}
	return nil
}

// policyParams are the trainable parameters the policy's logits read: all but a value
// head's.
func policyParams[T any](e *engine.Engine[T]) (names []string, shapes [][]int64, params [][]float32) {
	for i, name := range e.Trainable() {
		if name != lm.ValueHeadWeightName {
			names, shapes, params = append(names, name), append(shapes, e.ParamShapes()[i]), append(params, e.Params()[i])
		}
	}
	return names, shapes, params
}
