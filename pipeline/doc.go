// Package pipeline is ortalign's work on top of ONNX Runtime, in rooms that say what
// they hold. Each imports only those before it in this list:
//
//   - progress: progress lines (rate and ETA) for long work.
//   - lm: a causal LM as ortalign drives it: its inputs (rows, right-padded batches, an
//     empty KV past), the log-prob head appended to its logits, the reward and value
//     heads grafted on it, trainable initializers and tied copies, ONNX Runtime sessions
//     opened per batch shape.
//   - encode: dataset rows into model items: preference pairs, unpaired (KTO) rows, SFT
//     sequences, prompts; chat templates, truncation, the checks and counts of skipped rows.
//   - engine: the training engine and its one loop (Engine.Run over a Source): the
//     generated training graph and its cache, optimizer and schedule, accumulation,
//     clipping, evaluation, metrics and timing, checkpoints, resume, reference values
//     computed as their steps come (Referenced), LoRA adapters, exports.
//   - score: offline scoring: log-probs and implicit rewards of pairs, reward-model
//     scores, score files streamed window by window (ScoreDataset: the score command).
//   - generate: sampling with a KV cache (the export's, one derived from a plain export,
//     or GroupQueryAttention's), warpers, finish reasons (GenerateFile: the generate
//     command).
//   - objective: the objectives, one file each: DPO and its losses, KTO, ORPO, CPO/SimPO,
//     SFT, the reward model, GRPO/RLOO's policy loss (and its variants), PPO (loss, GAE).
//   - rollout: online RL: a round of prompts sampled with the policy's live weights,
//     scored by reward models or programs, made into GRPO/RLOO/PPO steps for the loop.
//   - report: plots of metrics.jsonl files.
package pipeline
