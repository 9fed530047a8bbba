#!/usr/bin/env python3
"""Oracle completion log-probs of the tiny test models (PyTorch eager).

    /usr/bin/python3 testdata/gen_expected_logps.py

Reads testdata/models/{gpt2,llama}.pt, testdata/data/train_tokenized.jsonl and the
tokenizer's pad id; writes testdata/expected/logps.json.

Contract (the one ortalign's scoring implements): per row, SUM over completion positions t of
log_softmax(logits[t-1])[input_ids[t]]; prompt and padding excluded. Rows are
right-padded with the pad id (attention_mask 0 there), position_ids = 0..seq-1, and a
pair batch holds its chosen rows first, then its rejected rows (row i and row i+n_pairs
are one pair). Each row is prompt_input_ids + completion ids (completion ids end with the
EOS id, as TRL's tokenize_row makes them).

Values: logps_float64 from the model cast to float64 (the oracle); logps_float32 from the
float32 model (what ONNX Runtime should match closely); token_logps_float64 lists, per row,
the log-prob of each completion token in order.
"""
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import tinymodels as tm  # noqa: E402

MODEL_FILES = {
    "gpt2": ["gpt2_opset14.onnx", "gpt2_opset17.onnx", "gpt2_tied_opset17.onnx"],
    "llama": ["llama_opset14.onnx", "llama_opset17.onnx"],
}


def special_ids():
    with open(os.path.join(HERE, "tokenizer", "tokenizer_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    with open(os.path.join(HERE, "tokenizer", "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
    return ids[cfg["pad_token"]], ids[cfg["eos_token"]], len(
        set(tok["model"]["vocab"].values()) | set(ids.values()))


def pad_batch(rows, pad_id):
    """rows: list of (prompt_ids, completion_ids) -> right-padded tensors."""
    T = max(len(p) + len(c) for p, c in rows)
    B = len(rows)
    ids = torch.full((B, T), pad_id, dtype=torch.int64)
    att = torch.zeros(B, T, dtype=torch.int64)
    comp = torch.zeros(B, T, dtype=torch.int64)
    for i, (p, c) in enumerate(rows):
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor(p + c)
        att[i, :n] = 1
        comp[i, len(p):n] = 1
    pos = torch.arange(T).expand(B, T).contiguous()
    return ids, att, pos, comp


def pair_rows(pairs):
    return [(r["prompt_input_ids"], r["chosen_input_ids"]) for r in pairs] + \
           [(r["prompt_input_ids"], r["rejected_input_ids"]) for r in pairs]


def main():
    pad_id, eos_id, vocab = special_ids()
    with open(os.path.join(HERE, "data", "train_tokenized.jsonl")) as f:
        tokd = [json.loads(l) for l in f if l.strip()]
    by_len = sorted(range(len(tokd)), key=lambda i: len(tokd[i]["prompt_input_ids"]) +
                    len(tokd[i]["chosen_input_ids"]) + len(tokd[i]["rejected_input_ids"]))
    g = torch.Generator().manual_seed(7)

    def rand_row(pl, cl):
        return (torch.randint(0, eos_id, (pl,), generator=g).tolist(),
                torch.randint(0, eos_id, (cl,), generator=g).tolist())

    batches = [
        ("train_pairs_0_3", "train_tokenized.jsonl rows 0-3 (chosen rows, then rejected rows)",
         4, pair_rows(tokd[0:4])),
        ("train_pairs_short_long", f"train_tokenized.jsonl rows {by_len[0]}, {by_len[-1]}, {by_len[len(by_len)//2]} "
         "(shortest, longest, median pair)", 3, pair_rows([tokd[by_len[0]], tokd[by_len[-1]], tokd[by_len[len(by_len)//2]]])),
        ("train_pair_10", "train_tokenized.jsonl row 10 (one pair; its longer row has no padding)", 1,
         pair_rows(tokd[10:11])),
        ("single_row_unpadded", "train_tokenized.jsonl row 20, chosen only (batch of 1, no padding)", None,
         [(tokd[20]["prompt_input_ids"], tokd[20]["chosen_input_ids"])]),
        ("random_ids", "random ids in [0, eos_id), prompt/completion lengths (4,8) (2,3) (6,1) (1,10)", None,
         [rand_row(4, 8), rand_row(2, 3), rand_row(6, 1), rand_row(1, 10)]),
    ]

    out = {
        "contract": "logp[row] = sum over t with completion_mask[row][t]==1 of "
                    "log_softmax(logits[row][t-1])[input_ids[row][t]]; rows right-padded with pad_id; "
                    "pair batches: rows [0,n_pairs) chosen, [n_pairs,2*n_pairs) rejected",
        "tokenizer": "tokenizer/tokenizer.json",
        "pad_id": pad_id,
        "eos_id": eos_id,
        "vocab_size": vocab,
        "torch_version": torch.__version__,
        "models": {},
        "batches": [],
    }
    for name in ("gpt2", "llama"):
        m32 = tm.load(os.path.join(HERE, "models", f"{name}.pt"))
        m64 = tm.load(os.path.join(HERE, "models", f"{name}.pt")).double()
        out["models"][name] = {"onnx_files": [f"models/{f}" for f in MODEL_FILES[name]],
                               "state_dict": f"models/{name}.pt", "inputs": tm.input_names(m32)}
        for bname, source, n_pairs, rows in batches:
            ids, att, pos, comp = pad_batch(rows, pad_id)
            with torch.inference_mode():
                s64, tok64 = tm.completion_logps(tm.forward(m64, ids, att, pos), ids, comp)
                s32, _ = tm.completion_logps(tm.forward(m32, ids, att, pos), ids, comp)
            token_lps = [[tok64[i, t - 1].item() for t in range(1, ids.shape[1]) if comp[i, t]]
                         for i in range(ids.shape[0])]
            for i, (p, c) in enumerate(rows):
                assert abs(sum(token_lps[i]) - s64[i].item()) < 1e-9 and len(token_lps[i]) == len(c)
            diff = (s64 - s32.double()).abs().max().item()
            print(f"{name} {bname}: shape {list(ids.shape)} logps64 {[round(x, 3) for x in s64.tolist()]} "
                  f"max|f64-f32| {diff:.2e}")
            out["batches"].append({
                "model": name,
                "name": bname,
                "source": source,
                "n_pairs": n_pairs,
                "input_ids": ids.tolist(),
                "attention_mask": att.tolist(),
                "position_ids": pos.tolist(),
                "completion_mask": comp.tolist(),
                "prompt_len": [len(p) for p, _ in rows],
                "completion_len": [len(c) for _, c in rows],
                "logps_float64": s64.tolist(),
                "logps_float32": s32.double().tolist(),
                "token_logps_float64": token_lps,
            })
    os.makedirs(os.path.join(HERE, "expected"), exist_ok=True)
    path = os.path.join(HERE, "expected", "logps.json")
    with open(path, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
