#!/usr/bin/env bash
# The README's demo: runs ortalign end to end on the small bundled models, tokenizer and
# dataset of testdata/. `make demo` builds bin/ortalign first.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=./bin/ortalign
out=out/demo
mkdir -p "$out"

echo "== inspect: the bundled tiny Llama-style model"
$bin inspect testdata/models/llama_opset17.onnx | head -12

echo
echo "== score: held-out preference pairs, tiny Llama policy vs tiny GPT-2 reference"
$bin score --model testdata/models/llama_opset17.onnx --ref testdata/models/gpt2_opset17.onnx \
  --data testdata/data/test.parquet --tokenizer testdata/tokenizer/tokenizer.json \
  --max-length 128 --out "$out/scores.parquet"
