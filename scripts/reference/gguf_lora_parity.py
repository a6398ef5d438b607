"""llama.cpp parity of dnd's GGUF exports: logits of llama.cpp (llama-cpp-python) with dnd's LoRA GGUF
on the base GGUF, and with dnd's merged GGUF, against dnd's own logits with the same adapter loaded from
its PEFT directory. Reads what `crates/dnd-export/tests/llamacpp_interop.rs` wrote into DIR.

The metric is the peft check's: per position, max over the vocabulary of |llama.cpp - dnd| divided by
max |dnd logit|, worst over prompts and positions. On a quantised base llama.cpp also quantises the
activations (to 8 bits) in its matmuls, while dnd dequantises the weights to f32, so the float copies of
the base (`base-f32.gguf`, `merged-f32.gguf`, written by dnd) isolate what the export itself does; the
quantised rows are reported next to the same difference without any adapter.
"""
import argparse
import json
import os

import numpy as np
from llama_cpp import Llama

GGML_TYPE_F32 = 0
from safetensors.numpy import load_file


def llama_logits(model, lora, ids):
    # f32 KV cache: llama.cpp's default f16 cache alone moves the logits by ~1e-3 of their maximum.
    llm = Llama(model_path=model, lora_path=lora, n_ctx=512, n_batch=512, n_threads=2,
                logits_all=True, verbose=False, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
    out = []
    for seq in ids:
        llm.reset()
        llm.eval(seq)
        out.append(np.array(llm.scores[: len(seq)], dtype=np.float32))
    del llm
    return out


def worst_relative(ours, reference):
    return max(float((np.abs(x - y).max(axis=1) / np.abs(y).max(axis=1)).max())
               for x, y in zip(ours, reference))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--model", required=True, help="the base GGUF dnd read")
    a = ap.parse_args()
    d = lambda n: os.path.join(a.dir, n)
    ids = json.load(open(d("prompts.json")))["ids"]
    dnd = load_file(d("dnd_logits.safetensors"))
    lora = [dnd[f"lora.{k}"] for k in range(len(ids))]
    base = [dnd[f"base.{k}"] for k in range(len(ids))]
    rows = {
        "float base + LoRA GGUF": (d("base-f32.gguf"), d("adapter.gguf"), lora),
        "float merged GGUF": (d("merged-f32.gguf"), None, lora),
        "float base, no adapter": (d("base-f32.gguf"), None, base),
        "quantised base + LoRA GGUF": (a.model, d("adapter.gguf"), lora),
        "quantised merged GGUF (merged projections f32)": (d("merged.gguf"), None, lora),
        "quantised base, no adapter": (a.model, None, base),
    }
    result = {
        "model": os.path.basename(a.model),
        "tokens": [len(s) for s in ids],
        "adapter_effect": worst_relative(base, lora),
        "worst_relative": {},
    }
    for name, (model, adapter, reference) in rows.items():
        result["worst_relative"][name] = worst_relative(llama_logits(model, adapter, ids), reference)
    for name, v in result["worst_relative"].items():
        print(f"{result['model']}: {name}: {v:.2e}", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
