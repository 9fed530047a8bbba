#!/usr/bin/env python3
"""Oracle for the preference losses (PyTorch autograd, float64), llama tiny model.

    /usr/bin/python3 testdata/gen_loss_oracle.py     # writes testdata/expected/loss_oracle_llama.json.gz

Run it after gen_dpo_oracle.py: it reuses that script's batch, model loading, log-prob and
output helpers (imported, not copied) and asserts that its batch, policy log-probs and
reference log-probs equal those stored in expected/dpo_grads_llama.json.gz.

Definitions (TRL v1.x DPOTrainer._compute_loss, written out in trl_loss below; p policy,
ref reference, c chosen, r rejected):

* Batch, policy (llama at its committed weights), reference (gpt2's float64 per-token
  log-probs of the same 8 rows, constants): those of dpo_grads_llama.json.gz. Log-probs are
  SUMS over completion tokens t >= 1 of log_softmax(logits[t-1])[ids[t]].
* LD-DPO (ld_alpha a): per pair, the first min(n_c, n_r) completion tokens count fully, the
  rest times a, for the policy and the reference alike; the reference log-probs fed to the
  Go graph (ref_logps_fed) are the weighted ones. reference_free: reference log-probs 0
  (ref_logps_fed are still the real ones: the graph must ignore them).
* Log-ratios lr = logp - ref; scores s by f_divergence_type: reverse_kl s = lr; forward_kl
  s = -exp(-lr); js_divergence s = logsigmoid(lr); alpha_divergence s = exp(min((a-1) lr, 80))
  / (a-1) (a = f_alpha_divergence_coef; a = 1 is reverse_kl). delta = s_c - s_r, z = beta delta.
* Per-pair losses: sigmoid -(1-eps) logsig(z) - eps logsig(-z) (cDPO: TRL < 1.0; TRL v1.x
  ignores eps here); hinge relu(1 - z); ipo (s_c/n_c - s_r/n_r - 1/(2 beta))^2 with n the
  row's completion_mask sum (at least 1); sigmoid_norm -logsig(beta (s_c/n_c - s_r/n_r));
  exo_pair sig(z)(logsig(z) - log1p(-eps)) + sig(-z)(logsig(-z) - log eps); nca_pair
  -logsig(beta s_c) - logsig(-beta s_c)/2 - logsig(-beta s_r)/2; robust ((1-eps)(-logsig(z))
  + eps logsig(-z))/(1-2 eps); bco_pair -logsig(beta s_c) - logsig(-beta s_r) (v1.x: no
  running mean); sppo_hard (s_c - 1/(2 beta))^2 + (s_r + 1/(2 beta))^2; aot smoothed DPO on
  sort(p_c - p_r) - sort(ref_c - ref_r); aot_unpaired on sort(lr_c) - sort(lr_r); apo_zero
  1 - sig(beta lr_c) + sig(beta lr_r); apo_down sig(beta lr_c) + 1 - sig(z); discopop
  m = sig(z/tau): -logsig(z)(1-m) + exp(-z) m; sft the cross-entropy over all chosen
  completion tokens of the batch (unweighted by LD), the same for every pair.
* use_weighting (WPO): per row w = exp(mean over completion tokens of logp_t - log sum_v
  p_v^2), computed without gradient; each pair's loss terms are multiplied by w_c w_r.
* loss = sum over loss types k of loss_weights[k] * mean over pairs of the per-pair loss.

Gradients: float64 (model.double()), w.r.t. every initializer of models/llama_opset17.onnx
(ONNX layout, as `onnx_grads` of dpo_grads_llama.json.gz; params_map.json), rounded to 6
significant digits (Go's tolerance is 1e-4 relative L2 per tensor); cases outside FULL_GRADS
keep the RMSNorm weights' and SUBSET_GRADS' gradients only (file size). Each case is checked against central finite differences (h = 1e-6) on
8 entries (WPO weights held at their value: they are constants to the gradient).
loss_float32 is the same loss with the float32 model (for scale only). Output is
deterministic (OpenBLAS core type pinned as in gen_dpo_oracle.py, one thread, gzip mtime 0).
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
import tinymodels as tm  # noqa: E402
from gen_expected_logps import special_ids  # noqa: E402

MODEL = "llama"
GRAD_DIGITS = 6
# Cases whose file holds the gradient of every initializer; the others hold those of the five
# RMSNorm weights and of SUBSET_GRADS (which every upstream gradient reaches), to keep the file small.
FULL_GRADS = {"sigmoid_ls0.1", "ipo", "hinge", "hinge_beta0.2", "sigmoid+sft_wpo", "sigmoid+sft_ld0.3"}
SUBSET_GRADS = {"model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"}
ONNX_FILE = "llama_opset17.onnx"


def case(name, types, beta=0.1, eps=0.0, **kw):
    c = {"name": name, "loss_type": types if isinstance(types, list) else [types], "beta": beta,
         "label_smoothing": eps, "loss_weights": None, "f_divergence_type": "reverse_kl",
         "f_alpha_divergence_coef": 1.0, "discopop_tau": 0.05, "use_weighting": False,
         "ld_alpha": None, "reference_free": False}
    c.update(kw)
    return c


CASES = [
    # sigmoid with label smoothing follows cDPO (TRL < 1.0), see the docstring.
    case("sigmoid_ls0.1", "sigmoid", eps=0.1),
    case("ipo", "ipo"),
    case("hinge", "hinge"),
    case("hinge_beta0.2", "hinge", beta=0.2),
    case("exo_pair", "exo_pair", eps=1e-3),
    case("exo_pair_ls0.1", "exo_pair", eps=0.1),
    case("nca_pair", "nca_pair"),
    case("robust_ls0.2", "robust", eps=0.2),
    case("bco_pair", "bco_pair"),
    case("sppo_hard", "sppo_hard"),
    case("aot", "aot"),
    case("aot_ls0.1", "aot", eps=0.1),
    case("aot_unpaired_ls0.1", "aot_unpaired", eps=0.1),
    case("apo_zero", "apo_zero"),
    case("apo_down", "apo_down"),
    case("discopop", "discopop", beta=0.5),
    case("sft", "sft"),
    case("sigmoid_norm", "sigmoid_norm", beta=2.0),
    case("sigmoid+sft", ["sigmoid", "sft"], loss_weights=[1.0, 0.5]),
    case("ipo+hinge+apo_zero", ["ipo", "hinge", "apo_zero"], loss_weights=[0.3, 1.0, 2.0]),
    case("sigmoid_forward_kl", "sigmoid", f_divergence_type="forward_kl"),
    case("sigmoid_js", "sigmoid", f_divergence_type="js_divergence"),
    case("sigmoid_alpha0.5", "sigmoid", f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.5),
    case("ipo_js", "ipo", f_divergence_type="js_divergence"),
    case("nca_pair_alpha1.5", "nca_pair", f_divergence_type="alpha_divergence", f_alpha_divergence_coef=1.5),
    case("sigmoid_wpo", "sigmoid", use_weighting=True),
    case("sigmoid+sft_wpo", ["sigmoid", "sft"], loss_weights=[1.0, 0.5], use_weighting=True),
    case("sigmoid_ld0.5", "sigmoid", ld_alpha=0.5),
    case("sigmoid+sft_ld0.3", ["sigmoid", "sft"], ld_alpha=0.3),
    case("sigmoid_reference_free", "sigmoid", reference_free=True),
    case("aot_reference_free", "aot", reference_free=True),
]


def ld_weighted(tok, mask, alpha):
    """TRL v1.x ld_alpha: tok, mask [2n, S-1] (shifted). Shared part + alpha * tail."""
    if alpha is None:
        return tok.sum(1)
    pos = mask.cumsum(dim=1)
    lens = mask.sum(dim=1).long()
    c, r = lens.chunk(2, dim=0)
    shared = torch.minimum(c, r)
    shared = torch.cat([shared, shared], dim=0)
    shared_mask = (pos > 0) & (pos <= shared.unsqueeze(1))
    tail_mask = pos > shared.unsqueeze(1)
    return (tok * shared_mask).sum(1) + alpha * (tok * tail_mask).sum(1)


def trl_loss(logits, ids, comp, ref_tok, c, weights=None):
    """TRL v1.x DPOTrainer._compute_loss on the model's logits [2n, S, V]; ref_tok is the reference
    model's masked per-token log-probs [2n, S-1]. Returns (loss, details). weights, when given,
    replaces the WPO weights (finite differences hold them fixed: TRL computes them under no_grad)."""
    beta, eps = c["beta"], c["label_smoothing"]
    shift_logits = logits[:, :-1]
    shift_labels = ids[:, 1:]
    mask = comp[:, 1:].to(logits.dtype)
    per_token = torch.gather(torch.log_softmax(shift_logits, -1), 2, shift_labels[:, :, None]).squeeze(2) * mask
    logps = ld_weighted(per_token, mask, c["ld_alpha"])
    ref = ld_weighted(ref_tok.to(logits.dtype), mask, c["ld_alpha"])
    if c["reference_free"]:
        ref = torch.zeros_like(ref)
    n = logps.shape[0] // 2
    cl, rl = logps[:n], logps[n:]
    rc, rr = ref[:n], ref[n:]
    clr, rlr = cl - rc, rl - rr
    f = c["f_divergence_type"]
    if f == "reverse_kl":
        cs, rs = clr, rlr
    elif f == "forward_kl":
        cs, rs = -torch.exp(-clr), -torch.exp(-rlr)
    elif f == "js_divergence":
        cs, rs = F.logsigmoid(clr), F.logsigmoid(rlr)
    elif f == "alpha_divergence":
        a = c["f_alpha_divergence_coef"]
        if abs(a - 1.0) < 1e-6:
            cs, rs = clr, rlr
        else:
            coef = 1.0 / (a - 1.0)
            cs = torch.exp(torch.clamp((a - 1.0) * clr, max=80.0)) * coef
            rs = torch.exp(torch.clamp((a - 1.0) * rlr, max=80.0)) * coef
    delta = cs - rs
    if c["use_weighting"] and weights is None:
        with torch.no_grad():
            lengths = mask.sum(dim=1).clamp_min(1)
            lse1 = torch.logsumexp(shift_logits, dim=-1)
            lse2 = torch.logsumexp(2.0 * shift_logits, dim=-1)
            aligned = (per_token - (lse2 - 2.0 * lse1)) * mask
            w = torch.exp(aligned.sum(dim=1) / lengths)
            weights = w[:n] * w[n:]
    counts = comp.sum(dim=1).to(logits.dtype).clamp(min=1.0)  # TRL: completion_mask.sum(dim=1)
    lw = c["loss_weights"] or [1.0] * len(c["loss_type"])
    loss = 0.0
    per_type = {}
    for t, w in zip(c["loss_type"], lw):
        z = beta * delta
        if t == "sigmoid":  # cDPO with label smoothing (TRL < 1.0); TRL v1.x: -logsigmoid(z)
            ps = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
        elif t == "hinge":
            ps = torch.relu(1 - z)
        elif t == "ipo":
            d = cs / counts[:n] - rs / counts[n:]
            ps = (d - 1 / (2 * beta)) ** 2
        elif t == "sigmoid_norm":
            d = cs / counts[:n] - rs / counts[n:]
            ps = -F.logsigmoid(beta * d)
        elif t == "exo_pair":
            e = torch.tensor(eps, dtype=logits.dtype)
            ps = torch.sigmoid(z) * (F.logsigmoid(z) - torch.log1p(-e)) + torch.sigmoid(-z) * (F.logsigmoid(-z) - torch.log(e))
        elif t == "nca_pair":
            a, b = beta * cs, beta * rs
            ps = -F.logsigmoid(a) - 0.5 * F.logsigmoid(-a) - 0.5 * F.logsigmoid(-b)
        elif t == "robust":
            ps = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
        elif t == "bco_pair":
            ps = -F.logsigmoid(beta * cs) - F.logsigmoid(-beta * rs)
        elif t == "sppo_hard":
            ps = (cs - 0.5 / beta) ** 2 + (rs + 0.5 / beta) ** 2
        elif t in ("aot", "aot_unpaired"):
            if t == "aot":
                d = torch.sort(cl - rl, dim=0)[0] - torch.sort(rc - rr, dim=0)[0]
            else:
                d = torch.sort(clr, dim=0)[0] - torch.sort(rlr, dim=0)[0]
            ps = -F.logsigmoid(beta * d) * (1 - eps) - F.logsigmoid(-beta * d) * eps
        elif t == "apo_zero":
            ps = (1 - torch.sigmoid(beta * clr)) + torch.sigmoid(beta * rlr)
        elif t == "apo_down":
            ps = torch.sigmoid(beta * clr) + (1 - torch.sigmoid(z))
        elif t == "discopop":
            mod = torch.sigmoid(z / c["discopop_tau"])
            ps = -F.logsigmoid(z) * (1 - mod) + torch.exp(-z) * mod
        elif t == "sft":
            cm = mask[:n].bool()
            ps = F.cross_entropy(shift_logits[:n][cm], shift_labels[:n][cm]).expand(n)
        else:
            raise ValueError(t)
        if c["use_weighting"]:
            ps = ps * weights
        per_type[t] = ps
        loss = loss + ps.mean() * w
    return loss, {"logps": logps, "ref": ref, "delta": delta, "weights": weights, "per_type": per_type}


def case_loss(model, batch, ref_tok, c, weights=None):
    ids, _, _, comp = batch
    return trl_loss(dpo.fwd(model, batch), ids, comp, ref_tok, c, weights)[0]


def fd_check(model, batch, ref_tok, c, grads, picks, weights, h=1e-6):
    params = dict(model.named_parameters())
    out = []
    for name, idx in picks:
        flat = params[name].data.view(-1)
        old = flat[idx].item()
        vals = []
        for x in (old + h, old - h):
            flat[idx] = x
            with torch.no_grad():
                vals.append(case_loss(model, batch, ref_tok, c, weights).item())
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

    with torch.no_grad():
        ref_tok = tm.completion_logps(dpo.fwd(dpo.load(dpo.OTHER[MODEL], torch.float64), batch), ids, comp)[1]
    assert ref_tok.sum(1).tolist() == ref.tolist()

    m64 = dpo.load(MODEL, torch.float64)
    m32 = dpo.load(MODEL, torch.float32)
    with torch.no_grad():
        lp32 = dpo.policy_logps(m32, batch)
    names = [n for n, _ in m64.named_parameters()]
    rng = random.Random(20240607)
    out_cases = []
    for c in CASES:
        m64.zero_grad(set_to_none=True)
        loss, d = trl_loss(dpo.fwd(m64, batch), ids, comp, ref_tok, c)
        if c["ld_alpha"] is None:
            assert d["logps"].detach().tolist() == base["policy_logps_float64"]
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in m64.named_parameters()}
        with torch.no_grad():
            loss32 = trl_loss(dpo.fwd(m32, batch), ids, comp, ref_tok.float(), c)[0].item()
        picks = [(n, rng.randrange(grads[n].numel())) for n in rng.sample(names, 6)]
        picks += [(n, int(grads[n].abs().view(-1).argmax())) for n in (names[0], names[-1])]
        fd = fd_check(m64, batch, ref_tok, c, grads, picks, d["weights"])
        worst = max(x["rel_err"] for x in fd)
        active = None
        if c["loss_type"] == ["hinge"]:
            active = int((1 - c["beta"] * d["delta"].detach() > 0).sum().item())
        og = dpo.onnx_grads(MODEL, params_map, grads, None)[f"models/{ONNX_FILE}"]
        if c["name"] not in FULL_GRADS:
            og = {k: v for k, v in og.items() if v["param"] in SUBSET_GRADS or v["param"].endswith("norm.weight")}
        for v in og.values():  # 6 significant digits: the Go test's tolerance is 1e-4 relative L2
            v["values"] = [float(f"{x:.{GRAD_DIGITS}g}") for x in v["values"]]
        gn = math.sqrt(sum(g.pow(2).sum().item() for g in grads.values()))
        print(f"{c['name']:24s} loss f64 {loss.item():.12f} f32 {loss32:.8f} "
              f"(rel {abs(loss32 - loss.item()) / abs(loss.item()):.1e})  grad_norm {gn:.6f}"
              + (f"  active pairs {active}/{dpo.N_PAIRS}" if active is not None else "")
              + f"  fd worst rel {worst:.1e}")
        assert worst < 1e-4, (c["name"], worst)
        out_cases.append(dict(c, **{
            "ref_logps_fed": d["ref"].detach().tolist() if not c["reference_free"] else ref.tolist(),
            "policy_logps": d["logps"].detach().tolist(),
            "delta": d["delta"].detach().tolist(),
            "wpo_weights": d["weights"].tolist() if d["weights"] is not None else None,
            "per_pair_loss": {t: v.detach().tolist() for t, v in d["per_type"].items()},
            "active_pairs": active,
            "loss_float64": loss.item(),
            "loss_float32": loss32,
            "grad_norm": gn,
            "onnx_grads": {f"models/{ONNX_FILE}": og},
            "fd_check": fd,
        }))

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
        "grad_rounding": f"{GRAD_DIGITS} significant digits",
        "cases": out_cases,
    }
    path = os.path.join(HERE, "expected", f"loss_oracle_{MODEL}.json.gz")
    raw = dpo.write_gz(path, out)
    print(f"wrote {path} ({os.path.getsize(path)} bytes gz, {raw} raw)")


if __name__ == "__main__":
    main()
