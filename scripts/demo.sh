#!/usr/bin/env bash
# The README's demo: runs ortalign end to end on the small bundled models, tokenizer and
# dataset of testdata/. `make demo` builds bin/ortalign first.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=./bin/ortalign
out=out/demo
rm -rf "$out"
mkdir -p "$out"
tok=testdata/tokenizer/tokenizer.json
model=testdata/models/llama_opset17.onnx
# The tiny random model needs a far larger learning rate and far shorter sequences than
# TRL's defaults (1e-6 / 2e-5, 1024 tokens), which suit real models.
common=(--tokenizer "$tok" --max-length 128 --lr 1e-3 --epochs 1)

echo "== 1. inspect: the bundled tiny Llama-style model (RoPE, RMSNorm, SwiGLU, GQA)"
$bin inspect "$model" | sed -n '1,11p;$p'

echo
echo "== 2. score: 100 held-out preference pairs, tiny Llama policy vs tiny GPT-2 reference"
$bin score --model "$model" --ref testdata/models/gpt2_opset17.onnx \
  --data testdata/data/test.parquet --tokenizer "$tok" --max-length 128 \
  --out "$out/scores.parquet" 2>/dev/null

echo
echo "== 3. sft: supervised fine-tuning on the chosen completions (360 train, 10% held out)"
$bin sft --model "$model" --data testdata/data/sft_train.parquet "${common[@]}" \
  --eval-fraction 0.1 --eval-steps 15 --out "$out/sft" 2>/dev/null

echo
echo "== 4. dpo: align the SFT model on 400 training pairs; held-out metrics before and after"
$bin dpo --model "$out/sft/model.onnx" --data testdata/data/train.parquet --eval-data testdata/data/test.parquet \
  "${common[@]}" --eval-steps 10 --loss sigmoid --beta 0.1 --out "$out/dpo" 2>/dev/null

echo
echo "== 5. dpo --loss ipo: the same from the SFT model with TRL's IPO loss"
$bin dpo --model "$out/sft/model.onnx" --data testdata/data/train.parquet --eval-data testdata/data/test.parquet \
  "${common[@]}" --eval-steps 10 --loss ipo --beta 0.1 --out "$out/ipo" 2>/dev/null | grep -E "accuracies|margins"

echo
echo "== 6. orpo: SFT and preference in one stage from the base model, no reference model (TRL's ORPO)"
$bin orpo --model "$model" --data testdata/data/train.parquet --eval-data testdata/data/test.parquet \
  "${common[@]}" --beta 0.1 --out "$out/orpo" 2>/dev/null | grep -E "accuracies|nll_loss|log_odds_ratio"

echo
echo "== 7. score: the aligned model (an ordinary ONNX file) against the SFT model"
$bin score --model "$out/dpo/model.onnx" --ref "$out/sft/model.onnx" \
  --data testdata/data/test.parquet --tokenizer "$tok" --max-length 128 \
  --out "$out/aligned_scores.parquet" 2>/dev/null

echo
echo "== 8. generate: greedy completions of 3 held-out prompts from the aligned model (KV cache)"
head -n 3 testdata/data/test.jsonl > "$out/prompts.jsonl"
$bin generate --model "$out/dpo/model.onnx" --prompts "$out/prompts.jsonl" --tokenizer "$tok" \
  --temperature 0 --max-new-tokens 24 --out "$out/completions.jsonl" 2>/dev/null
head -c 600 "$out/completions.jsonl"; echo

echo
echo "== 9. reward: a Bradley-Terry reward model on the same pairs (held-out accuracy before and after)"
$bin reward --model "$model" --data testdata/data/train.parquet --eval-data testdata/data/test.parquet \
  "${common[@]}" --out "$out/reward" 2>/dev/null | grep -E "wrote|accuracy|margin "

echo
echo "== 10. sampled completions of the SFT model with their rewards (generate, then score --reward)"
head -n 16 testdata/data/test.jsonl > "$out/heldout_prompts.jsonl"
$bin generate --model "$out/sft/model.onnx" --prompts "$out/heldout_prompts.jsonl" --tokenizer "$tok" \
  --max-new-tokens 12 --seed 7 --out "$out/sampled.jsonl" 2>/dev/null >/dev/null
$bin score --reward "$out/reward/reward.onnx" --data "$out/sampled.jsonl" --tokenizer "$tok" \
  --out "$out/sampled_rewards.jsonl" 2>/dev/null | grep "mean reward"
echo "  reward  completion"
paste -d' ' <(grep -o '"reward":[^,}]*' "$out/sampled_rewards.jsonl" | cut -d: -f2 | xargs printf '  %+.3f\n') \
  <(grep -o '"completion":"[^"]*"' "$out/sampled.jsonl" | cut -c14-) | head -n 5

echo
echo "== 11. rlhf: GRPO from the SFT model against the reward model, next to the DPO run"
$bin rlhf --algo grpo --model "$out/sft/model.onnx" --reward "$out/reward/reward.onnx" \
  --prompts testdata/data/train.jsonl --eval-data "$out/heldout_prompts.jsonl" --tokenizer "$tok" \
  --num-generations 8 --max-new-tokens 16 --batch-size 4 --max-steps 12 --lr 2e-3 --beta 0.04 \
  --lr-scheduler constant --out "$out/grpo" 2>/dev/null

echo
echo "== 12. report: plots of the SFT, DPO, IPO, reward and GRPO runs"
$bin report "$out/sft" "$out/dpo" "$out/ipo" "$out/reward" "$out/grpo" --out "$out/report" 2>/dev/null
