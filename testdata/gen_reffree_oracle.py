#!/usr/bin/env python3
"""Oracle for the reference-free preference losses, ORPO and CPO/SimPO (PyTorch autograd,
float64), llama tiny model.

    /usr/bin/python3 testdata/gen_reffree_oracle.py   # writes testdata/expected/reffree_oracle_llama.json.gz

Reuses gen_dpo_oracle.py's batch, model loading and output helpers (imported, not copied).

Definitions (TRL v1.x's ORPOTrainer and CPOTrainer, written out in orpo_loss and cpo_loss;
n pairs, rows chosen then rejected, right-padded; logits[t-1] predicts ids[t]):

* Completion log-probs: per row, log_softmax(logits[t-1])[ids[t]] over the completion
  tokens t >= 1 (TRL's labels[:, 1:] != -100), summed, or averaged over those tokens
  (ORPO always; CPO for ipo and simpo).
* ORPO: nll = cross-entropy over every non-padding token t >= 1 of the chosen rows, prompt
  included (TRL: "orpo chosen nll loss is computed over the full prompt and response"),
  averaged over all of them; with c, r the averaged log-probs,
  log_odds = (c - r) - (log1mexp(c) - log1mexp(r)), log1mexp(x) = log(1 - exp(x)) (TRL's
  branch at -ln 2); ratio = logsigmoid(log_odds); loss = nll - mean(beta * ratio);
  metrics nll_loss, log_odds_ratio = mean(ratio), log_odds_chosen = mean(log_odds),
  rewards beta * c, beta * r.
* CPO: d = c - r (summed log-probs; averaged for ipo and simpo), eps = label_smoothing:
  sigmoid -(1-eps) logsigmoid(beta d) - eps logsigmoid(-beta d); simpo the same on
  d - simpo_gamma/beta; hinge relu(1 - beta d); ipo (d - 1/(2 beta))^2;
  nll = cross-entropy over the chosen rows' completion tokens, averaged over them (0 when
  cpo_alpha is 0); loss = mean(per-pair loss) + cpo_alpha * nll; rewards beta * c, beta * r.

Gradients: float64, w.r.t. every initializer of models/llama_opset17.onnx (ONNX layout,
gen_dpo_oracle.onnx_grads), rounded to 7 significant digits; cases outside FULL_GRADS keep
the RMSNorm weights' and SUBSET_GRADS' only (file size). Each case is checked against
central finite differences (h = 1e-6) on 6 entries. Deterministic output (OpenBLAS core
type pinned, one thread, gzip mtime 0).
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
from gen_expected_logps import special_ids  # noqa: E402

MODEL = "llama"
ONNX_FILE = "models/llama_opset17.onnx"
FULL_GRADS = {"orpo", "simpo"}
SUBSET_GRADS = {"model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"}
CASES = [
    {"name": "orpo", "method": "orpo", "beta": 0.1},
    {"name": "orpo_beta0.5", "method": "orpo", "beta": 0.5},
    {"name": "cpo_sigmoid", "method": "cpo", "loss_type": "sigmoid", "beta": 0.1, "cpo_alpha": 1.0},
    {"name": "cpo_sigmoid_ls0.1_alpha0.5", "method": "cpo", "loss_type": "sigmoid", "beta": 0.2,
     "cpo_alpha": 0.5, "label_smoothing": 0.1},
    {"name": "cpo_hinge", "method": "cpo", "loss_type": "hinge", "beta": 0.1, "cpo_alpha": 1.0},
    {"name": "cpo_ipo", "method": "cpo", "loss_type": "ipo", "beta": 0.1, "cpo_alpha": 1.0},
    {"name": "simpo", "method": "cpo", "loss_type": "simpo", "beta": 2.0, "cpo_alpha": 0.0, "simpo_gamma": 0.5},
    {"name": "simpo_ls0.1_alpha1", "method": "cpo", "loss_type": "simpo", "beta": 2.5, "cpo_alpha": 1.0,
     "simpo_gamma": 1.0, "label_smoothing": 0.1},
]


def log1mexp(x):
    """TRL's numerically stable log(1 - exp(x))."""
    t = -0.6931471805599453
    return torch.where(x < t, torch.log1p(-torch.exp(x.clamp_max(t))), torch.log(-torch.expm1(x)))


def completion_logps(logits, ids, comp, average):
    """TRL's get_batch_logps with labels = ids on completion tokens, -100 elsewhere."""
    labels = torch.where(comp == 1, ids, torch.full_like(ids, -100))[:, 1:]
    mask = labels != -100
    lp = torch.log_softmax(logits[:, :-1], -1)
    tok = torch.gather(lp, 2, torch.where(mask, labels, 0)[:, :, None]).squeeze(2) * mask
    return tok.sum(-1) / mask.sum(-1) if average else tok.sum(-1)


def nll(logits, labels):
    """TRL's cross_entropy_loss: shift, flatten, mean over labels != -100."""
    v = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, v), labels[:, 1:].reshape(-1), ignore_index=-100)


def orpo_loss(logits, batch, c):
    ids, att, _, comp = batch
    n = ids.shape[0] // 2
    full = torch.where(att == 1, ids, torch.full_like(ids, -100))
    nll_loss = nll(logits[:n], full[:n])
    avg = completion_logps(logits, ids, comp, True)
    ch, rj = avg[:n], avg[n:]
    log_odds = (ch - rj) - (log1mexp(ch) - log1mexp(rj))
    ratio = F.logsigmoid(log_odds)
    loss = nll_loss - (c["beta"] * ratio).mean()
    return loss, avg, {"nll_loss": nll_loss.item(), "log_odds_ratio": ratio.mean().item(),
                       "log_odds_chosen": log_odds.mean().item()}


def cpo_loss(logits, batch, c):
    ids, _, _, comp = batch
    n = ids.shape[0] // 2
    beta, eps, t = c["beta"], c.get("label_smoothing", 0.0), c["loss_type"]
    logps = completion_logps(logits, ids, comp, t in ("ipo", "simpo"))
    d = logps[:n] - logps[n:]
    if t == "simpo":
        d = d - c["simpo_gamma"] / beta
    if t in ("sigmoid", "simpo"):
        losses = -F.logsigmoid(beta * d) * (1 - eps) - F.logsigmoid(-beta * d) * eps
    elif t == "hinge":
        losses = torch.relu(1 - beta * d)
    elif t == "ipo":
        losses = (d - 1 / (2 * beta)) ** 2
    if c["cpo_alpha"] == 0:
        nll_loss = torch.zeros((), dtype=logits.dtype)
    else:
        labels = torch.where(comp == 1, ids, torch.full_like(ids, -100))
        nll_loss = nll(logits[:n], labels[:n])
    loss = losses.mean() + c["cpo_alpha"] * nll_loss
    return loss, logps, {"nll_loss": nll_loss.item()}


def case_loss(model, batch, c):
    f = orpo_loss if c["method"] == "orpo" else cpo_loss
    return f(dpo.fwd(model, batch), batch, c)


def main():
    if os.environ.get("OPENBLAS_CORETYPE") != dpo.ORACLE_CORETYPE:
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:],
                  dict(os.environ, OPENBLAS_CORETYPE=dpo.ORACLE_CORETYPE))
    torch.set_num_threads(1)
    pad_id, _, _ = special_ids()
    batch, rows = dpo.make_batch(pad_id)
    ids, att, pos, comp = batch
    assert (comp[:, 0] == 0).all()
    with open(os.path.join(HERE, "models", "params_map.json")) as f:
        params_map = json.load(f)
    model = dpo.load(MODEL, torch.float64)
    params = dict(model.named_parameters())
    names = list(params)
    rng = random.Random(20250611)
    n = dpo.N_PAIRS
    cases = []
    for c in CASES:
        model.zero_grad(set_to_none=True)
        loss, logps, metrics = case_loss(model, batch, c)
        loss.backward()
        grads = {k: p.grad.detach().clone() for k, p in params.items()}
        fd_worst = 0.0
        for name in rng.sample(names, 6):
            idx = rng.randrange(grads[name].numel())
            flat = params[name].data.view(-1)
            old, vals = flat[idx].item(), []
            for x in (old + 1e-6, old - 1e-6):
                flat[idx] = x
                with torch.no_grad():
                    vals.append(case_loss(model, batch, c)[0].item())
            flat[idx] = old
            fd, ag = (vals[0] - vals[1]) / 2e-6, grads[name].view(-1)[idx].item()
            fd_worst = max(fd_worst, abs(fd - ag) / max(abs(ag), 1e-8))
        assert fd_worst < 1e-4, (c["name"], fd_worst)
        og = dpo.onnx_grads(MODEL, params_map, grads, None)[ONNX_FILE]
        if c["name"] not in FULL_GRADS:
            og = {k: v for k, v in og.items() if v["param"] in SUBSET_GRADS or v["param"].endswith("norm.weight")}
        for v in og.values():
            v["values"] = [float(f"{x:.7g}") for x in v["values"]]
        lp = logps.detach()
        b = c["beta"]
        metrics.update({
            "rewards/chosen": (b * lp[:n]).mean().item(), "rewards/rejected": (b * lp[n:]).mean().item(),
            "rewards/accuracies": (b * lp[:n] > b * lp[n:]).double().mean().item(),
            "rewards/margins": (b * (lp[:n] - lp[n:])).mean().item(),
            "logps/chosen": lp[:n].mean().item(), "logps/rejected": lp[n:].mean().item(),
        })
        print(f"{c['name']:28s} loss {loss.item():.12f}  " + "  ".join(f"{k} {v:.6f}" for k, v in metrics.items()
              if k in ("nll_loss", "log_odds_ratio", "log_odds_chosen")) + f"  fd worst rel {fd_worst:.1e}")
        cases.append(dict(c, loss=loss.item(), logps=lp.tolist(), metrics=metrics, onnx_grads=og))
    out = {
        "model": MODEL, "torch_version": torch.__version__,
        "definitions": __doc__.split("Definitions (")[1].split("Gradients: float64")[0].strip(),
        "pad_id": pad_id, "n_pairs": n, "input_ids": ids.tolist(),
        "prompt_len": [len(p) for p, _ in rows], "seq_len": [len(p) + len(c) for p, c in rows],
        "cases": cases,
    }
    path = os.path.join(HERE, "expected", f"reffree_oracle_{MODEL}.json.gz")
    raw = dpo.write_gz(path, out)
    print(f"wrote {path} ({os.path.getsize(path)} bytes gz, {raw} raw)")


if __name__ == "__main__":
    main()
