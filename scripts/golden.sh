#!/usr/bin/env bash
# Runs every trainer briefly on the bundled data with the given binary and prints the sha256
# of each run's model and metrics (less their wall-clock fields): a restructuring must leave these lines unchanged.
#   scripts/golden.sh BIN OUTDIR
set -euo pipefail
bin=$(realpath "$1"); out=$2
cd "$(dirname "$0")/.."
rm -rf "$out"; mkdir -p "$out"
tok=testdata/tokenizer/tokenizer.json
model=testdata/models/llama_opset17.onnx
common=(--tokenizer "$tok" --max-length 128 --lr 1e-3 --epochs 1 --max-steps 6 --threads 2)
q() { "$@" >"$out/log.txt" 2>&1 || { cat "$out/log.txt"; exit 1; }; }
q $bin sft --model "$model" --data testdata/data/sft_train.parquet "${common[@]}" --eval-fraction 0.1 --eval-steps 3 --out "$out/sft"
q $bin dpo --model "$model" --data testdata/data/train.parquet --eval-data testdata/data/test.parquet "${common[@]}" --eval-steps 3 --out "$out/dpo"
q $bin dpo --model "$model" --data testdata/data/train.parquet "${common[@]}" --loss ipo --lora-r 4 --gradient-accumulation-steps 2 --out "$out/ipo_lora"
q $bin reward --model "$model" --data testdata/data/train.parquet --eval-data testdata/data/test.parquet "${common[@]}" --out "$out/reward"
head -n 16 testdata/data/test.jsonl > "$out/prompts.jsonl"
q $bin generate --model "$model" --prompts "$out/prompts.jsonl" --tokenizer "$tok" --max-new-tokens 12 --seed 7 --threads 2 --out "$out/sampled.jsonl"
rl=(--model "$model" --reward "$out/reward/reward.onnx" --prompts testdata/data/train.jsonl --eval-data "$out/prompts.jsonl"
    --tokenizer "$tok" --num-generations 4 --max-new-tokens 8 --batch-size 4 --max-steps 3 --lr 2e-3 --threads 2)
q $bin rlhf --algo grpo "${rl[@]}" --beta 0.04 --out "$out/grpo"
q $bin rlhf --algo rloo "${rl[@]}" --out "$out/rloo"
q $bin rlhf --algo ppo "${rl[@]}" --out "$out/ppo"
cd "$out"
# Wall-clock fields (time/*, train_runtime and the rates built on it) differ run to run.
for f in */metrics.jsonl; do
  sed -E 's/"(time\/[a-z_]+|train_runtime|train_samples_per_second|train_steps_per_second)":[-0-9.e+]+,?//g' "$f" >"$f.untimed"
done
sha256sum */model.onnx */metrics.jsonl.untimed reward/reward.onnx sampled.jsonl 2>/dev/null | sort -k2
