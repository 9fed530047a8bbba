// Package objective holds the training objectives, one file each, as loss heads on the
// model's graph for engine.Engine: DPO and every TRL loss variant, SFT, the Bradley–Terry
// reward model, GRPO/RLOO's policy-gradient loss, and PPO (loss, advantages).
package objective
