#!/usr/bin/env python3
"""LoRA oracle for the tiny test models (PyTorch autograd, float64).

    /usr/bin/python3 testdata/gen_lora_oracle.py     # writes testdata/expected/lora_oracle.json.gz

PEFT is not installable here, so its LoRA layer is written out in plain PyTorch from PEFT's
formulas (peft/tuners/lora/layer.py, Linear.forward with one adapter, dropout 0, bias
"none", use_rslora/use_dora off):

    result = base_layer(x) + lora_B(lora_A(dropout(x))) * scaling,   scaling = lora_alpha / r

lora_A = nn.Linear(in, r, bias=False) (weight [r, in]), lora_B = nn.Linear(r, out,
bias=False) (weight [out, r]); names as PEFT's get_peft_model_state_dict saves them:
base_model.model.<module path>.lora_A.weight / .lora_B.weight.

Definitions shared with the Go side (pipeline/lora_test.go):

* Models: tiny Llama (models/llama.pt, its ONNX llama_opset17.onnx) with adapters on
  q_proj, v_proj and down_proj, r 4, lora_alpha 8; tiny GPT-2 (models/gpt2.pt,
  gpt2_opset17.onnx) with adapters on c_attn and c_fc, r 2, lora_alpha 5.
* Adapter values: A and B drawn in float32 from torch.Generator seeded 7 (randn * 0.2 for
  A, randn * 0.1 for B: B non-zero, so that A's gradient is not zero), stored exactly as
  float32 values; the computation runs in float64.
* Batch and loss: the SFT oracle's (gen_sft_oracle.py): the 8 sequences of the DPO oracle
  batch, token-mean cross-entropy over all completion tokens.
* Outputs per model: loss_float64, the adapters' values and their gradients (PEFT names,
  PEFT layout), and, for the base model (no adapter), loss_base_float64.
"""
import os
import sys

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen_dpo_oracle as dpo  # noqa: E402
import gen_sft_oracle as sft  # noqa: E402
from gen_expected_logps import special_ids  # noqa: E402

SETUPS = {
    "llama": {"onnx": "models/llama_opset17.onnx", "targets": ["q_proj", "v_proj", "down_proj"], "r": 4, "alpha": 8},
    "gpt2": {"onnx": "models/gpt2_opset17.onnx", "targets": ["c_attn", "c_fc"], "r": 2, "alpha": 5},
}


class LoRALinear(nn.Module):
    """PEFT's lora.Linear with one adapter, dropout 0."""

    def __init__(self, base: nn.Linear, r, alpha):
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.Linear(base.in_features, r, bias=False).to(base.weight.dtype)
        self.lora_B = nn.Linear(r, base.out_features, bias=False).to(base.weight.dtype)
        self.scaling = alpha / r

    def forward(self, x):
        return self.base_layer(x) + self.lora_B(self.lora_A(x)) * self.scaling


def inject(model, targets, r, alpha):
    """Replaces every nn.Linear whose name ends in one of targets (PEFT's matching) and
    freezes everything else. Returns {module path: LoRALinear} in module order."""
    found = {}
    for name, mod in list(model.named_modules()):
        if isinstance(mod, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            found[name] = mod
    for p in model.parameters():
        p.requires_grad_(False)
    out = {}
    for name, mod in found.items():
        parent = model.get_submodule(name.rsplit(".", 1)[0])
        lora = LoRALinear(mod, r, alpha)
        setattr(parent, name.rsplit(".", 1)[1], lora)
        out[name] = lora
    return out


def main():
    if os.environ.get("OPENBLAS_CORETYPE") != dpo.ORACLE_CORETYPE:
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:],
                  dict(os.environ, OPENBLAS_CORETYPE=dpo.ORACLE_CORETYPE))
    torch.set_num_threads(1)
    pad_id, _, _ = special_ids()
    batch, rows = dpo.make_batch(pad_id)
    g = torch.Generator().manual_seed(7)
    out = {"definitions": __doc__.split("Definitions shared with the Go side (pipeline/lora_test.go):")[1].strip(),
           "pad_id": pad_id, "input_ids": batch[0].tolist(),
           "prompt_len": [len(p) for p, _ in rows], "seq_len": [len(p) + len(c) for p, c in rows],
           "models": {}}
    for name, s in SETUPS.items():
        model = dpo.load(name, torch.float64)
        with torch.no_grad():
            base_loss, _, _ = sft.sft_loss(model, batch)
        loras = inject(model, s["targets"], s["r"], s["alpha"])
        values = {}
        for path, l in loras.items():
            a = torch.randn(l.lora_A.weight.shape, generator=g, dtype=torch.float32) * 0.2
            b = torch.randn(l.lora_B.weight.shape, generator=g, dtype=torch.float32) * 0.1
            with torch.no_grad():
                l.lora_A.weight.copy_(a.double())
                l.lora_B.weight.copy_(b.double())
            values[f"base_model.model.{path}.lora_A.weight"] = l.lora_A.weight
            values[f"base_model.model.{path}.lora_B.weight"] = l.lora_B.weight
        loss, _, _ = sft.sft_loss(model, batch)
        loss.backward()
        out["models"][name] = {
            "onnx": s["onnx"], "targets": s["targets"], "r": s["r"], "lora_alpha": s["alpha"],
            "loss_base_float64": base_loss.item(),
            "loss_float64": loss.item(),
            "values": {k: {"shape": list(v.shape), "values": v.detach().reshape(-1).tolist()} for k, v in values.items()},
            "grads": {k: dpo.tensor_json(v.grad) for k, v in values.items()},
        }
        print(f"{name}: base loss {base_loss.item():.8f}, with adapters {loss.item():.8f}, {len(loras)} adapters")
    path = os.path.join(HERE, "expected", "lora_oracle.json.gz")
    raw = dpo.write_gz(path, out)
    print(f"wrote {path} ({os.path.getsize(path)} bytes gz, {raw} raw)")


if __name__ == "__main__":
    main()
