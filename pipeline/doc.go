// Package pipeline runs ortalign's work on top of ONNX Runtime: the log-prob head that
// scores completions inside the model graph, batching of preference pairs, offline
// scoring with implicit rewards, and (as they land) loss heads and the trainer.
package pipeline
