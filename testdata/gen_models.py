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
Also writes a check file (inputs + PyTorch float32 logits of a mixed-length batch) that
check_onnx.mjs runs through ONNX Runtime.
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "models"))
    ap.add_argument("--check-out", default="/tmp/ortalign_models_check.json")
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


if __name__ == "__main__":
    main()
