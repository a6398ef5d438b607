#!/usr/bin/env python3
"""PyTorch CPU reference for `dnd bench llm`: the same measures on the same GGUF model, fp32, 2 threads.

    python scripts/reference/bench_torch.py --model M.gguf --batch 8 --seq 128 --steps 3 \
        --decode-prompt 32 --decode-new 128 --decode-batch 16 --matmul-shapes 1024x576x576x60,...

Measures (median seconds over --steps after one warm-up): `forward` (hidden states of batch x seq),
`lora_train` (PEFT r=8 alpha=16 on all 7 projections, AdamW lr 1e-4, causal-LM loss on every token),
`decode_1` and `decode_batch` (transformers' greedy `generate`, exactly --decode-new tokens after a
--decode-prompt-token prompt, KV cache; one run after a short warm-up). Also torch's matmul rate at the
shapes dnd passes (`x @ W.T`, each shape weighted by its FLOPs per forward pass), which `dnd bench llm`
takes into the machine's ceiling. Prints one JSON line: {"tok_s": {measure: tokens/s}, ...}.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import refcommon as rc  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def median_time(fn, steps):
    fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def fixed_ids(n, vocab):
    """The ids dnd's benchmark uses: (i * 2654435761) % vocab."""
    return [(i * 2654435761) % vocab for i in range(n)]


def matmul_rate(shapes, seconds=1.0):
    """FLOPs over time of `x @ W.T` at every (m, k, n, count) shape, as one forward pass would run them."""
    flop = secs = 0.0
    for m, k, n, count in shapes:
        x, w = torch.randn(m, k), torch.randn(n, k)
        x @ w.T
        t, reps = time.perf_counter(), 0
        while reps == 0 or time.perf_counter() - t < seconds:
            x @ w.T
            reps += 1
        per = (time.perf_counter() - t) / reps
        flop += 2.0 * m * k * n * count
        secs += per * count
    return flop / secs / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--decode-prompt", type=int, default=32)
    ap.add_argument("--decode-new", type=int, default=128)
    ap.add_argument("--decode-batch", type=int, default=16)
    ap.add_argument("--matmul-shapes", default="", help="m x k x n x count, comma-separated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated measures to run (default: all)")
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"],
                    help="attention kernel (sdpa = torch's fused one, the fairer speed reference)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    t0 = time.perf_counter()
    model, _tok = rc.load_gguf(args.model, attn=args.attn)
    load_s = time.perf_counter() - t0
    cfg = model.config
    ntok = args.batch * args.seq
    ids = torch.tensor(fixed_ids(ntok, cfg.vocab_size)).reshape(args.batch, args.seq)
    tok_s = {}

    shapes = [tuple(int(v) for v in s.split("x")) for s in args.matmul_shapes.split(",") if s]
    rate = matmul_rate(shapes) if shapes else None

    only = set(filter(None, args.only.split(",")))

    def wants(name):
        return not only or name in only

    with torch.no_grad():
        if wants("forward"):
            tok_s["forward"] = ntok / median_time(lambda: model.model(input_ids=ids), args.steps)

        def decode(batch):
            prompt = torch.tensor(fixed_ids(batch * args.decode_prompt, cfg.vocab_size))
            prompt = prompt.reshape(batch, args.decode_prompt)
            mask = torch.ones_like(prompt)
            kw = dict(attention_mask=mask, do_sample=False, pad_token_id=0, eos_token_id=None)
            model.generate(prompt, max_new_tokens=4, min_new_tokens=4, **kw)
            t = time.perf_counter()
            out = model.generate(prompt, max_new_tokens=args.decode_new, min_new_tokens=args.decode_new, **kw)
            new = (out.shape[1] - args.decode_prompt) * batch
            return new / (time.perf_counter() - t)

        if wants("decode_1"):
            tok_s["decode_1"] = decode(1)
        if wants("decode_batch"):
            tok_s["decode_batch"] = decode(args.decode_batch)

    if wants("lora_train"):
        tok_s["lora_train"] = lora_train(model, ids, args)
    report(args, tok_s, rate, load_s)


def lora_train(model, ids, args):
    """tokens/s of a rank-8 LoRA step on every projection, loss on every token."""
    from peft import LoraConfig, get_peft_model

    pm = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=list(TARGETS),
                                          bias="none", task_type="CAUSAL_LM"))
    pm.train()
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        out = pm(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()

    return ids.numel() / median_time(step, args.steps)


def report(args, tok_s, rate, load_s):
    print(json.dumps({
        "bench": "torch_reference",
        "tok_s": {k: round(v, 2) for k, v in tok_s.items()},
        "matmul_forward_gflop_s": None if rate is None else round(rate, 1),
        "model_file": os.path.basename(args.model),
        "threads": torch.get_num_threads(),
        "attn": args.attn,
        "load_s": round(load_s, 2),
        "peak_rss_mb": round(rc.peak_rss_mb()),
        "versions": {k: v for k, v in rc.versions().items() if k in ("torch", "transformers", "peft")},
    }))


if __name__ == "__main__":
    main()
