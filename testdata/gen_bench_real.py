#!/usr/bin/env python3
"""Real-size benchmark models and PyTorch eager baselines (scripts/bench.sh --real).

Random-init models of two real shapes, built from tinymodels.py's LlamaLM (RMSNorm, RoPE,
grouped-query attention with repeat_kv, SwiGLU) with tied embeddings, and q/k/v biases for
Qwen2:

  smollm2   SmolLM2-135M: hidden 576, 30 layers, 9/3 heads, intermediate 1536, vocab 49152,
            rope_theta 100000, rms eps 1e-5; 134.5M parameters
  qwen2.5   Qwen2.5-0.5B: hidden 896, 24 layers, 14/2 heads, intermediate 4864, vocab
            151936, rope_theta 1e6, rms eps 1e-6, q/k/v biases; 494M parameters

Weights are random (seed 5); nothing is downloaded. Files go to git-ignored testdata/bench/.

  gen_bench_real.py export SHAPE                 testdata/bench/SHAPE.onnx (opset 17,
        inputs input_ids, attention_mask, position_ids [batch, sequence], output logits) and
        SHAPE.pt (the same weights for the PyTorch runs). smollm2 is exported with constant
        folding, so the tied lm_head is a transposed copy of the embedding, as exports of
        SmolLM2 are; qwen2.5 without (a folded copy would take the model past protobuf's 2 GB).
  gen_bench_real.py data SHAPE --seq T [--pairs 2] OUT.jsonl
        pre-tokenized preference pairs (prompt T/2 tokens, chosen and rejected T/2 each).
  gen_bench_real.py score SHAPE --seq T --batch B --threads N
        PyTorch eager scoring tokens/s (forward + log_softmax + gather + masked sum).
  gen_bench_real.py dpo SHAPE --data D.jsonl --steps S --threads N --out DIR
        the same whole run as `ortalign dpo --batch-size PAIRS --max-steps S`: load SHAPE.pt,
        reference log-probs of the starting model (no grad), S steps of sigmoid DPO (beta
        0.1) with AdamW and grad-norm clipping 1.0, then save the model and the optimizer
        state (what a TRL checkpoint holds). Prints one JSON line: load, start-up (process
        start to first step), step and save seconds, peak RSS.
  gen_bench_real.py table RESULTS_DIR
        the markdown table of scripts/bench.sh --real's results (ort_dpo_T.json from watch,
        torch_dpo_T.json, ort_score.txt, torch_score.json).
  gen_bench_real.py watch OUT.json [--first-line FILE] -- CMD...
        runs CMD, samples its RSS (VmRSS, VmHWM from /proc) every 50 ms, notes when FILE
        first has a line (metrics.jsonl: the first step is done) and timestamps its output
        lines; writes the timeline and the peak to OUT.json and prints a summary line.
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time

T_START = time.time()

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.join(HERE, "bench")

SHAPES = {
    "smollm2": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, rms_norm_eps=1e-5,
                    rope_theta=100000.0, max_position_embeddings=8192),
    "qwen2.5": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                    num_attention_heads=14, num_key_value_heads=2, rms_norm_eps=1e-6,
                    rope_theta=1000000.0, max_position_embeddings=32768),
}
BIAS = {"smollm2": False, "qwen2.5": True}
FOLD = {"smollm2": True, "qwen2.5": False}


def rss_mb():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(shape, init=True):
    import torch.nn as nn
    sys.path.insert(0, HERE)
    import tinymodels as tm
    c = tm.LlamaConfig(**SHAPES[shape])
    m = tm.LlamaLM(c)
    if BIAS[shape]:
        for layer in m.model.layers:
            a = layer.self_attn
            a.q_proj = nn.Linear(c.hidden_size, a.nh * a.hd, bias=True)
            a.k_proj = nn.Linear(c.hidden_size, a.nkv * a.hd, bias=True)
            a.v_proj = nn.Linear(c.hidden_size, a.nkv * a.hd, bias=True)
    m.lm_head.weight = m.model.embed_tokens.weight  # tied, as both real models are
    if init:
        tm.init_weights(m, 5)
        # real-model scales: small projections keep 30 layers of random weights finite
        import torch
        g = torch.Generator().manual_seed(6)
        with torch.no_grad():
            for name, p in m.named_parameters():
                if name.endswith("proj.weight"):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02)
                elif name.endswith("embed_tokens.weight"):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return m.eval()


def load(shape):
    import torch
    m = build(shape, init=False)
    m.load_state_dict(torch.load(os.path.join(BENCH, shape + ".pt")))
    m.lm_head.weight = m.model.embed_tokens.weight
    return m


def export(a):
    import torch
    os.makedirs(BENCH, exist_ok=True)
    m = build(a.shape)
    torch.save(m.state_dict(), os.path.join(BENCH, a.shape + ".pt"))
    out = os.path.join(BENCH, a.shape + ".onnx")
    ids = torch.randint(0, 100, (2, 16))
    att = torch.ones(2, 16, dtype=torch.int64)
    pos = torch.arange(16).expand(2, 16).contiguous()
    dyn = {k: {0: "batch", 1: "sequence"} for k in ("input_ids", "attention_mask", "position_ids", "logits")}
    with torch.no_grad():
        torch.onnx.export(m, (ids, att, pos), out, input_names=["input_ids", "attention_mask", "position_ids"],
                          output_names=["logits"], dynamic_axes=dyn, opset_version=17,
                          do_constant_folding=FOLD[a.shape])
    n = sum(p.numel() for p in m.parameters())
    print(json.dumps({"mode": "export", "shape": a.shape, "path": out, "bytes": os.path.getsize(out),
                      "params": n, "seconds": time.time() - T_START, "peak_rss_mb": rss_mb()}))


def rows(vocab, seq, n, seed):
    import random
    r = random.Random(seed)
    return [[r.randrange(3, vocab) for _ in range(seq)] for _ in range(n)]


def data(a):
    vocab = SHAPES[a.shape]["vocab_size"]
    h = a.seq // 2
    with open(a.out, "w") as f:
        for i in range(a.pairs):
            p, c, r = rows(vocab, h, 3, 100 + i)
            f.write(json.dumps({"prompt_input_ids": p, "chosen_input_ids": c, "rejected_input_ids": r}) + "\n")


def completion_logps(logits, ids, comp):
    import torch
    lp = torch.log_softmax(logits[:, :-1], dim=-1)
    tok = torch.gather(lp, 2, ids[:, 1:, None]).squeeze(2)
    return (tok * comp[:, 1:].to(lp.dtype)).sum(-1)


def score(a):
    import torch
    torch.set_num_threads(a.threads)
    m = build(a.shape)
    vocab = SHAPES[a.shape]["vocab_size"]
    ids = torch.tensor(rows(vocab, a.seq, a.batch, 7))
    att = torch.ones_like(ids)
    pos = torch.arange(a.seq).expand_as(ids)
    comp = torch.zeros_like(ids)
    comp[:, a.seq // 2:] = 1

    def step():
        with torch.inference_mode():
            return completion_logps(m(ids, att, pos), ids, comp)

    step()
    n, t0 = 0, time.perf_counter()
    while n < a.iters or time.perf_counter() - t0 < a.min_seconds:
        step()
        n += 1
    sec = (time.perf_counter() - t0) / n
    print(json.dumps({"mode": "torch-score", "shape": a.shape, "threads": a.threads, "batch": a.batch,
                      "seq": a.seq, "iters": n, "seconds_per_batch": sec,
                      "tokens_per_s": a.batch * a.seq / sec, "peak_rss_mb": rss_mb()}))


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def add_lora(m, r, alpha):
    """Wraps the attention and MLP projections as PEFT's LoRA does (A kaiming-uniform,
    B zero, y = x·Wᵀ + (alpha/r)·x·Aᵀ·Bᵀ, base frozen); returns the adapter parameters."""
    import math
    import torch
    from torch import nn

    class LoRALinear(nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base = base
            self.lora_A = nn.Parameter(torch.empty(r, base.in_features))
            self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            self.scale = alpha / r

        def forward(self, x):
            return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scale

    for p in m.parameters():
        p.requires_grad_(False)
    params = []
    for name, mod in list(m.named_modules()):
        for child_name, child in list(mod.named_children()):
            if child_name in LORA_TARGETS and isinstance(child, nn.Linear):
                w = LoRALinear(child)
                setattr(mod, child_name, w)
                params += [w.lora_A, w.lora_B]
    return params


def dpo(a):
    import torch
    torch.set_num_threads(a.threads)
    t_import = time.time() - T_START
    pairs = [json.loads(l) for l in open(a.data)]
    m = load(a.shape).train()
    trained = add_lora(m, a.lora_r, a.lora_alpha) if a.lora_r > 0 else list(m.parameters())
    t_load = time.time() - T_START
    ids, comp = [], []
    for side in ("chosen_input_ids", "rejected_input_ids"):
        for p in pairs:
            ids.append(p["prompt_input_ids"] + p[side])
            comp.append([0] * len(p["prompt_input_ids"]) + [1] * len(p[side]))
    T = max(len(r) for r in ids)  # all rows have the same length here
    ids = torch.tensor(ids)
    comp = torch.tensor(comp)
    att = torch.ones_like(ids)
    pos = torch.arange(T).expand_as(ids)
    n = len(pairs)
    with torch.no_grad():
        ref = completion_logps(m(ids, att, pos), ids, comp)
    opt = torch.optim.AdamW(trained, lr=1e-6, weight_decay=0.0)
    t_first = time.time() - T_START
    steps = []
    for _ in range(a.steps):
        t0 = time.time()
        lp = completion_logps(m(ids, att, pos), ids, comp)
        logits = 0.1 * ((lp[:n] - lp[n:]) - (ref[:n] - ref[n:]))
        loss = -torch.nn.functional.logsigmoid(logits).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        steps.append(time.time() - t0)
    t0 = time.time()
    os.makedirs(a.out, exist_ok=True)
    if a.lora_r > 0:
        torch.save({i: p for i, p in enumerate(trained)}, os.path.join(a.out, "adapter.pt"))
    else:
        torch.save(m.state_dict(), os.path.join(a.out, "model.pt"))
    torch.save(opt.state_dict(), os.path.join(a.out, "optimizer.pt"))
    t_save = time.time() - t0
    print(json.dumps({"mode": "torch-dpo", "shape": a.shape, "lora_r": a.lora_r, "threads": a.threads, "pairs": n, "seq": T,
                      "steps": a.steps, "import_s": t_import, "load_s": t_load - t_import,
                      "startup_s": t_first, "step_s": steps, "save_s": t_save,
                      "wall_s": time.time() - T_START, "loss": loss.item(), "peak_rss_mb": rss_mb()}))


def watch(a):
    cmd = a.cmd
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    samples, lines, first = [], [], [None]

    def reader():
        buf = b""
        while True:
            ch = p.stdout.read1(4096) if hasattr(p.stdout, "read1") else p.stdout.read(1)
            if not ch:
                break
            buf += ch
            while True:
                i = min([j for j in (buf.find(b"\n"), buf.find(b"\r")) if j >= 0], default=-1)
                if i < 0:
                    break
                s = buf[:i].decode(errors="replace").strip()
                buf = buf[i + 1:]
                if s:
                    lines.append((round(time.time() - t0, 3), s))
        if buf.strip():
            lines.append((round(time.time() - t0, 3), buf.decode(errors="replace").strip()))

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    peak = 0
    while p.poll() is None:
        try:
            st = open(f"/proc/{p.pid}/status").read()
            rss = int(st.split("VmRSS:")[1].split()[0]) // 1024
            peak = max(peak, int(st.split("VmHWM:")[1].split()[0]) // 1024)
            samples.append((round(time.time() - t0, 3), rss))
        except (FileNotFoundError, IndexError, ProcessLookupError):
            pass
        if a.first_line and first[0] is None:
            try:
                with open(a.first_line) as f:
                    if f.readline().endswith("\n"):
                        first[0] = round(time.time() - t0, 3)
            except FileNotFoundError:
                pass
        time.sleep(0.05)
    th.join()
    import resource
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak = max(peak, ru.ru_maxrss // 1024)
    res = {"cmd": cmd, "rc": p.returncode, "wall_s": round(time.time() - t0, 3), "peak_rss_mb": peak,
           "first_line_s": first[0], "lines": lines, "samples": samples}
    with open(a.out, "w") as f:
        json.dump(res, f)
    print(json.dumps({k: res[k] for k in ("rc", "wall_s", "peak_rss_mb", "first_line_s")}))
    for t, s in lines[-5:]:
        print(f"  {t:8.2f}s {s[:200]}")
    sys.exit(p.returncode)


def ort_phases(w):
    """Start-up (to the line announcing training), step times and the end of an ortalign
    dpo run from the timestamped output lines that watch recorded."""
    import re
    start, steps, wrote = None, {}, None
    for t, line in w["lines"]:
        if start is None and re.match(r"training \d+ tensors of", line):
            start = t
        m = re.match(r"dpo: (\d+)/\d+ steps", line)
        if m and int(m.group(1)) not in steps:
            steps[int(m.group(1))] = t
        if line.startswith("wrote "):
            wrote = t
    times, prev = [], start
    for k in sorted(steps):
        if prev is not None:
            times.append(steps[k] - prev)
        prev = steps[k]
    return start, times, (wrote - prev if wrote is not None and prev is not None else None)


def table(a):
    import re
    d = a.results
    side_by_side(d, "dpo", "DPO, 2 pairs, 2 steps")
    side_by_side(d, "lora", "LoRA DPO (r 16, alpha 32), 2 pairs, 2 steps")
    scoring(d)


def side_by_side(d, kind, title):
    import glob
    import re
    gib = lambda mb: f"{mb / 1024:.1f} GiB"
    # ortalign opens its training graph when the first batch comes (its shape fixes the
    # graph's dimensions), so step 1 includes that: the fair start-up figure is process
    # start to the end of step 1, on both sides.
    rows = {"peak RSS, ortalign": [], "peak RSS, PyTorch": [], "start-up (process start to first step), ortalign": [],
            "start-up, PyTorch": [], "process start to end of step 1, ortalign": [],
            "process start to end of step 1, PyTorch": [],
            "DPO step, ortalign (steps 1, 2)": [], "DPO step, PyTorch (steps 1, 2)": [],
            "export + checkpoint / save, ortalign": [], "save (model + optimizer), PyTorch": [],
            "whole run (wall), ortalign": [], "whole run (wall), PyTorch": []}
    seqs = sorted({int(re.search(r"_(\d+)\.json$", f).group(1)) for f in glob.glob(os.path.join(d, f"*_{kind}_*.json"))})
    if not seqs:
        return
    for T in seqs:
        o = t = None
        try:
            o = json.load(open(os.path.join(d, f"ort_{kind}_{T}.json")))
        except (OSError, ValueError):
            pass
        try:
            t = json.load(open(os.path.join(d, f"torch_{kind}_{T}.json")))
        except (OSError, ValueError):
            pass
        if o and o["rc"] == 0:
            start, steps, end = ort_phases(o)
            rows["peak RSS, ortalign"].append(gib(o["peak_rss_mb"]))
            rows["start-up (process start to first step), ortalign"].append(f"{start:.1f} s" if start else "?")
            rows["process start to end of step 1, ortalign"].append(f"{start + steps[0]:.1f} s" if start and steps else "?")
            rows["DPO step, ortalign (steps 1, 2)"].append(", ".join(f"{x:.1f}" for x in steps) + " s")
            rows["export + checkpoint / save, ortalign"].append(f"{end:.1f} s" if end else "?")
            rows["whole run (wall), ortalign"].append(f"{o['wall_s']:.0f} s")
        else:
            for k in rows:
                if k.endswith("ortalign") or "ortalign (" in k or ", ortalign" in k:
                    rows[k].append("failed" if o else "–")
        if t:
            rows["peak RSS, PyTorch"].append(gib(t["peak_rss_mb"]))
            rows["start-up, PyTorch"].append(f"{t['startup_s']:.1f} s")
            rows["process start to end of step 1, PyTorch"].append(f"{t['startup_s'] + t['step_s'][0]:.1f} s")
            rows["DPO step, PyTorch (steps 1, 2)"].append(", ".join(f"{x:.1f}" for x in t["step_s"]) + " s")
            rows["save (model + optimizer), PyTorch"].append(f"{t['save_s']:.1f} s")
            rows["whole run (wall), PyTorch"].append(f"{t['wall_s']:.0f} s")
        else:
            for k in rows:
                if "PyTorch" in k:
                    rows[k].append("–")
    print(f"\n| {title} | " + " | ".join(f"{T} tokens" for T in seqs) + " |")
    print("|---|" + "---|" * len(seqs))
    for k, v in rows.items():
        print(f"| {k} | " + " | ".join(v) + " |")


def scoring(d):
    import re
    try:
        ts = json.load(open(os.path.join(d, "torch_score.json")))
        txt = open(os.path.join(d, "ort_score.txt")).read()
        m = re.search(r"([\d.]+) tokens/s", txt)
        if m:
            o = float(m.group(1))
            print(f"\nScoring {ts['batch']} x {ts['seq']} tokens, {ts['threads']} threads: ortalign {o:.0f} tokens/s, "
                  f"PyTorch {ts['tokens_per_s']:.0f} tokens/s ({o / ts['tokens_per_s']:.1f}x).")
    except (OSError, ValueError, KeyError):
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    e = sub.add_parser("export")
    e.add_argument("shape", choices=SHAPES)
    d = sub.add_parser("data")
    d.add_argument("shape", choices=SHAPES)
    d.add_argument("out")
    d.add_argument("--seq", type=int, required=True)
    d.add_argument("--pairs", type=int, default=2)
    s = sub.add_parser("score")
    s.add_argument("shape", choices=SHAPES)
    s.add_argument("--seq", type=int, default=256)
    s.add_argument("--batch", type=int, default=4)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--iters", type=int, default=3)
    s.add_argument("--min-seconds", type=float, default=5.0)
    p = sub.add_parser("dpo")
    p.add_argument("shape", choices=SHAPES)
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    p.add_argument("--lora-r", type=int, default=0)
    p.add_argument("--lora-alpha", type=float, default=32)
    tb = sub.add_parser("table")
    tb.add_argument("results")
    w = sub.add_parser("watch")
    w.add_argument("out")
    w.add_argument("--first-line")
    argv, cmd = sys.argv[1:], []
    if "--" in argv:
        i = argv.index("--")
        argv, cmd = argv[:i], argv[i + 1:]
    a = ap.parse_args(argv)
    a.cmd = cmd
    {"export": export, "data": data, "score": score, "dpo": dpo, "watch": watch, "table": table}[a.mode](a)


if __name__ == "__main__":
    main()
