#!/usr/bin/env python3
"""Online-RL loss oracle (GRPO and RLOO) for the tiny Llama (PyTorch autograd, float64).

    /usr/bin/python3 testdata/gen_rl_oracle.py     # writes testdata/expected/rl_oracle_llama.json.gz

Definitions shared with the Go side (pipeline/rl_test.go), written from TRL v1.x's
GRPOTrainer and RLOOTrainer:

* Rollouts: 2 groups of G=3 completions. Group k's prompt is prompt_input_ids of
  data/train_tokenized.jsonl row k; its completions are that row's chosen ids, rejected
  ids, and the first 3 chosen ids. Rollout 5 (group 1, third) is masked (TRL's
  mask_truncated_completions: completion mask all 0). Rows are prompt + completion,
  right-padded with the pad id; attention_mask 1 on real tokens; position_ids 0..T-1.
* logp_t = log_softmax(logits[t-1] / temperature)[ids[t]] at completion positions t.
* old and ref: per completion token, logp (float64, at the model's weights) plus a fixed
  offset (see offsets()); given to the Go side as numbers.
* GRPO: ratio = exp(logp - old) (importance_sampling_level token) or, for "sequence"
  (GSPO), exp(sum_t m*(logp - old) / max(1, sum_t m)) per row; per-token policy loss by
  loss_type: grpo, bnpo, dr_grpo, dapo -min(ratio*A, clamp(ratio, 1-eps, 1+eps_high)*A);
  cispo -clamp(ratio, max=eps_high).detach()*A*logp; sapo -sigmoid(tau*(ratio-1))*4/tau*A
  with tau = sapo_temperature_pos where A > 0, else sapo_temperature_neg; plus
  beta*(exp(ref-logp) - (ref-logp) - 1); loss: grpo and sapo = mean over rows of
  (sum_t m*l / max(1, sum_t m)); bnpo, dapo and cispo = sum m*l / max(1, sum m); dr_grpo =
  sum m*l / (B * max_completion_length). A case's "rewards", when given, replace the
  file's. Advantages: A = r - mean(group), divided by
  std(group) + 1e-4 (scale_rewards group), std(batch) + 1e-4 (batch), or not (none);
  std unbiased.
* RLOO: r' = r - beta * sum_t m*(old - ref); A_i = r'_i - mean_{j != i, same group} r'_j;
  normalize_advantages: (A - mean A)/(std A + 1e-4). rho = exp(sum_t m*(logp - old));
  loss = mean over rows of -min(rho*A, clamp(rho, 1-eps, 1+eps_high)*A).
* Gradients of every parameter of models/llama_opset17.onnx in ONNX layout (the embedding
  and lm_head only for the cases in FULL_GRADS, to keep the file small).
"""
import json
import math
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen_dpo_oracle as dpo  # noqa: E402
import tinymodels as tm  # noqa: E402
from gen_expected_logps import special_ids  # noqa: E402

G = 3
MASKED = 5
FULL_GRADS = ("bnpo_temperature", "rloo_beta")  # the other cases omit the embedding and lm_head
# Cases that keep only the RMSNorm weights' gradients and SUBSET_GRADS' (file size).
SUBSET_CASES = ("cispo_beta_sequence", "sapo_temps", "gspo_dapo_beta")
SUBSET_GRADS = ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight")
REWARDS = [1.0, 0.2, 0.5, -0.3, 0.8, 0.1]
CASES = [
    {"name": "grpo", "algo": "grpo", "loss_type": "grpo", "beta": 0.0, "epsilon": 0.2, "epsilon_high": 0.2,
     "temperature": 1.0, "scale_rewards": "group"},
    {"name": "grpo_beta_batch", "algo": "grpo", "loss_type": "grpo", "beta": 0.04, "epsilon": 0.2,
     "epsilon_high": 0.28, "temperature": 1.0, "scale_rewards": "batch"},
    {"name": "bnpo_temperature", "algo": "grpo", "loss_type": "bnpo", "beta": 0.04, "epsilon": 0.2,
     "epsilon_high": 0.2, "temperature": 0.7, "scale_rewards": "none"},
    {"name": "dr_grpo", "algo": "grpo", "loss_type": "dr_grpo", "beta": 0.0, "epsilon": 0.2, "epsilon_high": 0.2,
     "temperature": 1.0, "scale_rewards": "group", "max_completion_length": 16},
    {"name": "dapo", "algo": "grpo", "loss_type": "dapo", "beta": 0.04, "epsilon": 0.2, "epsilon_high": 0.28,
     "temperature": 1.0, "scale_rewards": "group"},
    {"name": "cispo", "algo": "grpo", "loss_type": "cispo", "beta": 0.0, "epsilon": 0.2, "epsilon_high": 1.2,
     "temperature": 1.0, "scale_rewards": "group"},
    {"name": "cispo_beta_sequence", "algo": "grpo", "loss_type": "cispo", "beta": 0.04, "epsilon": 0.2,
     "epsilon_high": 1.05, "temperature": 1.0, "scale_rewards": "group", "importance_sampling_level": "sequence"},
    # Binary rewards (a reward function's): with REWARDS, sapo's loss nearly cancels to 0.
    {"name": "sapo", "algo": "grpo", "loss_type": "sapo", "beta": 0.0, "epsilon": 0.2, "epsilon_high": 0.2,
     "temperature": 1.0, "scale_rewards": "group", "sapo_temperature_pos": 1.0, "sapo_temperature_neg": 1.05,
     "rewards": [0.0, 1.0, 0.0, 1.0, 0.0, 0.0]},
    {"name": "sapo_temps", "algo": "grpo", "loss_type": "sapo", "beta": 0.0, "epsilon": 0.2,
     "epsilon_high": 0.2, "temperature": 1.0, "scale_rewards": "batch", "sapo_temperature_pos": 2.0,
     "sapo_temperature_neg": 0.5},
    {"name": "gspo", "algo": "grpo", "loss_type": "grpo", "beta": 0.0, "epsilon": 0.05, "epsilon_high": 0.05,
     "temperature": 1.0, "scale_rewards": "group", "importance_sampling_level": "sequence"},
    {"name": "gspo_dapo_beta", "algo": "grpo", "loss_type": "dapo", "beta": 0.04, "epsilon": 0.05,
     "epsilon_high": 0.08, "temperature": 0.7, "scale_rewards": "group", "importance_sampling_level": "sequence"},
    {"name": "rloo_beta", "algo": "rloo", "beta": 0.05, "epsilon": 0.2, "epsilon_high": 0.2, "temperature": 1.0,
     "normalize_advantages": False},
    {"name": "rloo_normalized", "algo": "rloo", "beta": 0.0, "epsilon": 0.2, "epsilon_high": 0.28,
     "temperature": 1.0, "normalize_advantages": True},
]


def rollouts():
    with open(os.path.join(HERE, "data", "train_tokenized.jsonl")) as f:
        tokd = [json.loads(l) for l in f if l.strip()]
    out = []
    for k in range(2):
        r = tokd[k]
        for c in (r["chosen_input_ids"], r["rejected_input_ids"], r["chosen_input_ids"][:3]):
            out.append((r["prompt_input_ids"], c))
    return out


def offsets(algo, n):
    """Fixed old/ref offsets per completion token j of rollout i: token-level ones large
    enough to clip some GRPO ratios, sequence-level ones small enough to leave some RLOO
    ratios inside the clip range."""
    s = 0.3 if algo == "grpo" else 0.15
    old = [[s * math.sin(1.3 * i + 0.7 * j + 0.4) for j in range(n[i])] for i in range(len(n))]
    ref = [[0.25 * math.cos(0.9 * i + 1.1 * j) for j in range(n[i])] for i in range(len(n))]
    return old, ref


def token_logps(model, ids, att, pos, temperature):
    logits = tm.forward(model, ids, att, pos) / temperature
    lp = torch.log_softmax(logits[:, :-1], dim=-1)
    return torch.gather(lp, 2, ids[:, 1:, None]).squeeze(2)  # [B, T-1]: position t-1 predicts t


def std(x):
    return x.std() if x.numel() > 1 else torch.zeros((), dtype=x.dtype)


def case_loss(model, c, rows, batch, pad_id):
    ids, att, pos = batch
    B, T = ids.shape
    n = [len(cmp) for _, cmp in rows]
    mask = torch.zeros(B, T - 1, dtype=torch.float64)
    for i, (p, cmp) in enumerate(rows):
        if i != MASKED:
            mask[i, len(p) - 1:len(p) - 1 + len(cmp)] = 1
    tok = token_logps(model, ids, att, pos, c["temperature"])
    # old/ref at the model's log-probs plus offsets, laid out like tok
    off_old, off_ref = offsets(c["algo"], n)
    old = torch.zeros(B, T - 1, dtype=torch.float64)
    ref = torch.zeros(B, T - 1, dtype=torch.float64)
    old_list, ref_list = [], []
    base = tok.detach()
    for i, (p, cmp) in enumerate(rows):
        o, r_ = [], []
        for j in range(len(cmp)):
            t = len(p) - 1 + j
            old[i, t] = base[i, t] + off_old[i][j]
            ref[i, t] = base[i, t] + off_ref[i][j]
            o.append(old[i, t].item())
            r_.append(ref[i, t].item())
        old_list.append(o)
        ref_list.append(r_)
    rewards = torch.tensor(c.get("rewards", REWARDS), dtype=torch.float64)
    eps_lo, eps_hi, beta = c["epsilon"], c["epsilon_high"], c["beta"]
    if c["algo"] == "grpo":
        grouped = rewards.view(-1, G)
        mean = grouped.mean(1).repeat_interleave(G)
        adv = rewards - mean
        if c["scale_rewards"] == "group":
            adv = adv / (grouped.std(1).repeat_interleave(G) + 1e-4)
        elif c["scale_rewards"] == "batch":
            adv = adv / (rewards.std() + 1e-4)
        A = adv.unsqueeze(1)
        log_w = tok - old
        if c.get("importance_sampling_level", "token") == "sequence":
            log_w = ((log_w * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
        coef_1 = torch.exp(log_w)
        if c["loss_type"] == "cispo":
            per = -torch.clamp(coef_1, max=eps_hi).detach() * A * tok
        elif c["loss_type"] == "sapo":
            tau = torch.where(A > 0, torch.full_like(A, c["sapo_temperature_pos"]),
                              torch.full_like(A, c["sapo_temperature_neg"]))
            per = -torch.sigmoid(tau * (coef_1 - 1)) * 4 / tau * A
        else:
            coef_2 = torch.clamp(coef_1, 1 - eps_lo, 1 + eps_hi)
            per = -torch.min(coef_1 * A, coef_2 * A)
        if beta != 0:
            d = ref - tok
            per = per + beta * (torch.exp(d) - d - 1)
        lt = c["loss_type"]
        if lt in ("grpo", "sapo"):
            loss = ((per * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
        elif lt in ("bnpo", "dapo", "cispo"):
            loss = (per * mask).sum() / mask.sum().clamp(min=1.0)
        elif lt == "dr_grpo":
            loss = (per * mask).sum() / (B * c["max_completion_length"])
        penalized = rewards
    else:
        kl = ((old - ref) * mask).sum(-1)
        penalized = rewards - beta * kl if beta != 0 else rewards
        grouped = penalized.view(-1, G)
        baselines = ((grouped.sum(1, keepdim=True) - grouped) / (G - 1)).view(-1)
        adv = penalized - baselines
        if c["normalize_advantages"]:
            adv = (adv - adv.mean()) / (adv.std() + 1e-4)
        logps = (tok * mask).sum(1)
        old_logps = (old * mask).sum(1)
        coef_1 = torch.exp(logps - old_logps)
        coef_2 = torch.clamp(coef_1, 1 - eps_lo, 1 + eps_hi)
        loss = (-torch.min(coef_1 * adv, coef_2 * adv)).mean()
    return loss, adv, penalized, old_list, ref_list


def main():
    if os.environ.get("OPENBLAS_CORETYPE") != dpo.ORACLE_CORETYPE:
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:],
                  dict(os.environ, OPENBLAS_CORETYPE=dpo.ORACLE_CORETYPE))
    torch.set_num_threads(1)
    pad_id, _, _ = special_ids()
    with open(os.path.join(HERE, "models", "params_map.json")) as f:
        params_map = json.load(f)
    rows = rollouts()
    T = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    att = torch.zeros((len(rows), T), dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        seq = p + c
        ids[i, :len(seq)] = torch.tensor(seq)
        att[i, :len(seq)] = 1
    pos = torch.arange(T).expand(len(rows), T)
    model = dpo.load("llama", torch.float64)
    cases = []
    for c in CASES:
        model.zero_grad(set_to_none=True)
        loss, adv, penalized, old, ref = case_loss(model, c, rows, (ids, att, pos), pad_id)
        loss.backward()
        grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
        og = dpo.onnx_grads("llama", params_map, grads, None)["models/llama_opset17.onnx"]
        for init in list(og):
            e = og[init]
            if e is None:
                continue
            if c["name"] not in FULL_GRADS and e["param"] in ("lm_head.weight", "model.embed_tokens.weight"):
                del og[init]  # keeps the file small; the cases in FULL_GRADS check them
                continue
            if c["name"] in SUBSET_CASES and not (e["param"] in SUBSET_GRADS or e["param"].endswith("norm.weight")):
                del og[init]
                continue
            e["values"] = [float(f"{v:.7g}") for v in e["values"]]
        cases.append(dict(c, loss=loss.item(), advantages=adv.tolist(), penalized_rewards=penalized.tolist(),
                          old_logps=old, ref_logps=ref, grads=og))
        print(f"{c['name']}: loss {loss.item():.10f}")
    out = {
        "definitions": __doc__.split("Definitions shared with the Go side (pipeline/rl_test.go), written from TRL v1.x's\nGRPOTrainer and RLOOTrainer:")[1].strip(),
        "pad_id": pad_id, "group": G, "masked": MASKED, "rewards": REWARDS,
        "prompts": [p for p, _ in rows], "completions": [c for _, c in rows],
        "cases": cases,
    }
    path = os.path.join(HERE, "expected", "rl_oracle_llama.json.gz")
    raw = dpo.write_gz(path, out)
    print(f"wrote {path} ({os.path.getsize(path)} bytes gz, {raw} raw)")


if __name__ == "__main__":
    main()
