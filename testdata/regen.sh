#!/usr/bin/env bash
# Regenerates every committed fixture in testdata/ (not run by CI; CI uses the outputs).
# Needs /usr/bin/python3 with Debian's python3-torch and python3-onnx, node + npm.
# npm packages go to a throwaway folder outside the repo ($TESTDATA_NODE_DIR if set).
# All outputs are deterministic: a rerun gives byte-identical files.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
if [ -z "${TESTDATA_NODE_DIR:-}" ]; then
  TESTDATA_NODE_DIR=$(mktemp -d /tmp/ortalign-testdata-npm.XXXXXX)
  cp testdata/package.json "$TESTDATA_NODE_DIR/"
  (cd "$TESTDATA_NODE_DIR" && npm install --ignore-scripts --no-audit --no-fund >/dev/null)
fi
export TESTDATA_NODE_DIR
$PY testdata/gen_dataset.py                 # data/{train,test}.jsonl
node testdata/gen_tokenizer.mjs 2>/dev/null # tokenizer/* (stderr: the trainer's progress bar)
node testdata/gen_parquet.mjs               # data/*.parquet, data/train_tokenized.jsonl
node testdata/gen_sft_dataset.mjs           # data/sft_train.*, expected/sft_ids.jsonl
$PY testdata/gen_models.py                  # models/*
node testdata/check_onnx.mjs                # ORT vs PyTorch logits (writes nothing)
$PY testdata/gen_expected_logps.py          # expected/logps.json
node testdata/check_onnx.mjs                # again, now also ORT log-probs vs the oracle
$PY testdata/gen_dpo_oracle.py              # expected/dpo_grads_*.json.gz, dpo_adamw_*.json
$PY testdata/gen_loss_oracle.py             # expected/loss_oracle_llama.json.gz
