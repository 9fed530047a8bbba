#!/usr/bin/env python3
"""SFT oracle for the tiny test models (PyTorch autograd, float64).

    /usr/bin/python3 testdata/gen_sft_oracle.py     # writes testdata/expected/sft_oracle_{gpt2,llama}.json.gz

Definitions shared with the Go side (pipeline/sft_test.go):

* Batch: the 8 sequences of the DPO oracle batch (data/train_tokenized.jsonl rows 0..3:
  prompt + chosen, then prompt + rejected), right-padded with the pad id, attention_mask 1
  on real tokens; the completion (loss) tokens are those after the prompt.
* Loss (TRL's SFTTrainer with completion_only_loss): token-mean cross-entropy over all
  completion tokens of the batch: -SUM_rows SUM_{t completion, t>=1} log_softmax(logits[t-1])[ids[t]]
  / (number of such tokens).
* mean_token_accuracy: fraction of those tokens with argmax(logits[t-1]) == ids[t].
* Gradients of every parameter in ONNX layout (onnx_grads, as in gen_dpo_oracle.py; the plain
  GPT-2 exports train untied).
"""
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen_dpo_oracle as dpo  # noqa: E402
from gen_expected_logps import special_ids  # noqa: E402
import json  # noqa: E402


def sft_loss(model, batch):
    ids, att, pos, comp = batch
    logits = dpo.fwd(model, batch)
    lp = torch.log_softmax(logits[:, :-1], dim=-1)
    tok = torch.gather(lp, 2, ids[:, 1:, None]).squeeze(2)
    m = comp[:, 1:].to(lp.dtype)
    n = m.sum()
    loss = -(tok * m).sum() / n
    correct = ((logits[:, :-1].argmax(-1) == ids[:, 1:]).to(lp.dtype) * m).sum()
    return loss, (correct / n).item(), int(n.item())


def main():
    if os.environ.get("OPENBLAS_CORETYPE") != dpo.ORACLE_CORETYPE:
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:],
                  dict(os.environ, OPENBLAS_CORETYPE=dpo.ORACLE_CORETYPE))
    torch.set_num_threads(1)
    pad_id, _, _ = special_ids()
    with open(os.path.join(HERE, "models", "params_map.json")) as f:
        params_map = json.load(f)
    batch, rows = dpo.make_batch(pad_id)
    for name in dpo.MODELS:
        m64 = dpo.load(name, torch.float64)
        model = dpo.UntiedGPT2(m64) if name == "gpt2" else m64
        model.zero_grad(set_to_none=True)
        loss, acc, n = sft_loss(model, batch)
        loss.backward()
        grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
        if name == "gpt2":
            # onnx_grads maps the tied parameter's uses from the untied gradients
            main_grads = dict(grads)
            main_grads["transformer.wte.weight"] = grads["transformer.wte.weight"] + grads["lm_head.weight"]
            og = dpo.onnx_grads(name, params_map, main_grads, grads)
        else:
            og = dpo.onnx_grads(name, params_map, grads, None)
        out = {
            "model": name,
            "definitions": __doc__.split("Definitions shared with the Go side (pipeline/sft_test.go):")[1].strip(),
            "pad_id": pad_id,
            "input_ids": batch[0].tolist(),
            "prompt_len": [len(p) for p, _ in rows],
            "seq_len": [len(p) + len(c) for p, c in rows],
            "loss_float64": loss.item(),
            "mean_token_accuracy": acc,
            "completion_tokens": n,
            "onnx_grads": og,
        }
        path = os.path.join(HERE, "expected", f"sft_oracle_{name}.json.gz")
        raw = dpo.write_gz(path, out)
        print(f"wrote {path} ({os.path.getsize(path)} bytes gz, {raw} raw): loss {loss.item():.8f} acc {acc:.4f} tokens {n}")


if __name__ == "__main__":
    main()
