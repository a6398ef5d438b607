"""Parity of `dnd eval` with lm-evaluation-harness on exactly the same requests.

dnd exports every log-likelihood request it scores (`dnd eval --export-requests FILE`: the rendered
context string, the continuation, the gold index, option lengths and dnd's own token ids). This
script feeds the same (context, continuation) strings to lm-eval's HFLM (`lm.loglikelihood`, the
call lm-eval's tasks end in), loaded from the same GGUF with transformers (`gguf_file=`, float32,
CPU), recomputes acc / acc_norm exactly as lm-eval's multiple-choice tasks do, and compares them
with dnd's per-example records (`dnd eval --out DIR`: DIR/runs/base/<task>.json).

It also re-tokenises every pair with lm-eval's `_encode_pair` and counts where transformers' GGUF
tokenizer disagrees with dnd's (a known transformers GGUF-tokenizer difference for SmolLM2: several
spaces before a digit), so that score differences can be traced to tokenisation or to arithmetic.

    TQDM_DISABLE=1 $VENV/bin/python scripts/reference/lm_eval_parity.py \
        --requests /tmp/parity_requests.jsonl --dnd-dir results/parity/dnd \
        --model ~/.cache/dnd/models/SmolLM2-135M-Instruct.Q4_1.gguf --out results/parity --limit 250

lm-eval does not reuse a context across options, so it runs ~3x more tokens than dnd: `--limit` keeps
the first N examples of each task (dnd's split order) when CPU time is short.
"""
import argparse
import collections
import json
import os
import time

import numpy as np
import torch


def load_requests(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def scores(lls, gold, chars):
    """lm-eval's acc and acc_norm (log-likelihood / option length in characters)."""
    acc = float(int(np.argmax(lls)) == gold)
    if chars[0] is None:
        return acc, None
    norm = [ll / c for ll, c in zip(lls, chars)]
    return acc, float(int(np.argmax(norm)) == gold)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", required=True)
    ap.add_argument("--dnd-dir", required=True, help="dnd eval --out directory (runs/base/<task>.json)")
    ap.add_argument("--model", required=True, help="GGUF file")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True, help="directory for lm_eval_parity.json")
    ap.add_argument("--limit", type=int, help="only the first N examples of each task (CPU budget)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import lm_eval
    import transformers
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    path = os.path.abspath(os.path.expanduser(a.model))
    lm = HFLM(
        pretrained=os.path.dirname(path),
        gguf_file=os.path.basename(path),
        dtype="float32",
        device="cpu",
        batch_size=a.batch,
    )
    reqs = [r for r in load_requests(a.requests) if a.limit is None or r["example"] < a.limit]
    instances = [
        Instance(request_type="loglikelihood", doc={}, arguments=(r["context"], r["continuation"]), idx=i)
        for i, r in enumerate(reqs)
    ]
    t = time.time()
    out = lm.loglikelihood(instances, disable_tqdm=True)
    wall = time.time() - t

    by_example = collections.defaultdict(list)
    token_mismatch = collections.Counter()
    for r, (ll, _greedy) in zip(reqs, out):
        by_example[(r["task"], r["example"])].append((r, ll))
        ctx, cont = lm._encode_pair(r["context"], r["continuation"])
        if ctx != r["context_ids"] or cont != r["continuation_ids"]:
            token_mismatch[r["task"]] += 1

    tasks = list(dict.fromkeys(r["task"] for r in reqs))
    report = {
        "versions": {
            "lm_eval": lm_eval.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
        "model": path,
        "batch_size": a.batch,
        "limit": a.limit,
        "threads": a.threads,
        "lm_eval_wall_s": wall,
        "requests": len(reqs),
        "tasks": {},
    }
    for task in tasks:
        with open(os.path.join(a.dnd_dir, "runs", "base", f"{task}.json")) as f:
            dnd = {rec["id"]: rec for rec in json.load(f)["records"]}
        rows = [v for (t_, _), v in sorted(by_example.items()) if t_ == task]
        acc, norm, dacc, dnorm, flips, dll = [], [], [], [], 0, []
        for options in rows:
            first = options[0][0]
            lls = [ll for _, ll in options]
            a_, n_ = scores(lls, first["gold"], [r["choice_chars"] for r, _ in options])
            rec = dnd[first["id"]]
            dll.extend(abs(x - y) for x, y in zip(lls, rec["logprobs"]))
            acc.append(a_)
            dacc.append(rec["scores"]["acc"])
            flips += a_ != rec["scores"]["acc"]
            if n_ is not None:
                norm.append(n_)
                dnorm.append(rec["scores"]["acc_norm"])
        entry = {
            "n": len(rows),
            "lm_eval_acc": float(np.mean(acc)),
            "dnd_acc": float(np.mean(dacc)),
            "acc_diff_points": 100 * float(np.mean(dacc) - np.mean(acc)),
            "acc_flipped_items": int(flips),
            "max_abs_logprob_diff": float(max(dll)),
            "mean_abs_logprob_diff": float(np.mean(dll)),
            "requests_tokenised_differently": token_mismatch[task],
        }
        if norm:
            entry |= {
                "lm_eval_acc_norm": float(np.mean(norm)),
                "dnd_acc_norm": float(np.mean(dnorm)),
                "acc_norm_diff_points": 100 * float(np.mean(dnorm) - np.mean(norm)),
            }
        report["tasks"][task] = entry
        print(task, json.dumps(entry))

    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "lm_eval_parity.json"), "w") as f:
        json.dump(report, f, indent=2)
    lines = [
        "| task | n | acc lm-eval | acc dnd | Δ pts | acc_norm lm-eval | acc_norm dnd | Δ pts "
        "| items flipped | max \\|Δ logprob\\| | pairs tokenised differently |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, e in report["tasks"].items():
        pct = lambda k: f"{100 * e[k]:.1f}" if k in e else "-"
        dn = f"{e['acc_norm_diff_points']:+.2f}" if "acc_norm_diff_points" in e else "-"
        lines.append(
            f"| {task} | {e['n']} | {pct('lm_eval_acc')} | {pct('dnd_acc')} | {e['acc_diff_points']:+.2f} "
            f"| {pct('lm_eval_acc_norm')} | {pct('dnd_acc_norm')} | {dn} | {e['acc_flipped_items']} "
            f"| {e['max_abs_logprob_diff']:.2e} | {e['requests_tokenised_differently']} |"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
