#!/usr/bin/env python3
"""Reference output of a tiny hyper-convolutional decoder (docs/method.md step 5) for crates/dnd-decode.

The layer is written here from the method's description with PyTorch ops, independently of the Rust
code: each axis change is a torch Conv2d whose channel axis is that axis (stride 1, 'same' padding), so the
fixture checks the axis orientation of every conv, the LayerNorm over (H, W), the tanh on path 2, the /3,
the N-mixing conv with its bias, and the residual on equal shapes.

    python scripts/reference/decoder_fixture.py [--out crates/dnd-decode/tests/fixtures/hyperconv_tiny.json]

Tensor names follow the Rust decoder (`layers.I.ROLE`) plus `input` and `output`.
"""
import argparse
import os

import torch
import json

STAGES = [(3, 5, 6), (3, 5, 6), (4, 3, 7)]
KERNEL = 3


def conv(x, weight):
    return torch.nn.functional.conv2d(x, weight, padding=KERNEL // 2)


def layer(x, p, same_shape):
    b, n, h, w = x.shape
    y = torch.nn.functional.layer_norm(x, (h, w), p["norm.weight"], p["norm.bias"], eps=1e-5)
    # path 1: W -> W' with the kernel over the (H, N) plane, i.e. input laid out [B, W, H, N] ...
    a = conv(y.permute(0, 3, 2, 1), p["conv1_w.weight"])  # [B, W', H, N]
    # ... then H -> H' over the (N, W') plane: [B, H, N, W']
    a = conv(a.permute(0, 2, 3, 1), p["conv1_h.weight"])  # [B, H', N, W']
    a = a.permute(0, 2, 1, 3)  # [B, N, H', W']
    # path 2: H -> H' over (N, W): [B, H, N, W]; then W -> W' over (H', N): [B, W, H', N]; then tanh
    c = conv(y.permute(0, 2, 1, 3), p["conv2_h.weight"])  # [B, H', N, W]
    c = conv(c.permute(0, 3, 1, 2), p["conv2_w.weight"])  # [B, W', H', N]
    c = torch.tanh(c.permute(0, 3, 2, 1))  # [B, N, H', W']
    z = (a + c + p["bias"]) / 3
    # N -> N' over the (H', W') plane, with bias
    z = conv(z, p["mix_n.weight"]) + p["mix_n.bias"].view(1, -1, 1, 1)
    return x + z if same_shape else z


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="crates/dnd-decode/tests/fixtures/hyperconv_tiny.json")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64) * 0.5
    tensors = {"input": rnd(2, *STAGES[0])}
    x = tensors["input"]
    k = KERNEL
    for i, ((n, h, w), (n2, h2, w2)) in enumerate(zip(STAGES, STAGES[1:])):
        p = {
            "norm.weight": 1 + rnd(h, w),
            "norm.bias": rnd(h, w),
            "conv1_w.weight": rnd(w2, w, k, k),
            "conv1_h.weight": rnd(h2, h, k, k),
            "conv2_h.weight": rnd(h2, h, k, k),
            "conv2_w.weight": rnd(w2, w, k, k),
            "bias": rnd(h2, w2),
            "mix_n.weight": rnd(n2, n, k, k),
            "mix_n.bias": rnd(n2),
        }
        x = layer(x, p, (n, h, w) == (n2, h2, w2))
        tensors.update({f"layers.{i}.{name}": t for name, t in p.items()})
    tensors["output"] = x
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    # JSON rather than safetensors: a fixture of numbers, not a weights file; Python floats round-trip f64.
    with open(args.out, "w") as f:
        json.dump({k: {"shape": list(v.shape), "data": v.flatten().tolist()} for k, v in tensors.items()}, f)
    print(f"wrote {args.out}: output {tuple(x.shape)}, {os.path.getsize(args.out)} bytes")


if __name__ == "__main__":
    main()
