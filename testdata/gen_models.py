#!/usr/bin/env python3
"""Builds the tiny test models (tinymodels.py) and exports them to ONNX.

    /usr/bin/python3 testdata/gen_models.py [--check-out /tmp/ortalign_models_check.json]

Writes testdata/models/:
  gpt2_opset14.onnx gpt2_opset17.onnx llama_opset14.onnx llama_opset17.onnx
      torch.onnx.export (TorchScript exporter), float32, inline weights, constant folding
      on (the exporter's default), dynamic axes batch/sequence.
      inputs:  input_ids int64 [batch, sequence], attention_mask int64 [batch, sequence],
               (llama only) position_ids int64 [batch, sequence]
      output:  logits float32 [batch, sequence, vocab]
  gpt2_tied_opset17.onnx  gpt2_opset17.onnx with the weight tie kept in the graph: the exporter's
                          constant folding stores wte^T as a SECOND initializer for the lm_head
                          MatMul (so the plain files have the tie broken, as real exports do);
                          here that copy is replaced by a Transpose node on transformer.wte.weight,
                          so one initializer feeds both Gather and MatMul.
  gpt2.pt llama.pt        tinymodels.save() dicts: {kind, config, state_dict}; load with
                          tinymodels.load(path)
  params_map.json         per ONNX file: initializer name -> the PyTorch parameter it holds
                          ({"param": name, "transpose": bool}), for gradient oracles.
  llama_kv_opset17.onnx   the llama weights (loaded from llama.pt) as tinymodels.LlamaKVLM, exported
                          the way optimum exports a decoder with a KV cache (no If/use_cache_branch):
      inputs:  input_ids, position_ids int64 [batch, sequence],
               attention_mask int64 [batch, past_sequence + sequence],
               past_key_values.{0,1}.{key,value} float32 [batch, 2, past_sequence, 8]
      outputs: logits float32 [batch, sequence, vocab],
               present.{0,1}.{key,value} float32 [batch, 2, past_sequence + sequence, 8]
      Exported with a past of length 3; accepts past_sequence 0 (an empty past). Not in
      params_map.json (its initializers hold the same values as llama_opset17.onnx's).
Also writes a check file (inputs + PyTorch float32 logits of a mixed-length batch) that
check_onnx.mjs runs through ONNX Runtime, and with --kv-check-out a second one for the KV
model (float32 past feeds, expected logits and presents; check_onnx.mjs does not read it).
"""
import argparse
import json
import os
import sys

import numpy as np
import onnx
import torch
from onnx import numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import tinymodels as tm  # noqa: E402

OPSETS = (14, 17)


def vocab_size():
    with open(os.path.join(HERE, "tokenizer", "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    ids = set(tok["model"]["vocab"].values()) | {t["id"] for t in tok["added_tokens"]}
    return max(ids) + 1


def export(model, path, opset):
    names = tm.input_names(model)
    B, T = 2, 7
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.int64)
    args = (ids, mask)
    if "position_ids" in names:
        args = args + (torch.arange(T).expand(B, T).contiguous(),)
    dyn = {n: {0: "batch", 1: "sequence"} for n in names}
    dyn["logits"] = {0: "batch", 1: "sequence"}
    torch.onnx.export(model, args, path, input_names=names, output_names=["logits"],
                      dynamic_axes=dyn, opset_version=opset, do_constant_folding=True)
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    return m


def param_map(model, m):
    params = {k: v.detach().numpy() for k, v in model.named_parameters()}
    out = {}
    for init in m.graph.initializer:
        a = numpy_helper.to_array(init)
        hit = None
        for k, p in params.items():
            if a.shape == p.shape and np.array_equal(a, p):
                hit = {"param": k, "transpose": False}
                break
            if p.ndim == 2 and a.shape == p.T.shape and np.array_equal(a, p.T):
                hit = {"param": k, "transpose": True}
                break
        out[init.name] = hit
    return out


def tie_lm_head(m, pm):
    """Replace the folded wte^T initializer by Transpose(transformer.wte.weight)."""
    dup = [k for k, v in pm.items() if v == {"param": "transformer.wte.weight", "transpose": True}]
    assert len(dup) == 1, dup
    dup = dup[0]
    keep = [i for i in m.graph.initializer if i.name != dup]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    t_out = "lm_head.weight_tied_T"
    for n in m.graph.node:
        for j, x in enumerate(n.input):
            if x == dup:
                n.input[j] = t_out
    first = [i for i, n in enumerate(m.graph.node) if t_out in n.input][0]
    m.graph.node.insert(first, onnx.helper.make_node(
        "Transpose", ["transformer.wte.weight"], [t_out], name="lm_head_tied_transpose", perm=[1, 0]))
    onnx.checker.check_model(m, full_check=True)
    return m


def check_batch(model, vs):
    """A right-padded batch of mixed lengths (pad id 511 / last id) for the ORT check."""
    g = torch.Generator().manual_seed(5)
    lens = [9, 4, 6]
    T = max(lens)
    ids = torch.full((len(lens), T), vs - 1, dtype=torch.int64)
    mask = torch.zeros(len(lens), T, dtype=torch.int64)
    for i, n in enumerate(lens):
        ids[i, :n] = torch.randint(0, vs - 2, (n,), generator=g)
        mask[i, :n] = 1
    pos = torch.arange(T).expand(len(lens), T).contiguous()
    with torch.inference_mode():
        logits = tm.forward(model, ids, mask, pos)
    feeds = {"input_ids": ids.tolist(), "attention_mask": mask.tolist()}
    if "position_ids" in tm.input_names(model):
        feeds["position_ids"] = pos.tolist()
    return feeds, logits


KV_OPSET = 17


def export_llama_kv(out_dir, opset=KV_OPSET):
    """llama.pt's weights as LlamaKVLM -> llama_kv_opset17.onnx, exported with a past of length
    3 (a zero-length past is not traced); past_sequence is a dynamic axis, so 0 is accepted."""
    model = tm.load_kv(os.path.join(out_dir, "llama.pt"))
    L = model.config.num_hidden_layers
    names, outs = tm.kv_input_names(L), tm.kv_output_names(L)
    B, P, T = 2, 3, 5
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (B, T), generator=g)
    mask = torch.ones(B, P + T, dtype=torch.int64)
    pos = torch.arange(P, P + T).expand(B, T).contiguous()
    past = tuple(torch.randn(t.shape, generator=g) for t in model.empty_past(B, P))
    dyn = {"input_ids": {0: "batch", 1: "sequence"}, "position_ids": {0: "batch", 1: "sequence"},
           "attention_mask": {0: "batch", 1: "past_sequence + sequence"},
           "logits": {0: "batch", 1: "sequence"}}
    for n in names[3:]:
        dyn[n] = {0: "batch", 2: "past_sequence"}
    for n in outs[1:]:
        dyn[n] = {0: "batch", 2: "past_sequence + sequence"}
    path = os.path.join(out_dir, f"llama_kv_opset{opset}.onnx")
    torch.onnx.export(model, (ids, mask, pos) + past, path, input_names=names, output_names=outs,
                      dynamic_axes=dyn, opset_version=opset, do_constant_folding=True)
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    return model, path, m


def kv_checks(kv, vs):
    """PyTorch-side checks of LlamaKVLM (asserted) and the cases of the KV check file: an
    empty past on check_batch (logits equal LlamaLM's exactly), and the same batch split
    into a 5-token prefix (its presents become the past) and the remaining tokens."""
    base = tm.LlamaLM(kv.config)
    base.load_state_dict(kv.state_dict())
    base.eval()
    feeds, logits = check_batch(base, vs)
    ids, mask, pos = (torch.tensor(feeds[k]) for k in ("input_ids", "attention_mask", "position_ids"))
    B, T = ids.shape
    L = kv.config.num_hidden_layers
    names, outs = tm.kv_input_names(L), tm.kv_output_names(L)
    cases = []
    with torch.inference_mode():
        full = kv(ids, mask, pos, *kv.empty_past(B))
        d0 = (full[0] - logits).abs().max().item()
        assert d0 == 0.0, d0
        P = 5
        pre = kv(ids[:, :P], mask[:, :P], pos[:, :P], *kv.empty_past(B))
        inc = kv(ids[:, P:], mask, pos[:, P:], *pre[1:])
        valid = mask[:, P:].bool()
        d1 = (inc[0] - logits[:, P:])[valid].abs().max().item()
        assert d1 < 1e-4, d1
        dp = max((a - b).abs().max().item() for a, b in zip(inc[1:], full[1:]))
        assert dp < 1e-4, dp
    print(f"  llama_kv: empty past vs LlamaLM max |d logits| = {d0:.1e}; prefix {P} + rest vs full: "
          f"|d logits| {d1:.1e}, |d presents| {dp:.1e}")
    for name, feed, res in (("past0", (ids, mask, pos) + kv.empty_past(B), full),
                            (f"past{P}", (ids[:, P:], mask, pos[:, P:]) + tuple(pre[1:]), inc)):
        cases.append({"model": f"llama_kv_opset{KV_OPSET}.onnx", "case": name,
                      "feeds": {n: {"dtype": "int64" if i < 3 else "float32", "dims": list(t.shape),
                                    "data": t.flatten().tolist()} for i, (n, t) in enumerate(zip(names, feed))},
                      "outputs": {n: {"dims": list(t.shape), "data": t.flatten().tolist()} for n, t in zip(outs, res)}})
    return cases


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "models"))
    ap.add_argument("--check-out", default="/tmp/ortalign_models_check.json")
    ap.add_argument("--kv-check-out", default=None,
                    help="also write the KV model's check cases (float32 past feeds, logits, presents) here")
    a = ap.parse_args()
    torch.manual_seed(0)
    os.makedirs(a.out, exist_ok=True)
    vs = vocab_size()
    pmap, check = {}, []
    for name in ("gpt2", "llama"):
        model = tm.build(name, vs)
        tm.save(model, os.path.join(a.out, f"{name}.pt"))
        feeds, logits = check_batch(model, vs)
        lp = torch.log_softmax(logits.double(), -1)
        ent = -(lp.exp() * lp).sum(-1).mean().item()
        print(f"{name}: params={sum(p.numel() for p in model.parameters())} "
              f"logits std={logits.std().item():.3f} mean entropy={ent:.3f} nats (uniform {np.log(vs):.3f})")
        for opset in OPSETS:
            path = os.path.join(a.out, f"{name}_opset{opset}.onnx")
            m = export(model, path, opset)
            pmap[os.path.basename(path)] = param_map(model, m)
            ops = sorted({n.op_type for n in m.graph.node})
            print(f"  {os.path.basename(path)}: {os.path.getsize(path)} bytes, "
                  f"{len(m.graph.node)} nodes, ops={ops}")
            check.append({"model": os.path.basename(path), "feeds": feeds,
                          "dims": list(logits.shape), "logits": logits.flatten().tolist()})
            if name == "gpt2" and opset == 17:
                tied = tie_lm_head(m, pmap[os.path.basename(path)])
                tpath = os.path.join(a.out, f"gpt2_tied_opset{opset}.onnx")
                onnx.save(tied, tpath)
                pmap[os.path.basename(tpath)] = param_map(model, tied)
                print(f"  {os.path.basename(tpath)}: {os.path.getsize(tpath)} bytes, {len(tied.graph.node)} nodes")
                check.append({"model": os.path.basename(tpath), "feeds": feeds,
                              "dims": list(logits.shape), "logits": logits.flatten().tolist()})
    with open(os.path.join(a.out, "params_map.json"), "w") as f:
        json.dump(pmap, f, indent=1, sort_keys=True)
        f.write("\n")
    with open(a.check_out, "w") as f:
        json.dump(check, f)
    print(f"check file: {a.check_out} (node testdata/check_onnx.mjs {a.check_out})")
    # After everything above, so that none of the earlier files changes: the KV-cache export.
    kv, path, m = export_llama_kv(a.out)
    ops = sorted({n.op_type for n in m.graph.node})
    print(f"  {os.path.basename(path)}: {os.path.getsize(path)} bytes, {len(m.graph.node)} nodes, ops={ops}")
    cases = kv_checks(kv, vs)
    if a.kv_check_out:
        with open(a.kv_check_out, "w") as f:
            json.dump(cases, f)
        print(f"KV check file: {a.kv_check_out}")


if __name__ == "__main__":
    main()
