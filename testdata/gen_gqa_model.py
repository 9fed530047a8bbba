#!/usr/bin/env python3
"""A tiny causal LM laid out as ONNX Runtime GenAI's model builder lays out its exports, with
ONNX Runtime's com.microsoft GroupQueryAttention taking the KV cache, built by hand with
onnx.helper, and PyTorch's greedy tokens for it: the fixture of generation on
GroupQueryAttention exports (pipeline/generate, TestGQAExportPadding).

    /usr/bin/python3 testdata/gen_gqa_model.py

Writes testdata/models/gqa_genai.onnx and testdata/expected/gqa_genai.json.

The model (seeded weights; vocab 128, width 64, 2 layers, 4 query heads and 2 KV heads of
16, SwiGLU MLP of 128, RMSNorm, rotary embeddings with theta 10000, untied lm_head):

  inputs   input_ids int64 [batch, sequence_length]
           attention_mask int64 [batch, total_sequence_length]
           past_key_values.{i}.key / .value float [batch, 2, past_sequence_length, 16]
  outputs  logits float [batch, sequence_length, 128]
           present.{i}.key / .value float [batch, 2, total_sequence_length, 16]

As the builder does it, the mask only feeds the two values GroupQueryAttention reads:
seqlens_k = ReduceSum(attention_mask, axis 1) - 1 (int32) and total_sequence_length =
Shape(attention_mask)[1] (int32). The op applies the rotary embedding itself (do_rotary,
cos/sin caches as initializers), positions being each row's token index (0 .. seqlens_k).
It assumes every row's tokens start at position 0 (right padding) and that past and
present hold each row's keys from slot 0.

expected/gqa_genai.json: {"max_new_tokens", "prompts", "greedy": [{"ids", "min_gap"}]}:
greedy decoding of each prompt alone in PyTorch (the same weights, causal attention with
repeat_kv and rotate_half rotary, the whole sequence re-run each step), argmax with
torch.argmax's first-index rule; min_gap is the smallest gap between the two best logits.
"""
import json
import os

import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
VOCAB, WIDTH, LAYERS, HEADS, KV_HEADS, HEAD_DIM, FFN, MAX_POS = 128, 64, 2, 4, 2, 16, 128, 64
THETA, EPS = 10000.0, 1e-6
MAX_NEW = 10
PROMPT_LENS = [5, 1, 9, 3, 7, 2]
SEED = 21


def prompts():
    return [[(i * 41 + t * 13 + 5) % (VOCAB - 1) + 1 for t in range(n)] for i, n in enumerate(PROMPT_LENS)]


def weights():
    g = torch.Generator().manual_seed(SEED)

    def w(*shape, scale=0.15):
        return (torch.randn(*shape, generator=g) * scale).float()

    p = {"embed": w(VOCAB, WIDTH, scale=0.5), "norm": 1 + w(WIDTH, scale=0.1), "lm_head": w(WIDTH, VOCAB, scale=0.3)}
    for i in range(LAYERS):
        p[f"{i}.ln1"] = 1 + w(WIDTH, scale=0.1)
        p[f"{i}.ln2"] = 1 + w(WIDTH, scale=0.1)
        p[f"{i}.q"] = w(WIDTH, HEADS * HEAD_DIM)
        p[f"{i}.k"] = w(WIDTH, KV_HEADS * HEAD_DIM)
        p[f"{i}.v"] = w(WIDTH, KV_HEADS * HEAD_DIM)
        p[f"{i}.o"] = w(HEADS * HEAD_DIM, WIDTH)
        p[f"{i}.gate"] = w(WIDTH, FFN)
        p[f"{i}.up"] = w(WIDTH, FFN)
        p[f"{i}.down"] = w(FFN, WIDTH)
    return p


def rope_tables():
    inv = 1.0 / (THETA ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.int64).float() / HEAD_DIM))
    freqs = torch.outer(torch.arange(MAX_POS, dtype=torch.float32), inv)  # [MAX_POS, HEAD_DIM/2]
    return torch.cos(freqs), torch.sin(freqs)


# ------------------------------------------------------------------ PyTorch reference
def rms(x, w):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS))


def rotate_half(x):
    x1, x2 = x[..., : HEAD_DIM // 2], x[..., HEAD_DIM // 2:]
    return torch.cat((-x2, x1), dim=-1)


@torch.no_grad()
def forward(p, ids):
    """ids [1, T] -> logits [1, T, VOCAB] (one unpadded sequence)."""
    T = ids.shape[1]
    cos, sin = rope_tables()
    cos = torch.cat((cos[:T], cos[:T]), -1)[None, None]  # [1, 1, T, HEAD_DIM]
    sin = torch.cat((sin[:T], sin[:T]), -1)[None, None]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    x = p["embed"][ids]
    for i in range(LAYERS):
        h = rms(x, p[f"{i}.ln1"])
        q = (h @ p[f"{i}.q"]).view(1, T, HEADS, HEAD_DIM).transpose(1, 2)
        k = (h @ p[f"{i}.k"]).view(1, T, KV_HEADS, HEAD_DIM).transpose(1, 2)
        v = (h @ p[f"{i}.v"]).view(1, T, KV_HEADS, HEAD_DIM).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(HEADS // KV_HEADS, dim=1)
        v = v.repeat_interleave(HEADS // KV_HEADS, dim=1)
        s = (q @ k.transpose(2, 3)) / HEAD_DIM ** 0.5
        s = s.masked_fill(~causal, float("-inf"))
        a = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(1, T, HEADS * HEAD_DIM)
        x = x + a @ p[f"{i}.o"]
        h = rms(x, p[f"{i}.ln2"])
        x = x + (torch.nn.functional.silu(h @ p[f"{i}.gate"]) * (h @ p[f"{i}.up"])) @ p[f"{i}.down"]
    return rms(x, p["norm"]) @ p["lm_head"]


def greedy(p, prompt):
    seq, gap = list(prompt), float("inf")
    for _ in range(MAX_NEW):
        logits = forward(p, torch.tensor([seq]))[0, -1]
        top = torch.topk(logits, 2).values
        gap = min(gap, float(top[0] - top[1]))
        seq.append(int(torch.argmax(logits)))
    return seq[len(prompt):], gap


# ------------------------------------------------------------------ ONNX (GenAI layout)
def build(p):
    nodes, inits = [], []

    def init(name, t, dtype=None):
        a = t.numpy() if isinstance(t, torch.Tensor) else t
        inits.append(numpy_helper.from_array(a if dtype is None else a.astype(dtype), name))
        return name

    def node(op, ins, name, domain=None, **attrs):
        nodes.append(helper.make_node(op, ins, [name], name=name, domain=domain, **attrs))
        return name

    import numpy as np
    one = init("one_i64", np.array([1], dtype=np.int64))
    init("axis1", np.array([1], dtype=np.int64))
    init("idx1", np.array(1, dtype=np.int64))
    init("two_f", np.array(2.0, dtype=np.float32))
    init("eps_f", np.array(EPS, dtype=np.float32))
    init("axes_last", np.array([-1], dtype=np.int64))
    cos, sin = rope_tables()
    init("cos_cache", cos)
    init("sin_cache", sin)
    # GenAI's attention-mask reformatting: the lengths GroupQueryAttention reads.
    s = node("ReduceSum", ["attention_mask", "axis1"], "/mask/ReduceSum", keepdims=0)
    s = node("Sub", [s, one], "/mask/Sub")
    seqlens = node("Cast", [s], "/mask/seqlens_k", to=TensorProto.INT32)
    shape = node("Shape", ["attention_mask"], "/mask/Shape")
    total = node("Gather", [shape, "idx1"], "/mask/Gather", axis=0)
    total = node("Cast", [total], "/mask/total_seq_len", to=TensorProto.INT32)

    def rmsnorm(x, w, pre):
        sq = node("Pow", [x, "two_f"], pre + "/Pow")
        m = node("ReduceMean", [sq], pre + "/ReduceMean", axes=[-1], keepdims=1)
        m = node("Add", [m, "eps_f"], pre + "/Add")
        r = node("Sqrt", [m], pre + "/Sqrt")
        y = node("Div", [x, r], pre + "/Div")
        return node("Mul", [y, init(pre + ".weight", w)], pre + "/Mul")

    x = node("Gather", [init("model.embed_tokens.weight", p["embed"]), "input_ids"], "/embed/Gather", axis=0)
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", VOCAB])]
    kv_shape = ["batch_size", KV_HEADS, "past_sequence_length", HEAD_DIM]
    present_shape = ["batch_size", KV_HEADS, "total_sequence_length", HEAD_DIM]
    for i in range(LAYERS):
        pre = f"/model/layers.{i}"
        h = rmsnorm(x, p[f"{i}.ln1"], pre + "/input_layernorm")
        q = node("MatMul", [h, init(f"model.layers.{i}.attn.q_proj.weight", p[f"{i}.q"])], pre + "/attn/q_proj/MatMul")
        k = node("MatMul", [h, init(f"model.layers.{i}.attn.k_proj.weight", p[f"{i}.k"])], pre + "/attn/k_proj/MatMul")
        v = node("MatMul", [h, init(f"model.layers.{i}.attn.v_proj.weight", p[f"{i}.v"])], pre + "/attn/v_proj/MatMul")
        past_k, past_v = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        pres_k, pres_v = f"present.{i}.key", f"present.{i}.value"
        inputs += [helper.make_tensor_value_info(past_k, TensorProto.FLOAT, kv_shape),
                   helper.make_tensor_value_info(past_v, TensorProto.FLOAT, kv_shape)]
        outputs += [helper.make_tensor_value_info(pres_k, TensorProto.FLOAT, present_shape),
                    helper.make_tensor_value_info(pres_v, TensorProto.FLOAT, present_shape)]
        attn = pre + "/attn/GroupQueryAttention"
        nodes.append(helper.make_node("GroupQueryAttention", [q, k, v, past_k, past_v, seqlens, total, "cos_cache", "sin_cache"],
                                      [attn, pres_k, pres_v], name=attn, domain="com.microsoft",
                                      num_heads=HEADS, kv_num_heads=KV_HEADS, do_rotary=1, rotary_interleaved=0))
        o = node("MatMul", [attn, init(f"model.layers.{i}.attn.o_proj.weight", p[f"{i}.o"])], pre + "/attn/o_proj/MatMul")
        x = node("Add", [x, o], pre + "/residual1")
        h = rmsnorm(x, p[f"{i}.ln2"], pre + "/post_attention_layernorm")
        gate = node("MatMul", [h, init(f"model.layers.{i}.mlp.gate_proj.weight", p[f"{i}.gate"])], pre + "/mlp/gate_proj/MatMul")
        sig = node("Sigmoid", [gate], pre + "/mlp/act/Sigmoid")
        act = node("Mul", [gate, sig], pre + "/mlp/act/Mul")
        up = node("MatMul", [h, init(f"model.layers.{i}.mlp.up_proj.weight", p[f"{i}.up"])], pre + "/mlp/up_proj/MatMul")
        prod = node("Mul", [act, up], pre + "/mlp/Mul")
        down = node("MatMul", [prod, init(f"model.layers.{i}.mlp.down_proj.weight", p[f"{i}.down"])], pre + "/mlp/down_proj/MatMul")
        x = node("Add", [x, down], pre + "/residual2")
    h = rmsnorm(x, p["norm"], "/model/norm")
    nodes.append(helper.make_node("MatMul", [h, init("lm_head.weight", p["lm_head"])], ["logits"], name="/lm_head/MatMul"))
    graph = helper.make_graph(nodes, "gqa_genai", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                              producer_name="ortalign testdata/gen_gqa_model.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main():
    p = weights()
    model = build(p)
    path = os.path.join(HERE, "models", "gqa_genai.onnx")
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    out = {"max_new_tokens": MAX_NEW, "prompts": prompts(), "greedy": []}
    for pr in prompts():
        ids, gap = greedy(p, pr)
        out["greedy"].append({"ids": ids, "min_gap": round(gap, 6)})
    with open(os.path.join(HERE, "expected", "gqa_genai.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes), expected/gqa_genai.json")


if __name__ == "__main__":
    main()
