#!/usr/bin/env python3
"""Reward-model oracle for the tiny Llama (PyTorch autograd, float64).

    /usr/bin/python3 testdata/gen_reward_oracle.py     # writes testdata/expected/reward_oracle_llama.json.gz

Definitions shared with the Go side (pipeline/reward_test.go):

* Model: tinymodels' tiny Llama (models/llama.pt) as transformers' LlamaForSequenceClassification
  with num_labels=1: the LM head is dropped and a score head r = h . w (no bias) reads the final
  hidden state h (the output of the final RMSNorm, the LM head's input) at each row's last real
  token, index sum(attention_mask) - 1. w (score.weight, [1, hidden] in PyTorch, [hidden, 1] in
  ONNX: the same values) is drawn here from normal(0, 0.5) with a fixed torch seed, rounded to
  float32 and stored (score_weight); a larger scale than transformers' 0.02 so that rewards are
  O(1) and the centering term matters.
* Batch: the 8 sequences of the DPO oracle batch (data/train_tokenized.jsonl rows 0..3: prompt +
  chosen, then prompt + rejected), right-padded with the pad id; rewards[0:4] are the chosen rows,
  rewards[4:8] the rejected ones.
* Loss (TRL RewardTrainer v1.x): mean over pairs of -logsigmoid(r_c - r_r - margin)
  + center_rewards_coefficient * mean((r_c + r_r)^2); without a margin column the margin is 0,
  with coefficient None (0 here) the second term is absent.
* Metrics: accuracy = mean(r_c > r_r), margin = mean(r_c - r_r), min/mean/max_reward over all 8.
* Cases: plain; margin [0.5, -1.0, 2.0, 0.0]; center_rewards_coefficient 0.25; both.
* Gradients (8 significant digits) of every parameter the reward model has, by PyTorch name in
  PyTorch layout (grads; the LM head has none: models/params_map.json maps them to the ONNX
  initializers, transposed where it says so), and of score.weight (score_grad, hidden values).
"""
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen_dpo_oracle as dpo  # noqa: E402
from gen_expected_logps import special_ids  # noqa: E402

SCORE_SEED = 1234
SCORE_STD = 0.5
CASES = [
    {"name": "plain", "margin": None, "center_rewards_coefficient": None},
    {"name": "margin", "margin": [0.5, -1.0, 2.0, 0.0], "center_rewards_coefficient": None},
    {"name": "center", "margin": None, "center_rewards_coefficient": 0.25},
    {"name": "margin_center", "margin": [0.5, -1.0, 2.0, 0.0], "center_rewards_coefficient": 0.25},
]


class RewardLlama(nn.Module):
    def __init__(self, lm, w):
        super().__init__()
        self.lm = lm
        self.lm.lm_head = nn.Identity()  # forward now returns the final hidden state
        self.score = nn.Linear(w.shape[1], 1, bias=False).to(w.dtype)
        with torch.no_grad():
            self.score.weight.copy_(w)

    def forward(self, ids, att, pos):
        h = self.lm(ids, att, pos)  # [B, T, H]
        last = att.sum(1) - 1
        pooled = h[torch.arange(h.shape[0]), last]  # [B, H]
        return self.score(pooled).squeeze(-1)  # [B]


def r8(x):
    return float(f"{x:.8g}")


def reward_loss(rewards, margin, coef):
    n = rewards.shape[0] // 2
    rc, rr = rewards[:n], rewards[n:]
    if margin is not None:
        loss = -F.logsigmoid(rc - rr - torch.tensor(margin, dtype=rewards.dtype)).mean()
    else:
        loss = -F.logsigmoid(rc - rr).mean()
    if coef is not None:
        loss = loss + coef * torch.mean((rc + rr) ** 2)
    r = rewards.detach()
    metrics = {
        "loss": loss.item(),
        "accuracy": (r[:n] > r[n:]).to(r.dtype).mean().item(),
        "margin": (r[:n] - r[n:]).mean().item(),
        "min_reward": r.min().item(),
        "mean_reward": r.mean().item(),
        "max_reward": r.max().item(),
    }
    return loss, metrics


def main():
    if os.environ.get("OPENBLAS_CORETYPE") != dpo.ORACLE_CORETYPE:
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:],
                  dict(os.environ, OPENBLAS_CORETYPE=dpo.ORACLE_CORETYPE))
    torch.set_num_threads(1)
    pad_id, _, _ = special_ids()
    batch, rows = dpo.make_batch(pad_id)
    ids, att, pos, _ = batch
    hidden = dpo.load("llama", torch.float64).config.hidden_size
    g = torch.Generator().manual_seed(SCORE_SEED)
    w32 = (torch.randn(1, hidden, generator=g) * SCORE_STD).float()
    out = {
        "model": "llama",
        "definitions": __doc__.split("Definitions shared with the Go side (pipeline/reward_test.go):")[1].strip(),
        "pad_id": pad_id,
        "input_ids": ids.tolist(),
        "prompt_len": [len(p) for p, _ in rows],
        "seq_len": [len(p) + len(c) for p, c in rows],
        "score_weight": w32.double().reshape(-1).tolist(),
        "cases": [],
    }
    for case in CASES:
        model = RewardLlama(dpo.load("llama", torch.float64), w32.double())
        model.zero_grad(set_to_none=True)
        rewards = model(ids, att, pos)
        loss, metrics = reward_loss(rewards, case["margin"], case["center_rewards_coefficient"])
        loss.backward()
        grads = {k[len("lm."):]: p.grad.detach().clone() for k, p in model.named_parameters() if k.startswith("lm.")}
        grads = {k: [r8(x) for x in v.reshape(-1).tolist()] for k, v in grads.items() if k != "lm_head.weight"}
        out["cases"].append({
            **case,
            "rewards": [dpo.r(x) for x in rewards.detach().tolist()],
            "loss_float64": loss.item(),
            "metrics": metrics,
            "score_grad": [r8(x) for x in model.score.weight.grad.reshape(-1).tolist()],
            "grads": grads,
        })
        print(f"{case['name']}: loss {loss.item():.8f} metrics {metrics}")
    path = os.path.join(HERE, "expected", "reward_oracle_llama.json.gz")
    raw = dpo.write_gz(path, out)
    print(f"wrote {path} ({os.path.getsize(path)} bytes gz, {raw} raw)")


if __name__ == "__main__":
    main()
