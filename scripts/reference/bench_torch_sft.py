#!/usr/bin/env python3
"""PyTorch+PEFT reference for `dnd bench finetune`: LoRA SFT training steps on a fixed batch.

    python scripts/reference/bench_torch_sft.py --model ~/.cache/dnd/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --batch 8 --seq 128 --answer-tokens 8 --steps 3

The same step dnd's trainer takes: PEFT LoRA (r, alpha, all 7 projections by default, dropout 0), fp32,
loss on the last --answer-tokens tokens of each row (0 = every token), global-norm clipping at 1.0,
AdamW (weight decay 0). --mode picks how the loss is computed (one per process, so peak RSS is its own):
  full_logits   - the standard transformers/PEFT SFT step: labels -100 outside the answer, logits for
                  every position (what TRL's SFTTrainer does);
  target_logits - hidden states, then lm_head only at the positions that predict an answer token (the
                  optimisation dnd uses), so the ratio shows the engine and not only that trick.
Prints one JSON line with tokens/s (batch*seq per step) and peak RSS.
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import refcommon as rc  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peak_rss_mb():
    """VmHWM of this process. Not ru_maxrss: Linux carries that across execve, so a child of the
    (large) dnd process would report dnd's peak as its own."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--answer-tokens", type=int, default=8)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", default="full_logits", choices=["full_logits", "target_logits"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model, _tok = rc.load_gguf(args.model, attn="sdpa")
    cfg = model.config
    # The same pseudo-random ids as dnd's bench: content does not matter for speed.
    n = args.batch * args.seq
    ids = torch.tensor([(i * 2654435761) % cfg.vocab_size for i in range(n)]).view(args.batch, args.seq)
    labels = ids.clone()
    if args.answer_tokens > 0:
        labels[:, : args.seq - args.answer_tokens] = -100
    # Flat rows of the hidden states that predict a label, and the labels themselves.
    mask = labels[:, 1:] != -100
    rows = (torch.arange(args.batch)[:, None] * args.seq + torch.arange(args.seq - 1)[None, :])[mask]
    targets = labels[:, 1:][mask]

    from peft import LoraConfig, get_peft_model

    pm = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0,
                                          target_modules=list(TARGETS), bias="none", task_type="CAUSAL_LM"))
    pm.train()
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)

    def loss_full():
        return pm(input_ids=ids, labels=labels).loss

    def loss_targets():
        hidden = pm.base_model.model.model(input_ids=ids).last_hidden_state
        logits = pm.base_model.model.lm_head(hidden.reshape(n, -1)[rows])
        return F.cross_entropy(logits, targets)

    loss_fn = {"full_logits": loss_full, "target_logits": loss_targets}[args.mode]
    load_before = os.getloadavg()[0]
    losses, times = [], []
    for i in range(args.warmup + args.steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.detach().item())
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    mean = sum(times) / len(times)
    res = {"bench": "torch_sft_reference", "mode": args.mode, "model_file": os.path.basename(args.model),
           "batch": args.batch, "seq": args.seq, "answer_tokens": args.answer_tokens, "rank": args.rank,
           "alpha": args.alpha, "threads": torch.get_num_threads(), "steps": args.steps, "cpus": os.cpu_count(),
           "loadavg_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
           "tok_s": round(n / mean, 2), "tok_s_best": round(n / min(times), 2), "step_s_mean": round(mean, 4),
           "loss_first": round(losses[0], 4), "peak_rss_mb": round(peak_rss_mb())}
    res["versions"] = {k: v for k, v in rc.versions().items() if k in ("torch", "transformers", "peft")}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
