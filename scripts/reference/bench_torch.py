#!/usr/bin/env python3
"""PyTorch CPU throughput reference for the GGUF base model (forward and LoRA training).

    python scripts/reference/bench_torch.py --model ~/.cache/dnd/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --batch 8 --seq 128 --steps 3

Prints one JSON line: forward tokens/s (hidden states only, and full with lm_head), LoRA training
tokens/s (PEFT r=8 alpha=16 on all 7 projections, AdamW lr 1e-4, causal-LM loss, fp32), peak RSS.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import refcommon as rc  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


peak_rss_mb = rc.peak_rss_mb


def timed(fn, steps, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"],
                    help="attention kernel (sdpa = torch's fused one, the fairer speed reference)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    t0 = time.perf_counter()
    load_before = os.getloadavg()
    model, _tok = rc.load_gguf(args.model, attn=args.attn)
    load_s = time.perf_counter() - t0
    rss_loaded = peak_rss_mb()
    cfg = model.config
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    ntok = args.batch * args.seq

    with torch.no_grad():
        hid_t = timed(lambda: model.model(input_ids=ids), args.steps, args.warmup)
        full_t = timed(lambda: model(input_ids=ids), args.steps, args.warmup)
    rss_fwd = peak_rss_mb()

    from peft import LoraConfig, get_peft_model

    pm = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=list(TARGETS),
                                          bias="none", task_type="CAUSAL_LM"))
    pm.train()
    params = [p for p in pm.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-4)
    losses = []

    def step():
        opt.zero_grad(set_to_none=True)
        out = pm(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        losses.append(out.loss.detach().item())

    train_t = timed(step, args.steps, args.warmup)

    def stats(ts):
        mean = sum(ts) / len(ts)
        return {"tok_s": round(ntok / mean, 2), "tok_s_best": round(ntok / min(ts), 2), "step_s_mean": round(mean, 4),
                "step_s_min": round(min(ts), 4)}

    res = {
        "bench": "torch_reference",
        "model_file": os.path.basename(args.model),
        "arch": cfg.model_type,
        "batch": args.batch,
        "seq": args.seq,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": torch.get_num_threads(),
        "attn": args.attn,
        "loadavg_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(),
        "load_s": round(load_s, 2),
        "forward_hidden": stats(hid_t),
        "forward_full_logits": stats(full_t),
        "lora_train": {**stats(train_t), "r": 8, "alpha": 16, "trainable_params": n_train,
                       "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4)},
        "peak_rss_mb": {"after_load": round(rss_loaded), "after_forward": round(rss_fwd),
                        "after_train": round(peak_rss_mb())},
        "versions": {k: v for k, v in rc.versions().items() if k in ("torch", "transformers", "peft")},
    }
    print(json.dumps(res))


if __name__ == "__main__":
    main()
