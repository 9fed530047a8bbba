#!/usr/bin/env python3
"""DPO oracle for the tiny test models (PyTorch autograd), and the PyTorch side of the DPO
step benchmark (issue 4).

    /usr/bin/python3 testdata/gen_dpo_oracle.py              # writes testdata/expected/dpo_*
    /usr/bin/python3 testdata/gen_dpo_oracle.py --bench      # PyTorch eager DPO step timing (JSON)

Definitions shared with the Go side (also in testdata/README.md):

* Batch: the first 4 pairs of data/train_tokenized.jsonl (rows 0..3). Each sequence is
  prompt_input_ids + chosen_input_ids (resp. rejected_input_ids), no truncation (the EOS id
  510 is already the last completion id). Batch rows: the 4 chosen sequences, then the 4
  rejected ones (row i and row i+4 are pair i), right-padded with the pad id 511 to the
  longest; attention_mask 1 on real tokens, 0 on padding; position_ids 0..T-1 on every row
  (fed to llama only). This is batch `train_pairs_0_3` of expected/logps.json.
* Sequence log-prob: SUM over completion positions t (len(prompt) <= t < len(seq)) of
  log_softmax(logits[t-1])[ids[t]].
* Reference log-probs: fixed constants stored in the oracle files: the float64 log-probs of
  the same 8 sequences under the OTHER tiny model at its committed weights (llama's are
  gpt2's reference and vice versa), so that reference != policy and the loss is not log 2.
* DPO sigmoid loss (TRL v1.x, label_smoothing 0), beta = 0.1:
      logits = (pc - pr) - (rc - rr)            per pair; p = policy, r = reference,
      loss   = mean over pairs of -logsigmoid(beta * logits)      c = chosen, r = rejected
  TRL metrics: rewards/chosen = mean beta*(pc-rc), rewards/rejected = mean beta*(pr-rr),
  rewards/accuracies = mean(beta*(pc-rc) > beta*(pr-rr)), rewards/margins = mean of the
  difference, logps/chosen = mean pc, logps/rejected = mean pr; logits/chosen (rejected) =
  the mean of every logit at the positions that predict a completion token of the chosen
  (rejected) rows, pooled (AdamW curves).
* Gradients in float64 (model.double()); the float32 loss is recorded too.
* GPT-2 tie: tinymodels.GPT2LM uses ONE Parameter (transformer.wte.weight) for the
  embedding and the lm_head. torch.onnx.export writes the lm_head use as a second,
  transposed initializer, so the plain GPT-2 ONNX files train as an UNTIED model. The
  "untied" model here is the same network with a separate lm_head.weight [vocab, n_embd]
  Parameter initialised to a copy of wte: identical forward, and
  grad_tied(wte) = grad_untied(wte) + grad_untied(lm_head).
* SGD check (lr 1, weight_decay 0, one full-batch step): new = old - grad. The Go test
  derives it from the gradients; loss_after_sgd_step records the loss at the new weights.
* AdamW: torch.optim.AdamW(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
  amsgrad=False, foreach=False), constant lr, NO gradient clipping, 20 full-batch steps on
  the same batch with the same fixed reference; step k (1-based, TRL's numbering) records the
  loss/metrics of its forward (before its update) and grad_norm = total L2 norm over all
  parameter gradients (before the update). Runs in float32 and float64.

Outputs (deterministic: torch.set_num_threads(1), gzip mtime 0):
  expected/dpo_grads_gpt2.json.gz, expected/dpo_grads_llama.json.gz
  expected/dpo_adamw_gpt2.json,    expected/dpo_adamw_llama.json
See testdata/README.md for the schemas.

--bench: the GPT-2 benchmark model of gen_bench.py (n_embd 256, 4 layers, 4 heads, vocab
8192; imported from there) on 8 pairs x 128 tokens (random ids, completion = second half of
each row). Timed step: policy forward on chosen+rejected, DPO loss against reference log-probs
computed once up front (not timed, as `ortalign dpo` does), backward, AdamW step. Each thread
setting runs in its own subprocess (so peak RSS is per setting) with torch.set_num_threads(N)
and OMP_NUM_THREADS = OPENBLAS_NUM_THREADS = N. Prints one JSON object.
"""
import argparse
import copy
import gzip
import io
import json
import math
import os
import random
import re
import resource
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import tinymodels as tm  # noqa: E402
from gen_expected_logps import MODEL_FILES, pad_batch, pair_rows, special_ids  # noqa: E402

BETA = 0.1
N_PAIRS = 4
ADAMW = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}
ADAMW_STEPS = 20
SIG_DIGITS = 10
MODELS = ("gpt2", "llama")
ORACLE_CORETYPE = "Prescott"  # OpenBLAS kernels for the oracle run (SSE3: any x86-64 CPU)
OTHER = {"gpt2": "llama", "llama": "gpt2"}


# ----------------------------------------------------------------------------- models
class UntiedGPT2(nn.Module):
    """tinymodels.GPT2LM with a separate lm_head.weight [vocab, n_embd] initialised to a copy
    of wte: what the plain GPT-2 ONNX exports train as (two initializers)."""

    def __init__(self, tied: tm.GPT2LM):
        super().__init__()
        self.config = tied.config
        self.transformer = copy.deepcopy(tied.transformer)
        w = tied.transformer.wte.weight
        self.lm_head = nn.Linear(tied.config.n_embd, tied.config.vocab_size, bias=False).to(w.dtype)
        with torch.no_grad():
            self.lm_head.weight.copy_(w)

    def forward(self, input_ids, attention_mask):
        # same as tinymodels.GPT2LM.forward except the last line
        T = input_ids.shape[1]
        pos = torch.arange(T, device=input_ids.device)
        t = self.transformer
        x = t.wte(input_ids) + t.wpe(pos)[None]
        key_mask = (attention_mask != 0)[:, None, None, :]
        for blk in t.h:
            x = blk(x, key_mask)
        return self.lm_head(t.ln_f(x))


def load(name, dtype):
    m = tm.load(os.path.join(HERE, "models", f"{name}.pt"))
    return m.to(dtype)


def fwd(model, batch):
    ids, att, pos, _ = batch
    if isinstance(model, UntiedGPT2):
        return model(ids, att)
    return tm.forward(model, ids, att, pos)


def policy_logps(model, batch):
    logps, _ = tm.completion_logps(fwd(model, batch), batch[0], batch[3])
    return logps


# ----------------------------------------------------------------------------- DPO
def dpo_loss(logps, ref, beta=BETA):
    """TRL v1.x sigmoid loss (label_smoothing 0) and metrics. logps, ref: [2n] chosen then rejected."""
    n = logps.shape[0] // 2
    pc, pr = logps[:n], logps[n:]
    rc, rr = ref[:n].to(logps.dtype), ref[n:].to(logps.dtype)
    logits = (pc - pr) - (rc - rr)
    loss = (-F.logsigmoid(beta * logits)).mean()
    rch = (beta * (pc - rc)).detach()
    rrj = (beta * (pr - rr)).detach()
    metrics = {
        "loss": loss.item(),
        "rewards/chosen": rch.mean().item(),
        "rewards/rejected": rrj.mean().item(),
        "rewards/accuracies": (rch > rrj).to(logps.dtype).mean().item(),
        "rewards/margins": (rch - rrj).mean().item(),
        "logps/chosen": pc.detach().mean().item(),
        "logps/rejected": pr.detach().mean().item(),
    }
    return loss, metrics


def loss_and_grads(model, batch, ref):
    model.zero_grad(set_to_none=True)
    logps = policy_logps(model, batch)
    loss, metrics = dpo_loss(logps, ref)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return loss.item(), metrics, logps.detach(), grads


def eval_loss(model, batch, ref):
    with torch.no_grad():
        return dpo_loss(policy_logps(model, batch), ref)[0].item()


# ----------------------------------------------------------------------------- helpers
def r(x):
    """float rounded to SIG_DIGITS significant digits (JSON writes the shortest repr)."""
    return float(f"{x:.{SIG_DIGITS}g}")


def tensor_json(t):
    return {"shape": list(t.shape), "values": [r(v) for v in t.detach().double().reshape(-1).tolist()]}


def write_gz(path, obj):
    raw = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as g:
        g.write(raw)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return len(raw)


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def make_batch(pad_id):
    with open(os.path.join(HERE, "data", "train_tokenized.jsonl")) as f:
        tokd = [json.loads(l) for l in f if l.strip()]
    rows = pair_rows(tokd[0:N_PAIRS])
    return pad_batch(rows, pad_id), rows


def fd_check(model, batch, ref, grads, picks, h=1e-6):
    """Central finite differences in float64 for (param_name, flat_index) picks."""
    params = dict(model.named_parameters())
    out = []
    for name, idx in picks:
        p = params[name]
        flat = p.data.view(-1)
        old = flat[idx].item()
        flat[idx] = old + h
        lp = eval_loss(model, batch, ref)
        flat[idx] = old - h
        lm = eval_loss(model, batch, ref)
        flat[idx] = old
        fd = (lp - lm) / (2 * h)
        ag = grads[name].view(-1)[idx].item()
        err = abs(fd - ag) / max(abs(ag), 1e-8)
        out.append({"param": name, "index": idx, "autograd": ag, "finite_difference": fd,
                    "rel_err": err})
    return out


def fd_picks(model, grads, rng, n_random=8):
    names = [n for n, _ in model.named_parameters()]
    picks = []
    for name in rng.sample(names, min(n_random, len(names))):
        picks.append((name, rng.randrange(grads[name].numel())))
    for name in names[:1] + names[-1:]:  # embeddings / head: the largest-gradient entry
        picks.append((name, int(grads[name].abs().view(-1).argmax())))
    return picks


# ----------------------------------------------------------------------------- oracle
def onnx_grads(name, params_map, grads_main, grads_untied):
    """{onnx_file: {initializer: {param, transpose, shape, values}}} in ONNX layout.

    For a file where several initializers map to one PyTorch parameter (the plain GPT-2
    exports: the embedding and a transposed lm_head copy of wte), each initializer gets the
    gradient of its own use only (the untied model's): transpose=false -> the embedding
    (Gather) use, transpose=true -> the lm_head use."""
    out = {}
    for f in MODEL_FILES[name]:
        m = params_map[f]
        users = {}
        for init, info in m.items():
            if info is not None:
                users.setdefault(info["param"], []).append(init)
        entries = {}
        for init, info in m.items():
            if info is None:
                entries[init] = None
                continue
            p, tr = info["param"], info["transpose"]
            g = grads_main[p]
            use = "all"
            if len(users[p]) > 1:
                assert name == "gpt2" and p == "transformer.wte.weight", (f, init, p)
                if tr:
                    g, use = grads_untied["lm_head.weight"], "lm_head"
                else:
                    g, use = grads_untied["transformer.wte.weight"], "embedding"
            if tr:
                g = g.t().contiguous()
            e = {"param": p, "transpose": tr, "use": use}
            e.update(tensor_json(g))
            entries[init] = e
        out[f"models/{f}"] = entries
    return out


def logits_metrics(logits, batch):
    """TRL's logits/chosen and logits/rejected: the mean of every logit at the positions
    t-1 that predict a completion token t, the chosen rows' (first half) pooled, then the
    rejected rows'."""
    m = batch[3][:, 1:].bool()
    lg = logits[:, :-1].detach()
    n = lg.shape[0] // 2
    return {"logits/chosen": lg[:n][m[:n]].mean().item(), "logits/rejected": lg[n:][m[n:]].mean().item()}


def adamw_curve(model, batch, ref, steps=ADAMW_STEPS):
    opt = torch.optim.AdamW(model.parameters(), lr=ADAMW["lr"], betas=ADAMW["betas"],
                            eps=ADAMW["eps"], weight_decay=ADAMW["weight_decay"],
                            amsgrad=False, foreach=False)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    rec = []
    for k in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        logits = fwd(model, batch)
        loss, metrics = dpo_loss(tm.completion_logps(logits, batch[0], batch[3])[0], ref)
        metrics.update(logits_metrics(logits, batch))
        loss.backward()
        gn = math.sqrt(sum(p.grad.double().pow(2).sum().item() for p in model.parameters()))
        row = {"step": k}
        row.update(metrics)
        row["grad_norm"] = gn
        row["learning_rate"] = ADAMW["lr"]
        rec.append(row)
        opt.step()
    delta = {n: (p.detach().double() - start[n].double()).norm().item()
             for n, p in model.named_parameters()}
    return {"steps": rec, "loss_after_last_step": eval_loss(model, batch, ref),
            "param_delta_l2": delta}


def oracle(a):
    if os.environ.get("OPENBLAS_CORETYPE") != ORACLE_CORETYPE:
        # float32 BLAS results depend on the kernel set OpenBLAS picks from the CPU; pin it
        # (before OpenBLAS loads, hence the re-exec) so the outputs are byte-identical on any
        # x86-64 machine with the same OpenBLAS. Float64 values move by ~1e-15 otherwise,
        # float32 AdamW curves by ~1e-6 relative.
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:],
                  dict(os.environ, OPENBLAS_CORETYPE=ORACLE_CORETYPE))
    torch.set_num_threads(1)
    pad_id, eos_id, vocab = special_ids()
    batch, rows = make_batch(pad_id)
    ids, att, pos, comp = batch
    with open(os.path.join(HERE, "models", "params_map.json")) as f:
        params_map = json.load(f)
    with open(os.path.join(HERE, "expected", "logps.json")) as f:
        logps_oracle = {b["model"]: b for b in json.load(f)["batches"] if b["name"] == "train_pairs_0_3"}

    # policy log-probs of every model at its committed weights (float64): the references
    init_lp = {}
    for name in MODELS:
        with torch.no_grad():
            init_lp[name] = policy_logps(load(name, torch.float64), batch)
        want = torch.tensor(logps_oracle[name]["logps_float64"], dtype=torch.float64)
        assert logps_oracle[name]["input_ids"] == ids.tolist()
        d = (init_lp[name] - want).abs().max().item()
        print(f"{name}: policy logps vs expected/logps.json train_pairs_0_3: max|diff| {d:.2e}")
        assert d < 1e-9, d

    os.makedirs(os.path.join(HERE, "expected"), exist_ok=True)
    rng = random.Random(20240601)
    for name in a.models:
        ref = init_lp[OTHER[name]].clone()
        m64 = load(name, torch.float64)
        loss64, metrics, lp64, grads = loss_and_grads(m64, batch, ref)
        assert (lp64 - init_lp[name]).abs().max().item() == 0.0
        m32 = load(name, torch.float32)
        with torch.no_grad():
            lp32 = policy_logps(m32, batch)
            loss32 = dpo_loss(lp32, ref.float())[0].item()
        print(f"{name}: loss float64 {loss64:.10f} float32 {loss32:.8f}  metrics {metrics}")

        grads_untied = None
        variants = {}
        if name == "gpt2":
            u64 = UntiedGPT2(m64)
            lu, _, lpu, grads_untied = loss_and_grads(u64, batch, ref)
            assert abs(lu - loss64) < 1e-12 and (lpu - lp64).abs().max().item() < 1e-12
            tie_err = (grads_untied["transformer.wte.weight"] + grads_untied["lm_head.weight"]
                       - grads["transformer.wte.weight"]).abs().max().item()
            print(f"gpt2: max|g_tied(wte) - (g_untied(wte) + g_untied(lm_head))| = {tie_err:.2e}")
            assert tie_err < 1e-12
            variants["untied"] = (u64, grads_untied)
        variants["tied" if name == "gpt2" else "untied"] = (m64, grads)

        # finite differences (float64) on a few entries of every variant
        fd = []
        for vname, (mod, g) in variants.items():
            for row in fd_check(mod, batch, ref, g, fd_picks(mod, g, rng)):
                row["model"] = vname
                fd.append(row)
        worst = max(x["rel_err"] for x in fd)
        for x in fd:
            print(f"  fd {x['model']:6s} {x['param']:40s} [{x['index']:6d}] autograd {x['autograd']: .6e} "
                  f"fd {x['finite_difference']: .6e} rel {x['rel_err']:.1e}")
        print(f"{name}: finite differences: worst rel err {worst:.1e} over {len(fd)} entries")
        assert worst < 1e-5, worst

        # one SGD step, lr 1, wd 0: new = old - grad
        sgd_after = {}
        for vname, (mod, g) in variants.items():
            mm = copy.deepcopy(mod)
            with torch.no_grad():
                for n, p in mm.named_parameters():
                    p.sub_(g[n])
            sgd_after[vname] = eval_loss(mm, batch, ref)

        out = {
            "model": name,
            "state_dict": f"models/{name}.pt",
            "torch_version": torch.__version__,
            "definitions": __doc__.split("Outputs (deterministic")[0].split("Definitions shared with the Go side (also in testdata/README.md):")[1].strip(),
            "pad_id": pad_id, "eos_id": eos_id, "vocab_size": vocab,
            "beta": BETA, "loss_type": "sigmoid", "label_smoothing": 0.0,
            "n_pairs": N_PAIRS,
            "source": "data/train_tokenized.jsonl rows 0-3; rows [0,4) chosen, [4,8) rejected",
            "input_ids": ids.tolist(),
            "attention_mask": att.tolist(),
            "position_ids": pos.tolist(),
            "completion_mask": comp.tolist(),
            "prompt_len": [len(p) for p, _ in rows],
            "completion_len": [len(c) for _, c in rows],
            "seq_len": [len(p) + len(c) for p, c in rows],
            "ref_model": OTHER[name],
            "ref_logps": ref.tolist(),
            "policy_logps_float64": lp64.tolist(),
            "policy_logps_float32": lp32.double().tolist(),
            "loss_float64": loss64,
            "loss_float32": loss32,
            "metrics": metrics,
            "grad_norm": math.sqrt(sum(g.pow(2).sum().item() for g in grads.values())),
            "grad_rounding": f"{SIG_DIGITS} significant digits",
            "grads": {n: tensor_json(g) for n, g in grads.items()},
            "grads_untied": None if grads_untied is None else
            {n: tensor_json(grads_untied[n]) for n in ("transformer.wte.weight", "lm_head.weight")},
            "grad_norm_untied": None if grads_untied is None else
            math.sqrt(sum(g.pow(2).sum().item() for g in grads_untied.values())),
            "onnx_grads": onnx_grads(name, params_map, grads, grads_untied),
            "sgd": {"lr": 1.0, "weight_decay": 0.0, "rule": "new = old - grad (every parameter, ONNX layout: onnx_grads)",
                    "loss_after_sgd_step": sgd_after},
            "fd_check": fd,
        }
        path = os.path.join(HERE, "expected", f"dpo_grads_{name}.json.gz")
        raw = write_gz(path, out)
        print(f"wrote {path} ({os.path.getsize(path)} bytes gz, {raw} raw); sgd loss after: {sgd_after}")

        if a.no_adamw:
            continue
        curves = {}
        kinds = [("tied", lambda m: m), ("untied", UntiedGPT2)] if name == "gpt2" else [("untied", lambda m: m)]
        for vname, mk in kinds:
            curves[vname] = {}
            for dt, dname in ((torch.float32, "float32"), (torch.float64, "float64")):
                t0 = time.time()
                curves[vname][dname] = adamw_curve(mk(load(name, dt)), batch, ref if dt == torch.float64 else ref.float())
                st = curves[vname][dname]["steps"]
                print(f"{name} {vname} {dname}: loss {st[0]['loss']:.6f} -> {st[-1]['loss']:.6f} -> "
                      f"{curves[vname][dname]['loss_after_last_step']:.6f}  ({time.time() - t0:.1f}s)")
            l32 = [s["loss"] for s in curves[vname]["float32"]["steps"]]
            l64 = [s["loss"] for s in curves[vname]["float64"]["steps"]]
            print(f"  max rel |f32-f64| loss over the curve: {max(abs(x - y) / abs(y) for x, y in zip(l32, l64)):.1e}")
        files_for = {"tied": ["models/gpt2_tied_opset17.onnx"],
                     "untied": [f"models/{f}" for f in MODEL_FILES[name] if "tied" not in f]}
        adam = {
            "model": name,
            "state_dict": f"models/{name}.pt",
            "torch_version": torch.__version__,
            "batch": f"the batch of dpo_grads_{name}.json.gz (data/train_tokenized.jsonl rows 0-3, chosen rows then rejected rows)",
            "ref_model": OTHER[name],
            "ref_logps": ref.tolist(),
            "beta": BETA, "loss_type": "sigmoid", "label_smoothing": 0.0,
            "optimizer": {"name": "AdamW", "impl": "torch.optim.AdamW(foreach=False)", "lr": ADAMW["lr"],
                          "betas": list(ADAMW["betas"]), "eps": ADAMW["eps"],
                          "weight_decay": ADAMW["weight_decay"], "amsgrad": False,
                          "schedule": "constant", "max_grad_norm": None},
            "n_steps": ADAMW_STEPS,
            "step_semantics": "step k (1-based) = loss/metrics of the forward before the k-th update; "
                              "grad_norm = L2 norm over all parameter gradients of that forward, unclipped",
            "curve_onnx_files": {k: files_for[k] for k in curves},
            "curves": curves,
        }
        path = os.path.join(HERE, "expected", f"dpo_adamw_{name}.json")
        write_json(path, adam)
        print(f"wrote {path} ({os.path.getsize(path)} bytes)")


# ----------------------------------------------------------------------------- bench
def blas_report():
    cfg = torch.__config__.show()
    rep = {"torch_config_blas": re.findall(r"\b(?:BLAS_INFO|LAPACK_INFO)=[^,\s]*", cfg)}
    try:
        alt = subprocess.run(["update-alternatives", "--display", "libblas.so.3-x86_64-linux-gnu"],
                             capture_output=True, text=True, timeout=10).stdout
        rep["update_alternatives_libblas"] = [l.strip() for l in alt.splitlines() if "currently points" in l
                                              or "auto mode" in l or "manual mode" in l]
    except (OSError, subprocess.SubprocessError) as e:
        rep["update_alternatives_libblas"] = f"unavailable: {e}"
    torch.mm(torch.randn(64, 64), torch.randn(64, 64))
    libs = set()
    with open("/proc/self/maps") as f:
        for line in f:
            p = line.split()[-1] if len(line.split()) >= 6 else ""
            if any(s in os.path.basename(p).lower() for s in ("blas", "lapack", "mkl")):
                libs.add(os.path.realpath(p))
    rep["loaded_blas_libraries"] = sorted(libs)
    rep["openblas"] = any("openblas" in l for l in libs)
    if not rep["openblas"]:
        rep["how_to_select_openblas"] = (
            "apt-get install libopenblas0-pthread; update-alternatives --set libblas.so.3-x86_64-linux-gnu "
            "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 (and liblapack.so.3-x86_64-linux-gnu "
            "likewise), or LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-pthread for one process")
    return rep


def matmul_gflops(min_seconds):
    """Measured float32 MatMul throughput (the FLOP-utilisation denominator)."""
    res = {}
    for (m, k, n) in ((1024, 1024, 1024), (2048, 256, 8192), (2048, 256, 1024)):
        x, y = torch.randn(m, k), torch.randn(k, n)
        torch.mm(x, y)
        it, t0 = 0, time.perf_counter()
        while it < 3 or time.perf_counter() - t0 < min_seconds / 3:
            torch.mm(x, y)
            it += 1
        res[f"{m}x{k}x{n}"] = 2 * m * k * n * it / (time.perf_counter() - t0) / 1e9
    return res


def bench_one(a):
    import gen_bench as gb
    torch.set_num_threads(a.threads)
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    policy = gb.build(4).train()
    n_params = sum(p.numel() for p in policy.parameters())
    B, T = 2 * a.pairs, a.seq
    ids, att, comp = gb.batch(B, T)
    with torch.no_grad():  # reference log-probs once, up front (not timed)
        ref_lp, _ = tm.completion_logps(policy(ids, att), ids, comp)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-5, weight_decay=0.01)

    def step():
        lp, _ = tm.completion_logps(policy(ids, att), ids, comp)
        loss, _ = dpo_loss(lp, ref_lp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    load_before = os.getloadavg()
    c0 = time.process_time()
    w0 = time.perf_counter()
    n, sec = gb.timed(step, a.min_seconds, a.min_iters)
    cpu_ratio = (time.process_time() - c0) / (time.perf_counter() - w0)
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mm = matmul_gflops(a.min_seconds)
    flops = 6 * n_params * B * T
    achieved = flops / sec / 1e9
    best_mm = max(mm.values())
    print(json.dumps({
        "mode": "dpo-step", "torch": torch.__version__, "threads": a.threads,
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
        "model": "gen_bench.build(heads=4): GPT-2 style, n_embd 256, 4 layers, 4 heads, vocab 8192, n_positions 128",
        "params": n_params, "pairs": a.pairs, "rows": B, "seq": T,
        "timed": "policy forward (chosen+rejected rows) + DPO sigmoid loss + backward + AdamW step",
        "iters": n, "seconds_per_step": sec, "tokens_per_s": B * T / sec, "pairs_per_s": a.pairs / sec,
        "cpu_time_over_wall": cpu_ratio,
        "loadavg_1min_before_after": [load_before[0], os.getloadavg()[0]],
        "peak_rss_mb": rss_peak / 1024, "rss_after_import_mb": rss_start / 1024,
        "flops_per_step_6NT": flops, "achieved_gflops": achieved,
        "matmul_gflops": mm, "flop_utilisation_vs_best_matmul": achieved / best_mm,
    }))


def cpu_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def auto_coretype():
    """The OpenBLAS kernel set this CPU supports. OpenBLAS picks its kernels from the CPUID
    model number; on VMs that report a generic model ("Intel(R) Xeon(R) Processor") its
    DYNAMIC_ARCH build falls back to Prescott (SSE3) kernels, 3-8x slower than the AVX2/AVX-512
    ones. OPENBLAS_CORETYPE overrides the choice."""
    fl = cpu_flags()
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= fl:
        return "SkylakeX"
    if {"avx2", "fma"} <= fl:
        return "Haswell"
    return ""


def bench(a):
    if a.threads:
        bench_one(a)
        return
    results = []
    coretypes = [auto_coretype() if c == "auto" else ("" if c == "default" else c) for c in a.coretypes]
    for ct in dict.fromkeys(coretypes):  # unique, in order
        for n in a.thread_list:
            env = dict(os.environ, OMP_NUM_THREADS=str(n), OPENBLAS_NUM_THREADS=str(n), OPENBLAS_VERBOSE="2")
            env.pop("OPENBLAS_CORETYPE", None)
            if ct:
                env["OPENBLAS_CORETYPE"] = ct
            cmd = [sys.executable, os.path.abspath(__file__), "--bench", "--threads", str(n),
                   "--pairs", str(a.pairs), "--seq", str(a.seq), "--min-seconds", str(a.min_seconds),
                   "--min-iters", str(a.min_iters)]
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            res = json.loads(p.stdout.strip().splitlines()[-1])
            core = re.findall(r"Core: (\S+)", p.stderr)
            res["openblas_coretype_env"] = ct or None
            res["openblas_core_used"] = core[-1] if core else None
            print(f"threads {n} OPENBLAS_CORETYPE={ct or '(unset)'} core {res['openblas_core_used']}: "
                  f"{res['seconds_per_step']:.3f} s/step, {res['tokens_per_s']:.0f} tokens/s, "
                  f"matmul {max(res['matmul_gflops'].values()):.0f} GFLOP/s", file=sys.stderr)
            results.append(res)
    best = max(results, key=lambda x: x["tokens_per_s"])
    print(json.dumps({"mode": "torch-dpo-step-bench", "blas": blas_report(), "nproc": os.cpu_count(),
                      "cpu_model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                                         if l.startswith("model name")), None),
                      "runs": results, "best_threads": best["threads"],
                      "best_openblas_coretype": best["openblas_coretype_env"],
                      "best_tokens_per_s": best["tokens_per_s"],
                      "best_seconds_per_step": best["seconds_per_step"],
                      "best_peak_rss_mb": best["peak_rss_mb"]}, indent=1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--no-adamw", action="store_true", help="skip the AdamW curves (dpo_adamw_*.json)")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="--bench: one setting, in this process")
    ap.add_argument("--thread-list", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--coretypes", nargs="+", default=["default", "auto"],
                    help="--bench: OPENBLAS_CORETYPE settings to try: default (unset), auto "
                         "(SkylakeX/Haswell from /proc/cpuinfo flags) or an OpenBLAS core name")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--min-iters", type=int, default=3)
    a = ap.parse_args()
    if a.bench:
        bench(a)
    else:
        oracle(a)


if __name__ == "__main__":
    main()
