#!/usr/bin/env python3
"""Tiny ONNX models for the tests of package ortalign/onnx (deterministic).

The models are built with the reference `onnx` Python package so that the Go
code is tested against files written by an independent implementation.

Usage:  /usr/bin/python3 onnx/testdata/gen_models.py [--out onnx/testdata]
Needs:  onnx (1.12 tested), numpy; torch is optional (bfloat16 cases).

Writes:
  mlp.onnx                 inline weights; FLOAT, FLOAT16 and INT64 initializers,
                           a Constant node, an If node with two subgraphs that
                           read an outer value; symbolic dim "batch"; opset 17.
  external/model.onnx      the same model with every initializer in one external
  external/model.onnx_data file (onnx.save_model(..., save_as_external_data=True,
                           all_tensors_to_one_file=True, size_threshold=0)).
  external_attr/...        the same with convert_attribute=True, so the Constant
                           node's tensor is external too.
  unknown_fields.onnx      mlp.onnx plus fields this project's schema does not
                           know: at the end of ModelProto and inside GraphProto.
  expected.json            the initializer values (as float64 numbers), the
                           byte strings of the injected unknown fields, and
                           float16/bfloat16 conversion cases computed by numpy
                           (and torch when importable).
"""
import argparse
import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def build_model():
    rng = np.random.default_rng(20240607)
    w1 = rng.standard_normal((4, 8)).astype(np.float32)
    b1 = rng.standard_normal((8,)).astype(np.float32)
    w2 = rng.standard_normal((8, 3)).astype(np.float32)
    b2 = rng.standard_normal((3,)).astype(np.float32)
    scale16 = np.array([0.5, -1.25, 3.0], dtype=np.float16)
    shape = np.array([-1, 3], dtype=np.int64)

    inits = [
        numpy_helper.from_array(w1, "W1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "W2"),
        numpy_helper.from_array(b2, "b2"),
        numpy_helper.from_array(scale16, "scale16"),
        numpy_helper.from_array(shape, "out_shape"),
    ]

    then_g = helper.make_graph(
        [helper.make_node("Identity", ["h2"], ["then_out"], name="then_id")],
        "then_branch", [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)])
    else_g = helper.make_graph(
        [helper.make_node("Neg", ["h2"], ["else_out"], name="else_neg")],
        "else_branch", [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, None)])

    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["mm1"], name="mm1"),
        helper.make_node("Add", ["mm1", "b1"], ["a1"], name="add1"),
        helper.make_node("Relu", ["a1"], ["h1"], name="relu1"),
        helper.make_node("MatMul", ["h1", "W2"], ["mm2"], name="mm2"),
        helper.make_node("Add", ["mm2", "b2"], ["h2"], name="add2"),
        helper.make_node("Constant", [], ["cond"], name="cond_const",
                         value=numpy_helper.from_array(np.array(True), "cond_value")),
        helper.make_node("If", ["cond"], ["branch"], name="if1",
                         then_branch=then_g, else_branch=else_g),
        helper.make_node("Cast", ["scale16"], ["scale32"], name="cast_scale", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["branch", "scale32"], ["scaled"], name="mul_scale"),
        helper.make_node("Reshape", ["scaled", "out_shape"], ["logits"], name="reshape"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="ortalign-testdata", producer_version="1")
    onnx.checker.check_model(model)
    values = {
        "W1": w1, "b1": b1, "W2": w2, "b2": b2,
        "scale16": scale16.astype(np.float32),
    }
    return model, values, shape


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(num, v):
    return varint(num << 3 | 0) + varint(v)


def field_bytes(num, b):
    return varint(num << 3 | 2) + varint(len(b)) + b


def half_cases():
    """float32 inputs and their float16 / bfloat16 bit patterns (round to nearest even)."""
    rng = np.random.default_rng(7)
    xs = [0.0, -0.0, 1.0, -2.0, 0.1, 1.0 / 3.0, 65504.0, 65519.0, 65520.0, 1e6, -1e6,
          5.960464477539063e-08, 2.9802322387695312e-08, 2.98023259e-08, 1e-10,
          6.103515625e-05, 6.097555160522461e-05, 1.00048828125, 1.00146484375,
          float("inf"), float("-inf"), 3.3895313892515355e+38]
    xs += list(rng.standard_normal(40) * 10.0)
    xs += list(rng.standard_normal(20) * 1e-5)
    xs += list(np.exp(rng.uniform(-20, 20, 20)))
    f32 = np.array(xs, dtype=np.float32)
    with np.errstate(over="ignore"):  # values beyond 65504 become inf, on purpose
        f16 = f32.astype(np.float16).view(np.uint16)
    cases = []
    bf16 = None
    try:
        import torch
        bf16 = torch.from_numpy(f32.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    except Exception:  # torch is optional
        pass
    for i, x in enumerate(f32):
        c = {"f32_bits": int(f32[i:i + 1].view(np.uint32)[0]), "f16_bits": int(f16[i])}
        if bf16 is not None:
            c["bf16_bits"] = int(bf16[i])
        cases.append(c)
    return cases


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    args = ap.parse_args()
    out = args.out
    os.makedirs(os.path.join(out, "external"), exist_ok=True)

    model, values, shape = build_model()
    onnx.save_model(model, os.path.join(out, "mlp.onnx"))

    ext = onnx.ModelProto()
    ext.CopyFrom(model)
    for name in ("model.onnx", "model.onnx_data"):
        p = os.path.join(out, "external", name)
        if os.path.exists(p):
            os.remove(p)
    onnx.save_model(ext, os.path.join(out, "external", "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx_data", size_threshold=0)
    onnx.checker.check_model(os.path.join(out, "external", "model.onnx"))

    os.makedirs(os.path.join(out, "external_attr"), exist_ok=True)
    for name in ("model.onnx", "model.onnx_data"):
        p = os.path.join(out, "external_attr", name)
        if os.path.exists(p):
            os.remove(p)
    ext = onnx.ModelProto()
    ext.CopyFrom(model)
    onnx.save_model(ext, os.path.join(out, "external_attr", "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx_data", size_threshold=0,
                    convert_attribute=True)
    onnx.checker.check_model(os.path.join(out, "external_attr", "model.onnx"))

    # Unknown fields: one inside GraphProto (field 900, bytes) and two at the
    # end of ModelProto (field 999 varint, field 1000 bytes).
    graph_unknown = field_bytes(900, b"graph-extension")
    model_unknown = field_varint(999, 42) + field_bytes(1000, b"ortalign-unknown")
    unk = onnx.ModelProto()
    unk.CopyFrom(model)
    unk.graph.ParseFromString(model.graph.SerializeToString() + graph_unknown)
    data = unk.SerializeToString() + model_unknown
    assert graph_unknown in data and data.endswith(model_unknown)
    with open(os.path.join(out, "unknown_fields.onnx"), "wb") as f:
        f.write(data)

    expected = {
        "initializers": {k: [float(x) for x in v.ravel()] for k, v in values.items()},
        "out_shape": [int(x) for x in shape],
        "graph_unknown_hex": graph_unknown.hex(),
        "model_unknown_hex": model_unknown.hex(),
        "half_cases": half_cases(),
    }
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
