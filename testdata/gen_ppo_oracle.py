#!/usr/bin/env python3
"""PPO oracle for the tiny Llama with a value head (PyTorch autograd, float64).

    /usr/bin/python3 testdata/gen_ppo_oracle.py     # writes testdata/expected/ppo_oracle_llama.json.gz

Definitions shared with the Go side (pipeline/ppo_test.go), written from TRL v1.x's
(experimental) PPOTrainer.train, its tensors laid out as TRL lays them out:

* Rollouts: 5 (prompt, completion) pairs from data/train_tokenized.jsonl (see rollouts()).
  The responses form TRL's [B, M] tensor, right-padded with the pad id (distinct from EOS),
  M = max completion length = the length limit; sequence_lengths = first pad index - 1.
* Model: models/llama.pt; a value head v = h . w (no bias; w [1, hidden], drawn here from
  normal(0, 0.5) with a fixed seed and rounded to float32: value_weight) reads the final
  hidden state h (the LM head's input). Rows are prompt + completion right-padded (the
  same model inputs as TRL's left-padded queries); response token j of row i is predicted
  at position P_i + j - 1, and its value is v at that position (TRL's
  full_value[:, context_length - 1 : -1]).
* logp_j = log_softmax(logits / temperature)[token]; old and ref = logp (float64, at the
  model's weights) plus fixed offsets; old values = v plus fixed offsets (offsets());
  scores fixed (SCORES). All given to the Go side as numbers.
* TRL: padding_mask = j > sequence_length; padding_mask_p1 = j > sequence_length + 1;
  logprobs/ref masked to INVALID_LOGPROB (1.0), values masked to 0 with padding_mask_p1;
  kl = -logr (k1) or (exp(logr) - 1) - logr (k3), logr = ref - old; rewards = -kl_coef*kl,
  plus the score at sequence_length + 1 where that is < M, else at sequence_length;
  whiten_rewards: masked_whiten(rewards, ~padding_mask_p1, shift_mean=False), then 0 under
  padding_mask_p1; GAE reversed over j < M with next value 0 past M; returns = A + values;
  A = masked_whiten(A, ~padding_mask) (unbiased var, rsqrt(var + 1e-8)), 0 under
  padding_mask.
* Loss on one micro-batch holding all rollouts (new = the model's log-probs and values with
  grad): vpred = v masked to 0 by padding_mask_p1; vf = 0.5 * masked_mean(max((vpred - R)^2,
  (clamp(vpred, V - cv, V + cv) - R)^2), ~padding_mask_p1); ratio = exp(new - old);
  pg = masked_mean(max(-A*ratio, -A*clamp(ratio, 1 - cr, 1 + cr)), ~padding_mask);
  loss = pg + vf_coef * vf. TRL divides logits by temperature + 1e-7; here by temperature.
* Output per rollout: advantages (the first n values: the tokens), returns (the value steps:
  n + 1 where sequence_length + 1 < M, else n), gradients of every parameter in ONNX
  layout (the embedding and lm_head only for the cases in FULL_GRADS) and of the value
  head (value_grad, hidden values).
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

INVALID_LOGPROB = 1.0
VALUE_SEED = 4321
VALUE_STD = 0.5
SCORES = [1.0, -0.5, 0.3, 2.0, -1.2]
FULL_GRADS = ("k1_default",)
CASES = [
    {"name": "k1_default", "kl_coef": 0.05, "kl_estimator": "k1", "cliprange": 0.2, "cliprange_value": 0.2,
     "vf_coef": 0.1, "gamma": 1.0, "lam": 0.95, "whiten_rewards": False, "temperature": 1.0},
    {"name": "k3_whiten_temperature", "kl_coef": 0.2, "kl_estimator": "k3", "cliprange": 0.1,
     "cliprange_value": 0.05, "vf_coef": 0.5, "gamma": 0.99, "lam": 0.9, "whiten_rewards": True,
     "temperature": 0.7},
]


def rollouts():
    with open(os.path.join(HERE, "data", "train_tokenized.jsonl")) as f:
        tokd = [json.loads(l) for l in f if l.strip()]
    return [
        (tokd[0]["prompt_input_ids"], tokd[0]["chosen_input_ids"]),  # 4 tokens, EOS
        (tokd[1]["prompt_input_ids"], tokd[1]["rejected_input_ids"]),  # 4, EOS
        (tokd[2]["prompt_input_ids"], tokd[2]["chosen_input_ids"]),  # 11 = M: no extra value step
        (tokd[3]["prompt_input_ids"], tokd[3]["rejected_input_ids"][:9]),  # 9, cut
        (tokd[4]["prompt_input_ids"], tokd[4]["chosen_input_ids"][:1]),  # 1
    ]


def offsets(n, steps):
    old = [[0.3 * math.sin(1.3 * i + 0.7 * j + 0.4) for j in range(n[i])] for i in range(len(n))]
    ref = [[0.25 * math.cos(0.9 * i + 1.1 * j) for j in range(n[i])] for i in range(len(n))]
    val = [[0.3 * math.cos(0.8 * i + 0.6 * j + 0.2) for j in range(steps[i])] for i in range(len(n))]
    return old, ref, val


def masked_mean(v, m):
    return (v * m).sum() / m.sum()


def masked_var(v, m):
    mean = masked_mean(v, m)
    var = masked_mean((v - mean) ** 2, m)
    s = m.sum()
    return var * s / (s - 1)


def masked_whiten(v, m, shift_mean=True):
    mean, var = masked_mean(v, m), masked_var(v, m)
    w = (v - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        w = w + mean
    return w


class PolicyWithValue(torch.nn.Module):
    def __init__(self, lm, w):
        super().__init__()
        self.lm = lm
        self.v_head = torch.nn.Linear(w.shape[1], 1, bias=False).to(w.dtype)
        with torch.no_grad():
            self.v_head.weight.copy_(w)
        self._h = None
        lm.lm_head.register_forward_hook(lambda mod, inp, out: setattr(self, "_h", inp[0]))

    def forward(self, ids, att, pos):
        logits = tm.forward(self.lm, ids, att, pos)
        return logits, self.v_head(self._h).squeeze(-1)


def gather_resp(x, rows, M):
    """x [B, T, ...] at positions P_i + j - 1 for j < M (clamped into the row: masked anyway)."""
    B, T = x.shape[:2]
    idx = torch.zeros(B, M, dtype=torch.long)
    for i, (p, _) in enumerate(rows):
        for j in range(M):
            idx[i, j] = min(len(p) + j - 1, T - 1)
    if x.dim() == 3:
        return torch.gather(x, 1, idx[:, :, None].expand(B, M, x.shape[2]))
    return torch.gather(x, 1, idx)


def run_case(model, c, rows, batch, pad_id):
    ids, att, pos = batch
    B = len(rows)
    n = [len(cmp) for _, cmp in rows]
    M = max(n)
    responses = torch.full((B, M), pad_id, dtype=torch.long)
    for i, (_, cmp) in enumerate(rows):
        responses[i, :len(cmp)] = torch.tensor(cmp)
    logits_full, v_full = model(ids, att, pos)
    logits = gather_resp(logits_full, rows, M) / c["temperature"]
    new_lp = torch.gather(torch.log_softmax(logits, -1), 2, responses[:, :, None]).squeeze(2)
    vpred_all = gather_resp(v_full, rows, M)

    # first_true_indices(responses == pad) - 1, M - 1 when no pad
    is_pad = responses == pad_id
    seq_len = torch.where(is_pad.any(1), is_pad.float().argmax(1), torch.full((B,), M)) - 1
    idx = torch.arange(M).repeat(B, 1)
    padding_mask = idx > seq_len[:, None]
    seq_len_p1 = seq_len + 1
    padding_mask_p1 = idx > seq_len_p1[:, None]
    steps = [int((~padding_mask_p1[i]).sum()) for i in range(B)]

    off_old, off_ref, off_val = offsets(n, steps)
    base_lp, base_v = new_lp.detach(), vpred_all.detach()
    old = torch.zeros(B, M, dtype=torch.float64)
    ref = torch.zeros(B, M, dtype=torch.float64)
    oldv = torch.zeros(B, M, dtype=torch.float64)
    for i in range(B):
        for j in range(n[i]):
            old[i, j] = base_lp[i, j] + off_old[i][j]
            ref[i, j] = base_lp[i, j] + off_ref[i][j]
        for j in range(steps[i]):
            oldv[i, j] = base_v[i, j] + off_val[i][j]

    scores = torch.tensor(SCORES, dtype=torch.float64)
    logprobs = torch.masked_fill(old, padding_mask, INVALID_LOGPROB)
    ref_logprobs = torch.masked_fill(ref, padding_mask, INVALID_LOGPROB)
    values = torch.masked_fill(oldv, padding_mask_p1, 0)
    logr = ref_logprobs - logprobs
    kl = -logr if c["kl_estimator"] == "k1" else (logr.exp() - 1) - logr
    non_score_reward = -c["kl_coef"] * kl
    rewards = non_score_reward.clone()
    actual_start = torch.arange(B)
    actual_end = torch.where(seq_len_p1 < M, seq_len_p1, seq_len)
    rewards[[actual_start, actual_end]] += scores
    if c["whiten_rewards"]:
        rewards = masked_whiten(rewards, ~padding_mask_p1, shift_mean=False)
        rewards = torch.masked_fill(rewards, padding_mask_p1, 0)
    lastgaelam = 0
    rev = []
    for t in reversed(range(M)):
        nextvalues = values[:, t + 1] if t < M - 1 else 0.0
        delta = rewards[:, t] + c["gamma"] * nextvalues - values[:, t]
        lastgaelam = delta + c["gamma"] * c["lam"] * lastgaelam
        rev.append(lastgaelam)
    advantages = torch.stack(rev[::-1], axis=1)
    returns = advantages + values
    advantages = masked_whiten(advantages, ~padding_mask)
    advantages = torch.masked_fill(advantages, padding_mask, 0)

    new_logprobs = torch.masked_fill(new_lp, padding_mask, INVALID_LOGPROB)
    vpred = torch.masked_fill(vpred_all, padding_mask_p1, 0)
    cv = c["cliprange_value"]
    vpredclipped = torch.clamp(vpred, values - cv, values + cv)
    vf1 = torch.square(vpred - returns)
    vf2 = torch.square(vpredclipped - returns)
    vf_loss = 0.5 * masked_mean(torch.max(vf1, vf2), ~padding_mask_p1)
    ratio = torch.exp(new_logprobs - logprobs)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1.0 - c["cliprange"], 1.0 + c["cliprange"])
    pg_loss = masked_mean(torch.max(pg1, pg2), ~padding_mask)
    loss = pg_loss + c["vf_coef"] * vf_loss
    with torch.no_grad():
        pg_clipfrac = masked_mean((pg2 > pg1).double(), ~padding_mask).item()
        vf_clipfrac = masked_mean((vf2 > vf1).double(), ~padding_mask_p1).item()
    out = {
        "max_new_tokens": M, "steps": steps,
        "old_logps": [old[i, :n[i]].tolist() for i in range(B)],
        "ref_logps": [ref[i, :n[i]].tolist() for i in range(B)],
        "old_values": [oldv[i, :steps[i]].tolist() for i in range(B)],
        "advantages": [advantages[i, :n[i]].tolist() for i in range(B)],
        "returns": [returns[i, :steps[i]].tolist() for i in range(B)],
        "policy_loss": pg_loss.item(), "value_loss": vf_loss.item(),
        "policy_clipfrac": pg_clipfrac, "value_clipfrac": vf_clipfrac,
    }
    return loss, out


def main():
    if os.environ.get("OPENBLAS_CORETYPE") != dpo.ORACLE_CORETYPE:
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:],
                  dict(os.environ, OPENBLAS_CORETYPE=dpo.ORACLE_CORETYPE))
    torch.set_num_threads(1)
    pad_id, _, _ = special_ids()
    with open(os.path.join(HERE, "models", "params_map.json")) as f:
        params_map = json.load(f)
    rows = rollouts()
    for _, cmp in rows:
        assert pad_id not in cmp
    T = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    att = torch.zeros((len(rows), T), dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        seq = p + c
        ids[i, :len(seq)] = torch.tensor(seq)
        att[i, :len(seq)] = 1
    pos = torch.arange(T).expand(len(rows), T)
    lm = dpo.load("llama", torch.float64)
    g = torch.Generator().manual_seed(VALUE_SEED)
    hidden = lm.config.hidden_size
    w32 = (torch.randn(1, hidden, generator=g) * VALUE_STD).float()
    model = PolicyWithValue(lm, w32.double())
    cases = []
    for c in CASES:
        model.zero_grad(set_to_none=True)
        loss, out = run_case(model, c, rows, (ids, att, pos), pad_id)
        loss.backward()
        grads = {k[len("lm."):]: p.grad.detach().clone() for k, p in model.named_parameters() if k.startswith("lm.")}
        og = dpo.onnx_grads("llama", params_map, grads, None)["models/llama_opset17.onnx"]
        for init in list(og):
            e = og[init]
            if e is None:
                continue
            if c["name"] not in FULL_GRADS and e["param"] in ("lm_head.weight", "model.embed_tokens.weight"):
                del og[init]
                continue
            e["values"] = [float(f"{v:.7g}") for v in e["values"]]
        vg = [float(f"{v:.8g}") for v in model.v_head.weight.grad.view(-1).tolist()]
        cases.append(dict(c, loss=loss.item(), grads=og, value_grad=vg, **out))
        print(f"{c['name']}: loss {loss.item():.10f} (pg {out['policy_loss']:.6f}, vf {out['value_loss']:.6f}, "
              f"clipfrac {out['policy_clipfrac']:.3f}/{out['value_clipfrac']:.3f}) steps {out['steps']}")
    res = {
        "definitions": __doc__.split("Definitions shared with the Go side (pipeline/ppo_test.go), written from TRL v1.x's\n(experimental) PPOTrainer.train, its tensors laid out as TRL lays them out:")[1].strip(),
        "pad_id": pad_id, "scores": SCORES, "value_weight": w32.view(-1).tolist(),
        "prompts": [p for p, _ in rows], "completions": [c for _, c in rows],
        "cases": cases,
    }
    path = os.path.join(HERE, "expected", "ppo_oracle_llama.json.gz")
    raw = dpo.write_gz(path, res)
    print(f"wrote {path} ({os.path.getsize(path)} bytes gz, {raw} raw)")


if __name__ == "__main__":
    main()
