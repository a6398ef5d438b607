#!/usr/bin/env python3
"""PEFT LoRA interop reference (Python side).

  make  --model GGUF --out DIR --seed 0 --logits OUT.json
        Wrap the GGUF model (transformers loader, float32) in a PEFT LoRA (r=8, alpha=16, all 7 projections),
        set lora_B = seeded N(0,1) * 0.02 so the adapter is non-zero, save_pretrained(DIR), and write the
        logits of the 3 fixed prompts with the adapter applied.
  score --model GGUF --adapter DIR --logits OUT.json
        Load an adapter dir (e.g. one written by dnd) with PeftModel.from_pretrained and write the same JSON.

Logits format (see refcommon.logits_block): every position, every 97th vocab id, top-20, max|logit|.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import refcommon as rc  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def write_logits(model, tok, args, extra):
    model.eval()
    out = {
        "model_file": os.path.basename(args.model),
        "versions": rc.versions(),
        **extra,
        "logits": rc.logits_block(model, tok, model.config.vocab_size if hasattr(model, "config") else None),
    }
    size = rc.write_json(out, args.logits)
    print(f"wrote {args.logits} ({size} bytes)")


def cmd_make(args):
    from peft import LoraConfig, get_peft_model

    model, tok = rc.load_gguf(args.model)
    torch.manual_seed(args.seed)  # lora_A uses PEFT's default (kaiming-uniform) init from the global RNG
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=list(TARGETS), bias="none",
                     task_type="CAUSAL_LM")
    pm = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(args.seed)
    n = 0
    with torch.no_grad():
        for name, p in sorted(pm.named_parameters()):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * 0.02)
                n += 1
    assert n == 7 * model.config.num_hidden_layers, n
    pm.save_pretrained(args.out)
    print(f"saved adapter to {args.out}: {sorted(os.listdir(args.out))}")
    write_logits(pm, tok, args, {"adapter_dir": os.path.abspath(args.out), "seed": args.seed, "r": 8, "alpha": 16,
                                 "target_modules": TARGETS, "mode": "make"})


def cmd_score(args):
    from peft import PeftModel

    model, tok = rc.load_gguf(args.model)
    pm = PeftModel.from_pretrained(model, args.adapter)
    pm.eval()
    write_logits(pm, tok, args, {"adapter_dir": os.path.abspath(args.adapter), "mode": "score",
                                 "adapter_config": pm.peft_config["default"].to_dict()})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--model", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--logits", required=True)
    s = sub.add_parser("score")
    s.add_argument("--model", required=True)
    s.add_argument("--adapter", required=True)
    s.add_argument("--logits", required=True)
    for p in (m, s):
        p.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    {"make": cmd_make, "score": cmd_score}[args.cmd](args)
    print(f"done in {time.time() - t0:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
