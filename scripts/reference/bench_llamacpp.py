#!/usr/bin/env python3
"""llama.cpp (llama-cpp-python) reference for `dnd bench llm` on the same GGUF, 2 threads.

    python scripts/reference/bench_llamacpp.py --model M.gguf --batch 8 --seq 128 \
        --steps 3 --decode-prompt 32 --decode-new 128

OpenMP's wait policy is left to the caller: on a quiet 2-core machine llama.cpp's spinning threads are
fastest (decode_1 113 tok/s against 40 with OMP_WAIT_POLICY=PASSIVE, session 15); on a loaded one
PASSIVE was (25 against 7.8 tok/s, session 11). The variable must be set before the process starts:
refcommon imports torch, which loads the OpenMP runtime.

`forward`: `batch` sequences of `seq` fixed pseudo-random tokens (dnd's ids), a cleared context each,
logits for the last position only (llama.cpp's prompt processing); median of --steps after a warm-up.
`decode_1`: greedy decoding (top-k 1) of exactly --decode-new tokens after a --decode-prompt-token
prompt, prompt processing included, one run after a warm-up. llama.cpp runs the GGUF's quantised blocks
directly (dnd and PyTorch dequantised f32). It has no batched decoding in this API: no `decode_batch`.
Prints one JSON line: {"tok_s": {measure: tokens/s}, ...}. Build and run notes: README.md here.
"""
import argparse
import json
import os
import statistics
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
    ap.add_argument("--decode-prompt", type=int, default=32)
    ap.add_argument("--decode-new", type=int, default=128)
    ap.add_argument("--decode-batch", type=int, default=16, help="accepted for dnd's arguments; not measured")
    ap.add_argument("--matmul-shapes", default="", help="accepted for dnd's arguments; not measured")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated measures to run (default: all)")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    from llama_cpp import Llama, __version__

    n_ctx = max(args.seq, args.decode_prompt + args.decode_new)
    llm = Llama(model_path=args.model, n_ctx=n_ctx, n_batch=n_ctx, n_threads=args.threads,
                n_threads_batch=args.threads, logits_all=False, verbose=False)
    vocab = llm.n_vocab()
    ids = [(i * 2654435761) % vocab for i in range(args.batch * args.seq)]
    seqs = [ids[i * args.seq:(i + 1) * args.seq] for i in range(args.batch)]

    def forward():
        for s in seqs:
            llm.reset()
            llm.eval(s)

    tok_s = {}
    if not only or "forward" in only:
        forward()
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            forward()
            times.append(time.perf_counter() - t)
        tok_s["forward"] = round(args.batch * args.seq / statistics.median(times), 2)

    prompt = ids[:args.decode_prompt]

    def decode(n):
        # A cleared context: `generate` would otherwise reuse the warm-up's cached prompt and time no
        # prompt processing, which dnd's and PyTorch's figures include.
        llm.reset()
        count = 0
        for _tok in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, reset=True):
            count += 1
            if count == n:
                break
        return count

    if not only or "decode_1" in only:
        decode(4)
        t = time.perf_counter()
        generated = decode(args.decode_new)
        tok_s["decode_1"] = round(generated / (time.perf_counter() - t), 2)
    print(json.dumps({
        "bench": "llama_cpp_reference",
        "tok_s": tok_s,
        "model_file": os.path.basename(args.model),
        "threads": args.threads,
        "version": __version__,
        "peak_rss_mb": round(peak_rss_mb()),
    }))


if __name__ == "__main__":
    main()
