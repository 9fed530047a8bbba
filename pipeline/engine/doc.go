// Package engine trains a model on an Objective: it generates the training graph (and
// caches it), owns the parameters, gradients and optimizer, and runs the one training
// loop, Engine.Run, over a Source of steps (offline data, or an online objective's
// rollouts): schedule, accumulation, clipping, evaluation, metrics, progress,
// checkpoints, resume, and saving on interrupt or failure; LoRA adapters and exports.
package engine
