// Package rollout is online RL's side of the loop: each round samples completions of the
// next prompts with the policy's live weights, scores them with reward models or reward
// programs, and hands GRPO, RLOO or PPO steps to engine.Engine.Run.
package rollout
