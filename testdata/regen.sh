#!/usr/bin/env bash
# Regenerates every committed fixture in testdata/ (not run by CI; CI uses the outputs).
# Needs /usr/bin/python3 with Debian's python3-torch and python3-onnx, node + npm.
# npm packages go to a throwaway folder outside the repo ($TESTDATA_NODE_DIR if set).
# All outputs are deterministic: a rerun gives byte-identical files.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
# Every generator is run below: a gen_* script that is not is an error (also tested by
# pipeline/regen_test.go). gen_bench*.py make benchmark models, not fixtures (scripts/bench.sh).
for g in testdata/gen_*.py testdata/gen_*.mjs; do
  case "$g" in testdata/gen_bench*.py) continue ;; esac
  grep -q "^\(\$PY\|node\) $g\b" testdata/regen.sh || { echo "regen.sh: $g is not run by regen.sh; add it" >&2; exit 1; }
done
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
$PY testdata/gen_kto_oracle.py              # expected/kto_oracle_llama.json.gz (uses the DPO oracle's batch)
$PY testdata/gen_reffree_oracle.py          # expected/reffree_oracle_llama.json.gz (ORPO, CPO/SimPO)
$PY testdata/gen_sft_oracle.py              # expected/sft_oracle_{gpt2,llama}.json.gz
$PY testdata/gen_lora_oracle.py             # expected/lora_oracle.json.gz (uses the SFT oracle's batch)
$PY testdata/gen_reward_oracle.py           # expected/reward_oracle_llama.json.gz
$PY testdata/gen_rl_oracle.py               # expected/rl_oracle_llama.json.gz
$PY testdata/gen_ppo_oracle.py              # expected/ppo_oracle_llama.json.gz
$PY testdata/gen_generate_oracle.py         # expected/generate.json
$PY testdata/gen_kv_styles.py               # models/kvstyle_*.onnx, expected/kv_styles.json
$PY testdata/gen_gqa_model.py               # models/gqa_genai.onnx, expected/gqa_genai.json
