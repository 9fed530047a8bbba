#!/usr/bin/env python3
"""Oracle for the KTO losses (PyTorch autograd, float64), llama tiny model.

    /usr/bin/python3 testdata/gen_kto_oracle.py     # writes testdata/expected/kto_oracle_llama.json.gz

It reuses gen_dpo_oracle.py's batch, model loading and output helpers (imported, not copied).

Definitions (TRL's KTOTrainer: kto_loss, get_batch_loss_metrics, _get_kl_dataset; written out
in trl_kto below):

* Rows: the 8 sequences of gen_dpo_oracle.py's batch (the first 4 pairs of
  data/train_tokenized.jsonl) unpaired and interleaved: pair 0 chosen (label true), pair 0
  rejected (false), pair 1 chosen, ... Each row is (prompt ids, completion ids), no truncation.
* KL rows (TRL's _get_kl_dataset over one batch of 8): row i's prompt with the completion of
  row i-1, row 0's with row 7's.
* Batch: the 8 rows then the 8 KL rows, right-padded with the pad id; log-probs are SUMS over
  completion tokens t >= 1 of log_softmax(logits[t-1])[ids[t]].
* Policy: llama at its committed weights. Reference: gpt2's float64 log-probs of the same 16
  rows (constants), plus the case's ref_kl_shift added to the KL rows' (to reach a KL estimate
  clamped at 0). reference_logps_fed / reference_KL_logps_fed are what the Go graph is fed.
* kl = max(0, mean(policy_KL - reference_KL)), detached (TRL computes the policy's KL log-probs
  under torch.no_grad); 0 for apo_zero_unpaired. lr = policy - reference per row;
  kto: chosen 1 - sigmoid(beta (lr - kl)), rejected 1 - sigmoid(beta (kl - lr));
  apo_zero_unpaired: chosen 1 - sigmoid(beta lr), rejected sigmoid(beta lr);
  loss = nanmean(cat(desirable_weight * chosen losses, undesirable_weight * rejected losses)).
* Metrics (TRL's stored names): kl, rewards/chosen_sum = sum of beta lr over chosen rows,
  logps/chosen_sum = sum of their policy log-probs, count/chosen, and the same for rejected.

Gradients: float64 (model.double()), w.r.t. every initializer of models/llama_opset17.onnx (ONNX
layout, params_map.json), rounded to 6 significant digits; cases outside FULL_GRADS keep the
RMSNorm weights' and SUBSET_GRADS' only (file size). Each case is checked against central finite
differences (h = 1e-6) on 8 entries, with kl held at its value (it is a constant to the
gradient). Output is deterministic (OpenBLAS core type pinned as in gen_dpo_oracle.py, one
thread, gzip mtime 0).
"""
import json
import os
import random
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen_dpo_oracle as dpo  # noqa: E402
import tinymodels as tm  # noqa: E402
from gen_expected_logps import pad_batch, special_ids  # noqa: E402

MODEL = "llama"
GRAD_DIGITS = 6
FULL_GRADS = {"kto", "apo_zero_unpaired"}
SUBSET_GRADS = {"model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"}
ONNX_FILE = "llama_opset17.onnx"


def case(name, loss_type="kto", beta=0.1, dw=1.0, uw=1.0, ref_kl_shift=0.0):
    return {"name": name, "loss_type": loss_type, "beta": beta, "desirable_weight": dw,
            "undesirable_weight": uw, "ref_kl_shift": ref_kl_shift}


CASES = [
    case("kto"),
    case("kto_beta0.5_weights", beta=0.5, dw=1.33, uw=0.75),
    case("kto_kl_clamped", ref_kl_shift=40.0),
    case("kto_kl_positive", beta=0.2, ref_kl_shift=-3.0),
    case("apo_zero_unpaired", loss_type="apo_zero_unpaired"),
    case("apo_zero_unpaired_weights", loss_type="apo_zero_unpaired", beta=0.3, dw=0.5, uw=2.0),
]


def unpaired_rows(pair_rows):
    """Interleave a dpo batch's chosen rows (first half) and rejected rows (second half)."""
    n = len(pair_rows) // 2
    rows, labels = [], []
    for i in range(n):
        rows += [pair_rows[i], pair_rows[n + i]]
        labels += [True, False]
    return rows, labels


def kl_rows(rows):
    """TRL's _get_kl_dataset on one batch: completions rotated by one."""
    completions = [c for _, c in rows]
    completions = [completions[-1]] + completions[:-1]
    return [(p, c) for (p, _), c in zip(rows, completions)]


def trl_kto(logps, ref, ref_kl, labels, c, kl=None):
    """TRL's kto_loss and get_batch_loss_metrics. logps: [2n] policy log-probs (rows, then KL
    rows); ref, ref_kl: [n]. kl, when given, replaces the estimate (finite differences hold it)."""
    n = len(labels)
    pol, pol_kl = logps[:n], logps[n:]
    lab = torch.tensor(labels)
    if c["loss_type"] == "kto":
        if kl is None:
            kl = (pol_kl.detach() - ref_kl).mean().clamp(min=0)
    else:
        kl = torch.zeros((), dtype=logps.dtype)
    beta = c["beta"]
    ch, rj = pol[lab], pol[~lab]
    ch_lr, rj_lr = ch - ref[lab], rj - ref[~lab]
    if c["loss_type"] == "kto":
        ch_loss = 1 - torch.sigmoid(beta * (ch_lr - kl))
        rj_loss = 1 - torch.sigmoid(beta * (kl - rj_lr))
    else:
        ch_loss = 1 - torch.sigmoid(beta * ch_lr)
        rj_loss = torch.sigmoid(beta * rj_lr)
    losses = torch.cat((c["desirable_weight"] * ch_loss, c["undesirable_weight"] * rj_loss), 0)
    metrics = {
        "kl": kl.item(),
        "rewards/chosen_sum": (beta * ch_lr.detach()).nansum().item(),
        "logps/chosen_sum": ch.detach().nansum().item(),
        "count/chosen": int(lab.sum()),
        "rewards/rejected_sum": (beta * rj_lr.detach()).nansum().item(),
        "logps/rejected_sum": rj.detach().nansum().item(),
        "count/rejected": int((~lab).sum()),
    }
    return losses.nanmean(), kl, metrics


def stored_grads(grads, params_map, full):
    """The ONNX-layout gradients the file keeps (all, or the RMSNorm weights' and
    SUBSET_GRADS'), rounded to GRAD_DIGITS significant digits."""
    og = dpo.onnx_grads(MODEL, params_map, grads, None)[f"models/{ONNX_FILE}"]
    keep = {k: v for k, v in og.items() if full or v["param"] in SUBSET_GRADS or v["param"].endswith("norm.weight")}
    for v in keep.values():
        v["values"] = [float(f"{x:.{GRAD_DIGITS}g}") for x in v["values"]]
    return keep


def main():
    # The oracle's OpenBLAS kernels (gen_dpo_oracle.py): the process restarts with them.
    env = dict(os.environ, OPENBLAS_CORETYPE=dpo.ORACLE_CORETYPE)
    if os.environ.get("OPENBLAS_CORETYPE") != env["OPENBLAS_CORETYPE"]:
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)
    torch.set_num_threads(1)
    pad_id, _, _ = special_ids()
    _, pair_rows = dpo.make_batch(pad_id)
    rows, labels = unpaired_rows(pair_rows)
    kls = kl_rows(rows)
    batch = pad_batch(rows + kls, pad_id)
    ids, att, pos, comp = batch
    n = len(rows)
    with open(os.path.join(HERE, "models", "params_map.json")) as f:
        params_map = json.load(f)

    with torch.no_grad():
        ref_all = dpo.policy_logps(dpo.load(dpo.OTHER[MODEL], torch.float64), batch)
    m64 = dpo.load(MODEL, torch.float64)
    names = [name for name, _ in m64.named_parameters()]
    rng = random.Random(20260601)
    out_cases = []
    for c in CASES:
        ref, ref_kl = ref_all[:n], ref_all[n:] + c["ref_kl_shift"]
        m64.zero_grad(set_to_none=True)
        logps = dpo.policy_logps(m64, batch)
        loss, kl, metrics = trl_kto(logps, ref, ref_kl, labels, c)
        loss.backward()
        grads = {k: p.grad.detach().clone() for k, p in m64.named_parameters()}

        def f(model):
            with torch.no_grad():
                return trl_kto(dpo.policy_logps(model, batch), ref, ref_kl, labels, c, kl)[0].item()
        params = dict(m64.named_parameters())
        picks = [(p, rng.randrange(grads[p].numel())) for p in rng.sample(names, 6)]
        picks += [(p, int(grads[p].abs().view(-1).argmax())) for p in (names[0], names[-1])]
        worst = 0.0
        for p, idx in picks:
            flat = params[p].data.view(-1)
            old = flat[idx].item()
            flat[idx] = old + 1e-6
            up = f(m64)
            flat[idx] = old - 1e-6
            down = f(m64)
            flat[idx] = old
            fd, ag = (up - down) / 2e-6, grads[p].view(-1)[idx].item()
            worst = max(worst, abs(fd - ag) / max(abs(ag), 1e-8))
        assert worst < 1e-4, (c["name"], worst)
        og = stored_grads(grads, params_map, c["name"] in FULL_GRADS)
        raw_kl = (logps[n:].detach() - ref_kl).mean().item()
        print(f"{c['name']:26s} loss {loss.item():.12f}  kl {kl.item():.6f} (unclamped {raw_kl:.6f})  fd worst rel {worst:.1e}")
        out_cases.append(dict(c, **{
            "reference_logps_fed": ref.tolist(),
            "reference_KL_logps_fed": ref_kl.tolist(),
            "policy_logps": logps[:n].detach().tolist(),
            "policy_KL_logps": logps[n:].detach().tolist(),
            "kl_unclamped": raw_kl,
            "loss_float64": loss.item(),
            "metrics": metrics,
            "onnx_grads": {f"models/{ONNX_FILE}": og},
        }))
    assert any(x["kl_unclamped"] < 0 for x in out_cases) and any(x["metrics"]["kl"] > 0 for x in out_cases)

    out = {
        "model": MODEL, "torch_version": torch.__version__,
        "definitions": __doc__.split("Definitions (")[1].split("Gradients: float64")[0].strip(),
        "pad_id": pad_id,
        "prompt_ids": [p for p, _ in rows], "completion_ids": [c for _, c in rows], "labels": labels,
        "kl_prompt_ids": [p for p, _ in kls], "kl_completion_ids": [c for _, c in kls],
        "ref_model": dpo.OTHER[MODEL], "grad_rounding": f"{GRAD_DIGITS} significant digits", "cases": out_cases,
    }
    path = os.path.join(HERE, "expected", f"kto_oracle_{MODEL}.json.gz")
    print(f"wrote {path}: {dpo.write_gz(path, out)} bytes of JSON, {os.path.getsize(path)} gzipped")


if __name__ == "__main__":
    main()
