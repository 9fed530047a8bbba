// Package lm is a causal language model as ortalign drives it in ONNX Runtime: its
// inputs (rows, right-padded batches, an empty KV-cache past), the log-prob head that
// turns its logits into per-sequence log-probs inside the graph, the reward and value
// heads grafted on it, which initializers train and which are tied copies, and sessions
// opened per batch shape.
package lm
