#!/usr/bin/env python3
"""llama.cpp (llama-cpp-python) CPU forward throughput on a GGUF: the forward-speed reference.

    python scripts/reference/bench_llamacpp.py --model M.gguf --batch 8 --seq 128 --steps 3

Evaluates `batch` sequences of `seq` fixed pseudo-random tokens (the same ids dnd's benchmark uses) with a
cleared context each, 2 threads, llama.cpp computing logits for the last position only (its prompt
processing). llama.cpp runs the quantised weights directly, dnd dequantised f32. Prints one JSON line.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from refcommon import peak_rss_mb  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from llama_cpp import Llama, __version__

    llm = Llama(model_path=args.model, n_ctx=args.seq, n_batch=args.seq, n_threads=args.threads,
                n_threads_batch=args.threads, logits_all=False, verbose=False)
    vocab = llm.n_vocab()
    ids = [(i * 2654435761) % vocab for i in range(args.batch * args.seq)]
    seqs = [ids[i * args.seq:(i + 1) * args.seq] for i in range(args.batch)]

    def step():
        for s in seqs:
            llm.reset()
            llm._ctx.kv_cache_clear() if hasattr(llm._ctx, "kv_cache_clear") else None
            llm.eval(s)

    step()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    mean = sum(times) / len(times)
    print(json.dumps({
        "bench": "llama_cpp_reference", "model_file": os.path.basename(args.model), "batch": args.batch,
        "seq": args.seq, "threads": args.threads, "version": __version__,
        "forward": {"tok_s": round(args.batch * args.seq / mean, 2), "step_s_mean": round(mean, 4)},
        "peak_rss_mb": round(peak_rss_mb()),
    }))


if __name__ == "__main__":
    main()
