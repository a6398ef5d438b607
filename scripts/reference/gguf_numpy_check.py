#!/usr/bin/env python3
"""Second, independent reference for a GGUF fixture: a plain numpy forward straight from the GGUF tensors.

    python scripts/reference/gguf_numpy_check.py --model GGUF --fixture crates/dnd-llm/tests/fixtures/gguf_smollm2.json

Only the `gguf` package is used (reader + dequantize); no transformers. Weights stay in GGUF layout:
for `llama` the converter permuted the Q/K rows, so rotary is applied to ADJACENT pairs (x[2i], x[2i+1])
(GPT-J / llama.cpp "normal" rope); for `qwen2` rows are not permuted and rotary pairs (x[i], x[i+d/2])
(NEOX / HF style). Agreement with the transformers-made fixture therefore also checks transformers'
un-permutation. Prints the max abs difference on the fixture's logit subsets and top-20 agreement.
"""
import argparse
import json
import sys

import numpy as np


def load(path):
    import gguf

    r = gguf.GGUFReader(path)
    meta = {}
    for name, f in r.fields.items():
        if name.startswith("tokenizer."):
            continue
        try:
            meta[name] = f.contents()
        except Exception:
            pass
    tensors = {}
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type)
        tensors[t.name] = np.ascontiguousarray(a, dtype=np.float32)
    return meta, tensors


def forward(meta, W, ids):
    arch = meta["general.architecture"]
    g = lambda k: meta[f"{arch}.{k}"]  # noqa: E731
    n_layer, n_head, n_kv = g("block_count"), g("attention.head_count"), g("attention.head_count_kv")
    H = g("embedding_length")
    hd = H // n_head
    eps = g("attention.layer_norm_rms_epsilon")
    base = g("rope.freq_base")
    T = len(ids)

    def rms(x, w):
        x64 = x.astype(np.float64)
        return (x64 / np.sqrt((x64 * x64).mean(-1, keepdims=True) + eps)).astype(np.float32) * w

    inv = 1.0 / base ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]  # [T, hd/2]
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)

    def rope(x):  # x [heads, T, hd]
        if arch == "llama":  # adjacent pairs on the GGUF-permuted rows
            a, b = x[..., 0::2], x[..., 1::2]
            out = np.empty_like(x)
            out[..., 0::2] = a * cos - b * sin
            out[..., 1::2] = a * sin + b * cos
            return out
        a, b = x[..., : hd // 2], x[..., hd // 2:]  # half split
        return np.concatenate([a * cos - b * sin, a * sin + b * cos], -1)

    def lin(x, name):
        y = x @ W[name + ".weight"].T
        if name + ".bias" in W:
            y = y + W[name + ".bias"]
        return y

    x = W["token_embd.weight"][np.array(ids)]
    mask = np.triu(np.full((T, T), -np.inf, dtype=np.float32), 1)
    for l in range(n_layer):
        p = f"blk.{l}"
        h = rms(x, W[p + ".attn_norm.weight"])
        q = lin(h, p + ".attn_q").reshape(T, n_head, hd).transpose(1, 0, 2)
        k = lin(h, p + ".attn_k").reshape(T, n_kv, hd).transpose(1, 0, 2)
        v = lin(h, p + ".attn_v").reshape(T, n_kv, hd).transpose(1, 0, 2)
        q, k = rope(q), rope(k)
        k, v = np.repeat(k, n_head // n_kv, 0), np.repeat(v, n_head // n_kv, 0)
        s = q @ k.transpose(0, 2, 1) / np.float32(np.sqrt(hd)) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = (s @ v).transpose(1, 0, 2).reshape(T, n_head * hd)
        x = x + lin(o, p + ".attn_output")
        h = rms(x, W[p + ".ffn_norm.weight"])
        gt, up = lin(h, p + ".ffn_gate"), lin(h, p + ".ffn_up")
        x = x + lin(gt / (1.0 + np.exp(-gt)) * up, p + ".ffn_down")
    x = rms(x, W["output_norm.weight"])
    head = W.get("output.weight", W["token_embd.weight"])
    return x @ head.T


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--fixture", required=True)
    ap.add_argument("--tol", type=float, default=2e-3)
    args = ap.parse_args()
    fx = json.load(open(args.fixture))
    meta, W = load(args.model)
    sub = np.array(fx["logits"]["subset_ids"])
    worst = 0.0
    ok = True
    for p in fx["logits"]["prompts"]:
        lg = forward(meta, W, p["ids"])
        d_sub = np.abs(lg[:, sub] - np.array(p["subset_logits"])).max()
        top_ref = np.array(p["top_logits"])
        top_got = np.take_along_axis(lg, np.array(p["top_ids"]), 1)
        d_top = np.abs(top_got - top_ref).max()
        d_max = np.abs(np.abs(lg).max(-1) - np.array(p["max_abs"])).max()
        argmax_ok = (lg.argmax(-1) == np.array(p["argmax"])).mean()
        worst = max(worst, d_sub, d_top, d_max)
        ok &= argmax_ok == 1.0
        print(json.dumps({"prompt": p["text"][:40], "T": len(p["ids"]), "max_abs_diff_subset": float(d_sub),
                          "max_abs_diff_top20": float(d_top), "max_abs_diff_maxabs": float(d_max),
                          "argmax_agreement": float(argmax_ok)}))
    print(json.dumps({"worst_abs_diff": float(worst), "tol": args.tol, "pass": bool(ok and worst < args.tol)}))
    sys.exit(0 if ok and worst < args.tol else 1)


if __name__ == "__main__":
    main()
