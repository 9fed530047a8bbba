#!/usr/bin/env python3
"""Oracle for `ortalign generate` (pipeline.Generator): PyTorch greedy decoding of the tiny
test models, and transformers' logits processors applied to their logits.

    /usr/bin/python3 testdata/gen_generate_oracle.py

Reads testdata/models/{gpt2,llama}.pt (tinymodels.load); writes
testdata/expected/generate.json.

* greedy: each prompt decoded alone (no padding, no KV cache: the full sequence is re-run
  every step, positions 0..len-1), MAX_NEW tokens, argmax with torch.argmax's first-index
  tie rule; with repetition_penalty 1.0 and 1.3 (transformers' RepetitionPenaltyLogitsProcessor:
  scores of tokens already in the row, prompt included, are divided by the penalty when
  positive and multiplied when negative). Per token: the log-prob of the chosen token under
  log_softmax of the raw logits, and the gap between the two best processed scores (so a
  test can tell a real mismatch from a float near-tie).
* warpers: for the first step of the first prompt, the set of token ids left finite by
  transformers' warpers in its order (temperature, top-k, top-p, min-p; min_tokens_to_keep
  1), the code below copied from transformers' TemperatureLogitsWarper, TopKLogitsWarper,
  TopPLogitsWarper and MinPLogitsWarper (transformers is not installed here).
The prompts are pipeline/generate_test.go's mixedPrompts.
"""
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import tinymodels as tm  # noqa: E402

MAX_NEW = 16
LENS = [5, 1, 9, 3]


def prompts():
    return [[(i * 97 + t * 31 + 7) % 500 for t in range(n)] for i, n in enumerate(LENS)]


def repetition_penalty(input_ids, scores, penalty):
    # transformers.RepetitionPenaltyLogitsProcessor.__call__
    score = torch.gather(scores, 1, input_ids)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return scores.scatter(1, input_ids, score)


def temperature(scores, t):
    return scores / t


def top_k(scores, k, filter_value=-float("inf")):
    k = min(max(k, 1), scores.size(-1))
    remove = scores < torch.topk(scores, k)[0][..., -1, None]
    return scores.masked_fill(remove, filter_value)


def top_p(scores, p, filter_value=-float("inf"), min_tokens_to_keep=1):
    sorted_logits, sorted_indices = torch.sort(scores, descending=False)
    cumulative_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    sorted_indices_to_remove = cumulative_probs <= (1 - p)
    sorted_indices_to_remove[..., -min_tokens_to_keep:] = 0
    remove = sorted_indices_to_remove.scatter(1, sorted_indices, sorted_indices_to_remove)
    return scores.masked_fill(remove, filter_value)


def min_p(scores, p, filter_value=-float("inf"), min_tokens_to_keep=1):
    probs = torch.softmax(scores, dim=-1)
    top_probs, _ = probs.max(dim=-1, keepdim=True)
    tokens_to_remove = probs < p * top_probs
    sorted_indices = torch.argsort(scores, descending=True, dim=-1)
    sorted_indices_to_remove = torch.gather(tokens_to_remove, dim=-1, index=sorted_indices)
    sorted_indices_to_remove[..., :min_tokens_to_keep] = False
    remove = sorted_indices_to_remove.scatter(1, sorted_indices, sorted_indices_to_remove)
    return scores.masked_fill(remove, filter_value)


def next_logits(model, ids):
    x = torch.tensor([ids])
    with torch.inference_mode():
        return tm.forward(model, x, torch.ones_like(x))[:, -1].float()


def greedy(model, prompt, penalty):
    ids = list(prompt)
    out, logps, gaps = [], [], []
    for _ in range(MAX_NEW):
        raw = next_logits(model, ids)
        scores = raw
        if penalty != 1.0:
            scores = repetition_penalty(torch.tensor([ids]), raw, penalty)
        tok = int(torch.argmax(scores, dim=-1))
        top2 = torch.topk(scores[0], 2)[0]
        gaps.append(float(top2[0] - top2[1]))
        logps.append(float(torch.log_softmax(raw.double(), dim=-1)[0, tok]))
        out.append(tok)
        ids.append(tok)
    return {"ids": out, "logps": logps, "min_gap": min(gaps)}


WARPS = [
    {"temperature": 0.7, "top_k": 20, "top_p": 1.0, "min_p": 0.0},
    {"temperature": 1.0, "top_k": 0, "top_p": 0.8, "min_p": 0.0},
    {"temperature": 1.3, "top_k": 0, "top_p": 1.0, "min_p": 0.1},
    {"temperature": 0.9, "top_k": 50, "top_p": 0.9, "min_p": 0.05},
]


def warp(raw, w):
    s = temperature(raw, w["temperature"])
    if w["top_k"] > 0:
        s = top_k(s, w["top_k"])
    if w["top_p"] < 1.0:
        s = top_p(s, w["top_p"])
    if w["min_p"] > 0:
        s = min_p(s, w["min_p"])
    return [i for i, v in enumerate(s[0].tolist()) if v != -float("inf")]


def main():
    torch.manual_seed(0)
    res = {"max_new_tokens": MAX_NEW, "prompts": prompts(), "models": {}}
    for kind in ("gpt2", "llama"):
        model = tm.load(os.path.join(HERE, "models", f"{kind}.pt"))
        entry = {"greedy": {}, "warpers": []}
        for penalty in (1.0, 1.3):
            entry["greedy"][str(penalty)] = [greedy(model, p, penalty) for p in prompts()]
        raw = next_logits(model, prompts()[0])
        for w in WARPS:
            entry["warpers"].append(dict(w, allowed=warp(raw, w)))
        res["models"][kind] = entry
        g = entry["greedy"]
        print(f"{kind}: min top-2 gap {min(r['min_gap'] for v in g.values() for r in v):.3g}; "
              f"allowed set sizes {[len(w['allowed']) for w in entry['warpers']]}")
    path = os.path.join(HERE, "expected", "generate.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(res, f, separators=(",", ":"))
        f.write("\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
