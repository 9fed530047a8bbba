#!/usr/bin/env python3
"""PyTorch eager side of scripts/bench_generate.sh (ortalign generation and one GRPO step
against PyTorch on the same weights, same machine, same threads).

  bench_generate.py gen MODEL --threads N [--reps R] [--batch B]
      greedy generation with the KV cache (tinymodels.LlamaKVLM), B prompts (default 4) of
      32 tokens (the ids of generate.BenchmarkGenerateSide), 64 new tokens, no EOS: one
      warm-up run (--warmup tokens, default all), then R timed runs. MODEL: tiny (testdata/models/llama.pt) or smollm2
      (testdata/bench/smollm2.pt, gen_bench_real.py's SmolLM2-135M shape; random weights,
      seed 5, when that file is missing: speed does not depend on the values). Prints one
      JSON line: tokens/s (generated tokens over wall time, prefill included), ms/step (wall
      time per decoding step of the batch), the process's peak RSS and the bytes of the
      weights a decoding step reads (the parameters, tied ones once).
  bench_generate.py rl PROMPTS.json --threads N [--reps R]
      pipeline.BenchmarkRLStep's work on the tiny Llama: the 4 prompts (token ids, from
      pipeline.TestDumpRLBenchPrompts) × 8 completions of 16 tokens sampled at temperature 1
      with the KV cache (generate), then one GRPO update on the 32 sequences (update):
      forward for per-token log-probs, TRL's GRPO loss (clip eps 0.2, beta 0, loss_type
      dapo: sum of masked per-token losses over the batch's completion tokens), backward,
      grad-norm clipping 1.0 and an AdamW step (lr 1e-4). Prints ms of each (mean of R).
  bench_generate.py rl-real MODEL --threads N
      rollout.BenchmarkRLStepReal's work in PyTorch: 8 prompts of 32 tokens (its ids) × 4
      completions of 64 tokens sampled at temperature 1 with the KV cache (generate), the
      reference log-probs of the 32 sequences (score: forward without gradients), then one
      GRPO update (as rl, β 0, in 4 micro-batches of 8, lr 1e-6), taken twice (update1,
      update2). Prints seconds of each and the peak RSS.
"""
import argparse
import json
import os
import resource
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import tinymodels as tm  # noqa: E402


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_model(name):
    if name == "tiny":
        return tm.load_kv(os.path.join(HERE, "models", "llama.pt"))
    import gen_bench_real as gbr
    c = tm.LlamaConfig(**gbr.SHAPES[name])
    assert not gbr.BIAS[name], "q/k/v biases: not in LlamaKVLM"
    torch.manual_seed(5)
    m = tm.LlamaKVLM(c)
    m.lm_head.weight = m.model.embed_tokens.weight
    path = os.path.join(HERE, "bench", name + ".pt")
    if os.path.exists(path):
        m.load_state_dict(torch.load(path))
    m.lm_head.weight = m.model.embed_tokens.weight
    return m.eval()


def weight_bytes(m):
    return sum(p.numel() * p.element_size() for p in m.parameters())  # tied weights once


@torch.no_grad()
def decode(m, prompts, new_tokens, sample=False, gen=None):
    """prompts: list of id lists (left-padded into one batch). Returns [B, new_tokens]."""
    B = len(prompts)
    P = max(len(p) for p in prompts)
    ids = torch.zeros(B, P, dtype=torch.int64)
    att = torch.zeros(B, P, dtype=torch.int64)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):] = torch.tensor(p)
        att[i, P - len(p):] = 1
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    out = m(ids, att, pos, *m.empty_past(B))
    logits, past = out[0][:, -1], out[1:]
    nxt_pos = pos[:, -1:] + 1
    toks = []
    for step in range(new_tokens):
        if sample:
            tok = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)
        else:
            tok = logits.argmax(-1, keepdim=True)
        toks.append(tok)
        if step == new_tokens - 1:
            break
        att = torch.cat((att, torch.ones(B, 1, dtype=torch.int64)), 1)
        out = m(tok, att, nxt_pos, *past)
        logits, past = out[0][:, -1], out[1:]
        nxt_pos = nxt_pos + 1
    return torch.cat(toks, 1), ids, att[:, :P]


def cmd_gen(a):
    torch.set_num_threads(a.threads)
    m = load_model(a.model)
    batch, plen, new = a.batch, 32, 64
    prompts = [[(i * 131 + t * 17 + 3) % 500 for t in range(plen)] for i in range(batch)]
    first, _, _ = decode(m, prompts, min(new, a.warmup))  # warm-up
    t0 = time.perf_counter()
    for _ in range(a.reps):
        decode(m, prompts, new)
    el = time.perf_counter() - t0
    print(json.dumps({"side": "pytorch", "model": a.model, "threads": a.threads, "reps": a.reps,
                      "tokens_per_s": round(a.reps * batch * new / el, 1),
                      "ms_per_step": round(el * 1000 / (a.reps * new), 3),
                      "peak_rss_mb": round(peak_rss_mb(), 1), "batch": batch,
                      "weight_bytes": weight_bytes(m),
                      "first_tokens": first[0, :8].tolist()}))


def rollout_batch(comp, pids, patt, G):
    """The sampled rows as a training batch: ids, attention mask, completion mask and GRPO
    advantages of a stand-in reward per completion (the reward is not what is timed)."""
    ids = torch.cat((pids, comp), 1)
    att = torch.cat((patt, torch.ones_like(comp)), 1)
    cmask = torch.cat((torch.zeros_like(patt), torch.ones_like(comp)), 1)
    grp = (comp[:, 0] % 2).float().view(-1, G)
    adv = ((grp - grp.mean(1, keepdim=True)) / (grp.std(1, keepdim=True) + 1e-4)).view(-1)
    return ids, att, cmask, adv


def grpo_update(m, opt, ids, att, comp_mask, adv, micro=None):
    """One TRL GRPO step (beta 0, dapo, one iteration: old log-probs = detached current),
    the batch in micro-batches of micro rows (all at once by default), gradients summed."""
    micro = micro or ids.shape[0]
    denom = comp_mask[:, 1:].sum().clamp(min=1.0)
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for lo in range(0, ids.shape[0], micro):
        sl = slice(lo, lo + micro)
        pos = (att[sl].cumsum(-1) - 1).clamp(min=0)
        logits = m(ids[sl], att[sl], pos, *m.empty_past(ids[sl].shape[0]))[0]
        lp = torch.log_softmax(logits[:, :-1].float(), -1)
        tok_lp = torch.gather(lp, 2, ids[sl, 1:, None]).squeeze(2)
        mask = comp_mask[sl, 1:].to(tok_lp.dtype)
        ratio = torch.exp(tok_lp - tok_lp.detach())
        l1 = ratio * adv[sl, None]
        l2 = torch.clamp(ratio, 1 - 0.2, 1 + 0.2) * adv[sl, None]
        loss = (-torch.min(l1, l2) * mask).sum() / denom
        loss.backward()
        total += loss.item()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    opt.step()
    return total


def cmd_rl(a):
    torch.set_num_threads(a.threads)
    m = load_model("tiny")
    prompts = json.load(open(a.prompts))
    G, new = 8, 16
    rows = [p for p in prompts for _ in range(G)]
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    tgen = tupd = 0.0
    for r in range(a.reps + 1):  # the first round is the warm-up
        t0 = time.perf_counter()
        comp, pids, patt = decode(m, rows, new, sample=True, gen=g)
        t1 = time.perf_counter()
        ids, att, cmask, adv = rollout_batch(comp, pids, patt, G)
        m.train()
        t2 = time.perf_counter()
        grpo_update(m, opt, ids, att, cmask, adv)
        t3 = time.perf_counter()
        m.eval()
        if r > 0:
            tgen += t1 - t0
            tupd += t3 - t2
    tokens = len(rows) * new
    print(json.dumps({"side": "pytorch", "threads": a.threads, "reps": a.reps,
                      "generate_ms": round(tgen * 1000 / a.reps, 2),
                      "generate_tokens_per_s": round(tokens * a.reps / tgen, 1),
                      "update_ms": round(tupd * 1000 / a.reps, 2),
                      "peak_rss_mb": round(peak_rss_mb(), 1)}))


def cmd_rl_real(a):
    torch.set_num_threads(a.threads)
    m = load_model(a.model)
    P, G, plen, new, micro = 8, 4, 32, 64, 8
    prompts = [[(i * 131 + t * 17 + 3) % 500 + 1 for t in range(plen)] for i in range(P)]
    rows = [p for p in prompts for _ in range(G)]
    opt = torch.optim.AdamW(m.parameters(), lr=1e-6, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    t0 = time.perf_counter()
    comp, pids, patt = decode(m, rows, new, sample=True, gen=g)
    t1 = time.perf_counter()
    ids, att, cmask, adv = rollout_batch(comp, pids, patt, G)
    with torch.no_grad():  # the reference's log-probs (the starting policy)
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        logits = m(ids, att, pos, *m.empty_past(ids.shape[0]))[0]
        torch.gather(torch.log_softmax(logits[:, :-1].float(), -1), 2, ids[:, 1:, None])
    t2 = time.perf_counter()
    m.train()
    updates = []
    for _ in range(2):
        t = time.perf_counter()
        grpo_update(m, opt, ids, att, cmask, adv, micro=micro)
        updates.append(time.perf_counter() - t)
    print(json.dumps({"side": "pytorch", "model": a.model, "threads": a.threads,
                      "generate_s": round(t1 - t0, 2), "gen_tokens_per_s": round(len(rows) * new / (t1 - t0), 1),
                      "score_s": round(t2 - t1, 2), "update1_s": round(updates[0], 2), "update2_s": round(updates[1], 2),
                      "peak_rss_mb": round(peak_rss_mb(), 1)}))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("model", choices=["tiny", "smollm2"])
    g.add_argument("--threads", type=int, default=1)
    g.add_argument("--reps", type=int, default=5)
    g.add_argument("--batch", type=int, default=4)
    g.add_argument("--warmup", type=int, default=64, help="tokens of the warm-up run")
    r = sub.add_parser("rl")
    r.add_argument("prompts")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--reps", type=int, default=10)
    rr = sub.add_parser("rl-real")
    rr.add_argument("model", choices=["smollm2"])
    rr.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    {"gen": cmd_gen, "rl": cmd_rl, "rl-real": cmd_rl_real}[a.cmd](a)


if __name__ == "__main__":
    main()
