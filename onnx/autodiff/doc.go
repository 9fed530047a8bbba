// Package autodiff differentiates ONNX graphs in reverse mode and emits the
// gradient computation as ordinary ONNX operators, so that one plain ONNX
// Runtime inference session computes a loss, metrics and the gradient of the
// loss with respect to every trainable parameter (ONNX Runtime's training
// API is absent from its inference builds).
//
// Build takes a forward model whose graph has a scalar float loss output and
// a list of trainable initializers, and returns a training model:
//
//   - the trainable initializers become graph inputs (the caller feeds the
//     current weights each step); frozen initializers stay constants;
//   - the outputs are the loss, the requested auxiliary outputs, and
//     "grad.<param>" for each trainable parameter.
//
// The gradient engine is a registry (rules.go) holding one record per ONNX
// operator type: a short rule that, given the gradients of a node's outputs,
// emits the gradients of its inputs with an onnx.Builder; whether the
// operator carries gradients at all (shape logic, comparisons and random
// numbers do not); and the element types of its outputs. A walk over the
// nodes in reverse topological order sums the contributions of values used
// several times. Only nodes on a path from a trainable parameter to the loss
// are differentiated; integer, boolean and shape logic gets no gradient
// work. An operator on that path without a rule (or without a record) is an
// error naming the operator and the node, reported before anything runs
// (see Unsupported). RulesDigest digests the package's sources, for caches
// of the graphs it emits.
//
// No gradient is silently zero: a rule must return one gradient per input
// of its node, and one for every input that depends on a trainable
// parameter when gradient flows through the node; otherwise Build fails
// naming the node and the parameter. A parameter gets a zero gradient only
// when no gradient reaches it: it has no path to the loss, or only paths
// through operators without a gradient (Shape, comparisons, ...). Build
// returns malformed models as errors rather than panicking.
//
// Ranks and broadcast axes are learned by running the forward graph in ONNX
// Runtime with the intermediate values' shapes as outputs: once on
// Config.SampleFeeds (or zeros of a small made-up shape) and once on a
// made-up sample in which every dynamic dim has another size. An input dim
// of 1 against a larger output dim is a broadcast axis, reduced with
// constant axes; a dim that is 1 on both samples is fixed and not reduced.
// Where the samples cannot settle it (the second run failed, or a dynamic
// dim was 1), the reduction axes are computed from the shapes at run time,
// so the emitted graph is correct for any batch and sequence length.
//
// The emitted graph uses default-domain operators, plus com.microsoft
// FusedMatMul for float32 matrix products with a transposed operand. Models
// below opset 13 are refused; when an embedding (Gather) is differentiated,
// a model below opset 16 is raised to 16 for ScatterND's reduction, which
// changes no operator the exporters emit at 13-15. Dropout is treated as in
// inference (the identity); one in training mode is an error.
//
// With Config.GradientCheckpointing the backward of each decoder layer reads
// a copy of the layer's forward recomputed right before it, instead of the
// forward's intermediate values, which then die during the forward pass:
// activation memory falls from all layers' intermediates to the layers'
// inputs plus one layer's. The copy is fed through a Where that depends on
// the gradient reaching the layer, so ONNX Runtime can neither run it early
// nor merge it back into the forward (checkpoint.go). The gradients are the
// same operators on the same values.
package autodiff
