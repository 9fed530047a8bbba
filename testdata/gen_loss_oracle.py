#!/usr/bin/env python3
"""Oracle for the non-default preference losses (PyTorch autograd, float64), llama tiny model.

    /usr/bin/python3 testdata/gen_loss_oracle.py     # writes testdata/expected/loss_oracle_llama.json.gz (~5 s)

Run it after gen_dpo_oracle.py: it reuses that script's batch, model loading, log-prob and
output helpers (imported, not copied) and asserts that its batch, policy log-probs and
reference log-probs equal those stored in expected/dpo_grads_llama.json.gz.

Definitions (h is per pair; p = policy, r = reference, c = chosen, r = rejected; all
log-probs are SUMS over completion tokens, as in gen_dpo_oracle.py):

* Batch, policy (llama at its committed weights), reference log-probs (gpt2's float64
  log-probs of the same 8 rows, fed as constants): exactly those of dpo_grads_llama.json.gz.
* h = (pc - pr) - (rc - rr); loss = mean over the 4 pairs of the per-pair loss.
* sigmoid with label smoothing eps (cDPO, Mitchell 2023; TRL <= 0.2x `dpo_loss`):
      -(1 - eps) * logsigmoid(beta * h) - eps * logsigmoid(-beta * h)
  NOTE: TRL v1.x's loss_type="sigmoid" does NOT apply label_smoothing (its sigmoid branch is
  -logsigmoid(beta * delta_score); v1.x uses label_smoothing only in "robust", "exo_pair",
  "aot", "aot_unpaired"). This case follows the cDPO formula above, i.e. TRL's pre-v1
  semantics; with TRL v1.x the same config gives the plain DPO loss of dpo_grads_llama.
* ipo (TRL v1.x `_compute_loss`, loss_type="ipo"): the per-sequence log-ratios
  s = logp_policy - logp_ref (sums) are divided by the sequence's number of completion
  tokens n (completion_mask.sum(dim=1).clamp(min=1)):
      h_avg = (pc - rc) / n_c - (pr - rr) / n_r,     loss = (h_avg - 1 / (2 * beta))^2
  This equals TRL 0.x's form (policy AND reference log-probs each averaged over the
  sequence's completion tokens in concatenated_forward, then the plain h), since
  (pc - rc)/n_c - (pr - rr)/n_r = (pc/n_c - pr/n_r) - (rc/n_c - rr/n_r).
  n counts completion tokens; every row here has a non-empty prompt, so the count is the
  same whether or not position 0 is included (TRL v1.x counts completion_mask, TRL 0.x
  counts the shifted loss mask).
* hinge (SLiC; TRL v1.x and 0.x): relu(1 - beta * h). A pair is "active" when
  1 - beta * h > 0 (non-zero gradient).

Cases: sigmoid_ls0.1 (beta 0.1, eps 0.1), ipo (beta 0.1), hinge (beta 0.1: all 4 pairs
active), hinge_beta0.2 (beta 0.2: 2 of 4 pairs active, margins >= 0.39 from the kink, so
the relu masking itself is exercised).

Gradients: float64 (model.double()), w.r.t. every initializer of models/llama_opset17.onnx
(ONNX layout, as `onnx_grads` of dpo_grads_llama.json.gz; params_map.json), rounded to 10
significant digits. Each case is checked against central finite differences (h = 1e-6) on
a few entries. loss_float32 is the same loss with the float32 model (for scale only).
Output is deterministic (OpenBLAS core type pinned as in gen_dpo_oracle.py, one thread,
gzip mtime 0).
"""
import gzip
import json
import math
import os
import random
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen_dpo_oracle as dpo  # noqa: E402
from gen_expected_logps import special_ids  # noqa: E402

MODEL = "llama"
ONNX_FILE = "llama_opset17.onnx"
CASES = [
    {"name": "sigmoid_ls0.1", "loss_type": "sigmoid", "beta": 0.1, "label_smoothing": 0.1},
    {"name": "ipo", "loss_type": "ipo", "beta": 0.1, "label_smoothing": 0.0},
    {"name": "hinge", "loss_type": "hinge", "beta": 0.1, "label_smoothing": 0.0},
    {"name": "hinge_beta0.2", "loss_type": "hinge", "beta": 0.2, "label_smoothing": 0.0},
]
FORMULAS = {
    "sigmoid": "mean_i [ -(1-eps)*logsigmoid(beta*h_i) - eps*logsigmoid(-beta*h_i) ],  h = (pc-pr)-(rc-rr)",
    "ipo": "mean_i (h_avg_i - 1/(2*beta))^2,  h_avg = (pc-rc)/n_c - (pr-rr)/n_r,  n = completion tokens of the row",
    "hinge": "mean_i relu(1 - beta*h_i),  h = (pc-pr)-(rc-rr)",
}


def pair_terms(logps, ref, counts, case):
    """Per-pair h (the quantity the loss is applied to) and per-pair loss."""
    n = logps.shape[0] // 2
    ref = ref.to(logps.dtype)
    counts = counts.to(logps.dtype).clamp(min=1.0)
    beta, eps = case["beta"], case["label_smoothing"]
    if case["loss_type"] == "ipo":
        s = (logps - ref) / counts  # per-sequence log-ratio, averaged over completion tokens
        h = s[:n] - s[n:]
        return h, (h - 1 / (2 * beta)) ** 2
    h = (logps[:n] - logps[n:]) - (ref[:n] - ref[n:])
    if case["loss_type"] == "sigmoid":
        return h, -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    if case["loss_type"] == "hinge":
        return h, torch.relu(1 - beta * h)
    raise ValueError(case["loss_type"])


def case_loss(model, batch, ref, counts, case):
    return pair_terms(dpo.policy_logps(model, batch), ref, counts, case)[1].mean()


def fd_check(model, batch, ref, counts, case, grads, picks, h=1e-6):
    params = dict(model.named_parameters())
    out = []
    for name, idx in picks:
        flat = params[name].data.view(-1)
        old = flat[idx].item()
        vals = []
        for x in (old + h, old - h):
            flat[idx] = x
            with torch.no_grad():
                vals.append(case_loss(model, batch, ref, counts, case).item())
        flat[idx] = old
        fd = (vals[0] - vals[1]) / (2 * h)
        ag = grads[name].view(-1)[idx].item()
        out.append({"param": name, "index": idx, "autograd": ag, "finite_difference": fd,
                    "rel_err": abs(fd - ag) / max(abs(ag), 1e-8)})
    return out


def main():
    if os.environ.get("OPENBLAS_CORETYPE") != dpo.ORACLE_CORETYPE:
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:],
                  dict(os.environ, OPENBLAS_CORETYPE=dpo.ORACLE_CORETYPE))
    torch.set_num_threads(1)
    pad_id, _, _ = special_ids()
    batch, rows = dpo.make_batch(pad_id)
    ids, att, pos, comp = batch
    with open(os.path.join(HERE, "expected", f"dpo_grads_{MODEL}.json.gz"), "rb") as f:
        base = json.loads(gzip.decompress(f.read()))
    with open(os.path.join(HERE, "models", "params_map.json")) as f:
        params_map = json.load(f)

    # reference: the OTHER model's float64 log-probs, recomputed and checked against the file
    with torch.no_grad():
        ref = dpo.policy_logps(dpo.load(dpo.OTHER[MODEL], torch.float64), batch)
    assert ids.tolist() == base["input_ids"] and comp.tolist() == base["completion_mask"]
    assert ref.tolist() == base["ref_logps"], "reference log-probs differ from dpo_grads_llama.json.gz"
    assert (comp[:, 0] == 0).all(), "a row with an empty prompt: completion counts would be ambiguous"
    counts = comp.sum(dim=1)  # completion tokens per row (TRL v1.x: completion_mask.sum(dim=1))
    assert counts.tolist() == base["completion_len"]

    m64 = dpo.load(MODEL, torch.float64)
    m32 = dpo.load(MODEL, torch.float32)
    with torch.no_grad():
        lp32 = dpo.policy_logps(m32, batch)
    names = [n for n, _ in m64.named_parameters()]
    rng = random.Random(20240607)
    out_cases = []
    for case in CASES:
        m64.zero_grad(set_to_none=True)
        logps = dpo.policy_logps(m64, batch)
        assert logps.detach().tolist() == base["policy_logps_float64"]
        h, per_pair = pair_terms(logps, ref, counts, case)
        loss = per_pair.mean()
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in m64.named_parameters()}
        with torch.no_grad():
            loss32 = pair_terms(lp32, ref.float(), counts, case)[1].mean().item()
        picks = [(n, rng.randrange(grads[n].numel())) for n in rng.sample(names, 6)]
        picks += [(n, int(grads[n].abs().view(-1).argmax())) for n in (names[0], names[-1])]
        fd = fd_check(m64, batch, ref, counts, case, grads, picks)
        worst = max(x["rel_err"] for x in fd)
        active = None
        if case["loss_type"] == "hinge":
            active = int((1 - case["beta"] * h.detach() > 0).sum().item())
        og = dpo.onnx_grads(MODEL, params_map, grads, None)[f"models/{ONNX_FILE}"]
        gn = math.sqrt(sum(g.pow(2).sum().item() for g in grads.values()))
        print(f"{case['name']:14s} loss f64 {loss.item():.12f} f32 {loss32:.8f} "
              f"(rel {abs(loss32 - loss.item()) / abs(loss.item()):.1e})  grad_norm {gn:.6f}  "
              f"h {[round(x, 6) for x in h.detach().tolist()]}"
              + (f"  active pairs {active}/{len(h)}" if active is not None else "")
              + f"  fd worst rel {worst:.1e}")
        assert worst < 1e-5, (case["name"], worst)
        out_cases.append({
            "name": case["name"], "loss_type": case["loss_type"], "beta": case["beta"],
            "label_smoothing": case["label_smoothing"], "formula": FORMULAS[case["loss_type"]],
            "h": h.detach().tolist(),
            "per_pair_loss": per_pair.detach().tolist(),
            "active_pairs": active,
            "loss_float64": loss.item(),
            "loss_float32": loss32,
            "grad_norm": gn,
            "onnx_grads": {f"models/{ONNX_FILE}": og},
            "fd_check": fd,
        })

    out = {
        "model": MODEL, "state_dict": f"models/{MODEL}.pt", "torch_version": torch.__version__,
        "definitions": __doc__.split("Definitions (")[1].split("Gradients: float64")[0].strip(),
        "batch_from": f"expected/dpo_grads_{MODEL}.json.gz (same rows, policy and reference log-probs)",
        "pad_id": pad_id, "n_pairs": dpo.N_PAIRS,
        "input_ids": ids.tolist(), "attention_mask": att.tolist(), "position_ids": pos.tolist(),
        "completion_mask": comp.tolist(),
        "prompt_len": [len(p) for p, _ in rows], "completion_len": [len(c) for _, c in rows],
        "seq_len": [len(p) + len(c) for p, c in rows],
        "completion_counts": counts.tolist(),
        "ref_model": dpo.OTHER[MODEL], "ref_logps": ref.tolist(),
        "policy_logps_float64": base["policy_logps_float64"],
        "policy_logps_float32": lp32.double().tolist(),
        "grad_rounding": f"{dpo.SIG_DIGITS} significant digits",
        "cases": out_cases,
    }
    path = os.path.join(HERE, "expected", f"loss_oracle_{MODEL}.json.gz")
    raw = dpo.write_gz(path, out)
    print(f"wrote {path} ({os.path.getsize(path)} bytes gz, {raw} raw)")


if __name__ == "__main__":
    main()
