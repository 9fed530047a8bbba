// Package objective holds the training objectives, one file each, as loss heads on the
// model's graph for engine.Engine: DPO and every TRL loss variant, KTO, the reference-free
// ORPO and CPO/SimPO, SFT, the Bradley–Terry reward model, GRPO/RLOO's policy-gradient loss
// (with its loss types and sequence-level importance sampling), and PPO (loss, advantages).
package objective
