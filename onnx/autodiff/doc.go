// Package autodiff differentiates ONNX graphs in reverse mode and emits the
// gradient computation as ordinary ONNX operators, so that one plain ONNX
// Runtime inference session computes a loss, metrics and the gradient of the
// loss with respect to every trainable parameter (DESIGN.md, Decision 3).
//
// Build takes a forward model whose graph has a scalar float loss output and
// a list of trainable initializers, and returns a training model:
//
//   - the trainable initializers become graph inputs (the caller feeds the
//     current weights each step); frozen initializers stay constants;
//   - the outputs are the loss, the requested auxiliary outputs, and
//     "grad.<param>" for each trainable parameter.
//
// The gradient engine is a table (rules.go) from ONNX operator type to a
// short rule that, given the gradients of a node's outputs, emits the
// gradients of its inputs with an onnx.Builder. A walk over the nodes in
// reverse topological order sums the contributions of values used several
// times. Only nodes on a path from a trainable parameter to the loss are
// differentiated; integer, boolean and shape logic gets no gradient work.
// An operator on that path without a rule is an error naming the operator
// and the node, reported before anything runs (see Unsupported).
//
// Ranks and broadcast axes are learned by running the forward graph once in
// ONNX Runtime on a small sample with the intermediate values as outputs
// (Config.SampleFeeds, or zeros of a small made-up shape). Broadcast
// gradients are reduced statically where the sample proves an axis is
// broadcast (an input dim of 1 against an output dim other than 1) and with
// a reduction computed from the runtime shapes where the sample cannot tell
// (both dims 1, as with a dynamic dim sampled at size 1), so the emitted
// graph is correct for any batch and sequence length.
package autodiff
