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

echo "== 1. inspect: the bundled tiny Llama-style model (RoPE, RMSNorm, SwiGLU, GQA)"
$bin inspect "$model" | sed -n '1,11p;$p'

echo
echo "== 2. score: 100 held-out preference pairs, tiny Llama policy vs tiny GPT-2 reference"
$bin score --model "$model" --ref testdata/models/gpt2_opset17.onnx \
  --data testdata/data/test.parquet --tokenizer "$tok" --max-length 128 \
  --out "$out/scores.parquet" 2>/dev/null

echo
echo "== 3. dpo: align the Llama model on 400 training pairs (1 epoch, AdamW), held-out accuracy before and after"
$bin dpo --model "$model" --data testdata/data/train.parquet --eval-data testdata/data/test.parquet \
  --tokenizer "$tok" --max-length 128 --out "$out/dpo" \
  --loss sigmoid --beta 0.1 --optimizer adamw --lr 1e-3 --batch-size 8 --epochs 1 2>/dev/null
echo "last step of $out/dpo/metrics.jsonl:"
tail -n 1 "$out/dpo/metrics.jsonl"

echo
echo "== 4. score: the aligned model (an ordinary ONNX file) against the starting model"
$bin score --model "$out/dpo/model.onnx" --ref "$model" \
  --data testdata/data/test.parquet --tokenizer "$tok" --max-length 128 \
  --out "$out/aligned_scores.parquet" 2>/dev/null
