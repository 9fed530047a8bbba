#!/usr/bin/env python3
"""Benchmark model: the GPT-2 style model of tinymodels.py at a size worth timing.

n_embd 256, 4 layers, 4 heads (--heads 8 possible), vocab 8192, n_positions 128, random
init (seed 3); about 5.3M parameters, ~29 MB as ONNX. NOT committed
(testdata/bench/ is git-ignored): make it when needed.

  /usr/bin/python3 testdata/gen_bench.py [OUT.onnx]          export (opset 17 default)
      default OUT: testdata/bench/gpt2_bench.onnx; --opset 14|17
      inputs input_ids, attention_mask (int64 [batch, sequence]); output logits
      [batch, sequence, 8192]
  /usr/bin/python3 testdata/gen_bench.py --torch-bench --threads N [--batch 16 --seq 128]
      times PyTorch eager scoring, the baseline for `ortalign` scoring: forward + log_softmax
      + gather + masked sum over the completion (second half of each row), under
      torch.inference_mode, torch.set_num_threads(N); prints one JSON line with tokens/s
      (tokens = batch * seq per batch).
  /usr/bin/python3 testdata/gen_bench.py --torch-dpo-bench --threads N [--batch 16 --seq 128]
      times one DPO (sigmoid loss, beta 0.1) training step in PyTorch eager: reference
      forward without grad + policy forward + backward + AdamW step, on batch/2 pairs
      (chosen rows then rejected rows); prints one JSON line with pairs/s and tokens/s.
"""
import argparse
import copy
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import tinymodels as tm  # noqa: E402

VOCAB = 8192


def build(heads):
    return tm.build("gpt2", VOCAB, seed=3, n_embd=256, n_layer=4, n_head=heads, n_positions=128)


def batch(b, t, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (b, t), generator=g)
    att = torch.ones(b, t, dtype=torch.int64)
    comp = torch.zeros(b, t, dtype=torch.int64)
    comp[:, t // 2:] = 1
    return ids, att, comp


def timed(fn, min_seconds, min_iters):
    fn()  # warm-up
    fn()
    n, t0 = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - t0 < min_seconds:
        fn()
        n += 1
    return n, (time.perf_counter() - t0) / n


def torch_bench(a):
    torch.set_num_threads(a.threads)
    model = build(a.heads)
    ids, att, comp = batch(a.batch, a.seq)

    def step():
        with torch.inference_mode():
            logps, _ = tm.completion_logps(model(ids, att), ids, comp)
        return logps

    n, sec = timed(step, a.min_seconds, a.min_iters)
    print(json.dumps({"mode": "torch-bench", "torch": torch.__version__, "threads": a.threads,
                      "batch": a.batch, "seq": a.seq, "iters": n, "seconds_per_batch": sec,
                      "tokens_per_s": a.batch * a.seq / sec}))


def torch_dpo_bench(a):
    torch.set_num_threads(a.threads)
    policy = build(a.heads).train()
    ref = copy.deepcopy(policy).eval()
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-5)
    ids, att, comp = batch(a.batch, a.seq)
    n_pairs = a.batch // 2
    beta = 0.1

    def step():
        with torch.no_grad():
            ref_lp, _ = tm.completion_logps(ref(ids, att), ids, comp)
        lp, _ = tm.completion_logps(policy(ids, att), ids, comp)
        logits = beta * ((lp[:n_pairs] - lp[n_pairs:]) - (ref_lp[:n_pairs] - ref_lp[n_pairs:]))
        loss = -torch.nn.functional.logsigmoid(logits).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    n, sec = timed(step, a.min_seconds, a.min_iters)
    print(json.dumps({"mode": "torch-dpo-bench", "torch": torch.__version__, "threads": a.threads,
                      "batch": a.batch, "pairs": n_pairs, "seq": a.seq, "iters": n,
                      "seconds_per_step": sec, "pairs_per_s": n_pairs / sec,
                      "tokens_per_s": a.batch * a.seq / sec}))


def export(a):
    model = build(a.heads)
    out = os.path.abspath(a.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    ids, att, _ = batch(2, 16)
    dyn = {k: {0: "batch", 1: "sequence"} for k in ("input_ids", "attention_mask", "logits")}
    torch.onnx.export(model, (ids, att), out, input_names=["input_ids", "attention_mask"],
                      output_names=["logits"], dynamic_axes=dyn, opset_version=a.opset,
                      do_constant_folding=True)
    print(json.dumps({"mode": "export", "path": out, "bytes": os.path.getsize(out), "opset": a.opset,
                      "params": sum(p.numel() for p in model.parameters()), "vocab": VOCAB,
                      "n_embd": 256, "n_layer": 4, "n_head": a.heads, "n_positions": 128}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", default=os.path.join(HERE, "bench", "gpt2_bench.onnx"))
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--heads", type=int, default=4, choices=(4, 8))
    ap.add_argument("--torch-bench", action="store_true")
    ap.add_argument("--torch-dpo-bench", action="store_true")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--min-iters", type=int, default=3)
    a = ap.parse_args()
    if a.torch_bench:
        torch_bench(a)
    elif a.torch_dpo_bench:
        torch_dpo_bench(a)
    else:
        export(a)


if __name__ == "__main__":
    main()
