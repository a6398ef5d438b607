#!/usr/bin/env python3
"""Generation-latency reference for `dnd bench generate`: the official Drag-and-Drop LLMs decoder on CPU.

    python scripts/reference/bench_official_generate.py --spec SPEC.json --official /path/to/Drag-and-Drop-LLMs \
        [--mode once|full] [--threads 2]

The official source (github jerryliang24/Drag-and-Drop-LLMs) is read from a directory outside this
repository and imported, never copied: its `HyperConvDecoder` (workspace/dnd/module/hyperconv.py) is built
with the stage cascade and kernel of the spec (dnd's generator config), randomly initialised (latency does
not depend on the weights). SPEC.json is written by `dnd bench generate`: stages, kernel, the N prompts,
the encoder's word-piece limit L and model directory, and the adapter layout (rank, chunk width, and every
LoRA factor in token order with its PEFT key and length).

One generation = what `dnd generate` does: encode the N prompts with sentence-transformers
(all-MiniLM-L6-v2, per-token states cut to L word pieces, zero-padded to L), one decoder forward
(inference mode, as the official `generate`), de-tokenize (border scales -> chunks -> A and B) and write
`adapter_model.safetensors` + `adapter_config.json` into a temporary directory.

--mode once: load everything, generate one adapter, exit (the caller times the whole process: prompts ->
adapter on disk including interpreter start and imports). --mode full: load, then the median latency of
several generations after a warm-up, decoder-forward-only time, and training steps (forward + backward +
AdamW of the decoder, MSE to a random target, batch 1). Prints one JSON line; peak RSS is this process's
VmHWM.
"""
import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import refcommon as rc  # noqa: E402


def median_time(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


class Generation:
    """Encoder + official decoder + de-tokenizer + writer for one spec."""

    def __init__(self, spec, official):
        sys.path.insert(0, official)
        from workspace.dnd.module.hyperconv import HyperConvDecoder
        from sentence_transformers import SentenceTransformer, models

        self.spec = spec
        stages = [tuple(s) for s in spec["stages"]]
        self.decoder = HyperConvDecoder(features=stages, condition_dim=stages[0], kernel_size=spec["kernel"])
        self.decoder.eval()
        # The pipeline of the model card (dnd's cached copy has no 1_Pooling/ directory, so it is built
        # here, as encoder_fixture.py does); dnd cuts each prompt to max_len word pieces the same way.
        transformer = models.Transformer(spec["encoder_dir"], max_seq_length=spec["max_len"])
        dim = getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension
        pooling = models.Pooling(dim(), pooling_mode="mean")
        self.encoder = SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu")
        self.encoder.eval()
        self.n, self.len, self.hidden = stages[0]

    def condition(self):
        """[1, N, L, C]: per-token last hidden states, zero beyond each prompt."""
        states = self.encoder.encode(
            self.spec["prompts"], output_value="token_embeddings", batch_size=32, convert_to_tensor=False
        )
        cond = torch.zeros(1, self.n, self.len, self.hidden)
        for i, s in enumerate(states):
            m = min(s.shape[0], self.len)
            cond[0, i, :m] = s[:m]
        return cond

    def detokenize(self, tokens):
        """tokens [N_w, r+2, cw+2] -> {PEFT key: tensor}, with dnd's border layout (docs/method.md step 4)."""
        r, cw = self.spec["rank"], self.spec["chunk_width"]
        m = torch.cat([tokens[:, r:, 0::2].flatten(1), tokens[:, :r, cw]], dim=1).mean(1)
        s = torch.cat([tokens[:, r:, 1::2].flatten(1), tokens[:, :r, cw + 1]], dim=1).mean(1)
        mean = m / 8.0
        std = ((torch.exp(s - 1.6) - 0.1) / 0.9).clamp(min=0.0)
        chunks = tokens[:, :r, :cw] * std[:, None, None] + mean[:, None, None]
        out, i = {}, 0
        for f in self.spec["factors"]:
            n = math.ceil(f["len"] / cw)
            full = chunks[i : i + n].permute(1, 0, 2).reshape(r, n * cw)[:, : f["len"]]
            out[f["key"]] = (full.t() if f["transpose"] else full).contiguous()
            i += n
        assert i == tokens.shape[0], (i, tokens.shape)
        return out

    def write(self, tensors, out_dir):
        from safetensors.torch import save_file

        os.makedirs(out_dir, exist_ok=True)
        save_file(tensors, os.path.join(out_dir, "adapter_model.safetensors"))
        with open(os.path.join(out_dir, "adapter_config.json"), "w") as f:
            json.dump(self.spec["adapter_config"], f, indent=2)

    def generate(self, out_dir, parts=None):
        t = time.perf_counter()
        cond = self.condition()
        t1 = time.perf_counter()
        with torch.inference_mode():
            tokens = self.decoder(cond)[0]
        t2 = time.perf_counter()
        self.write(self.detokenize(tokens), out_dir)
        t3 = time.perf_counter()
        if parts is not None:
            parts.append({"encode_s": t1 - t, "decoder_forward_s": t2 - t1, "detokenize_write_s": t3 - t2})


def train_steps(decoder, stages, steps):
    """Seconds per training step: forward + backward + AdamW, MSE to a random target, batch 1."""
    decoder.train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, *stages[0], generator=g)
    target = torch.randn(1, *stages[-1], generator=g)
    opt = torch.optim.AdamW(decoder.parameters(), lr=1e-4)
    losses = []

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(decoder(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())

    med, times = median_time(step, steps)
    return {"step_s_median": med, "step_s": times, "steps_per_s": 1.0 / med, "loss_first": losses[0],
            "loss_last": losses[-1]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", required=True)
    ap.add_argument("--official", required=True, help="checkout of jerryliang24/Drag-and-Drop-LLMs")
    ap.add_argument("--mode", choices=["once", "full"], default="full")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with open(args.spec) as f:
        spec = json.load(f)
    gen = Generation(spec, os.path.abspath(args.official))
    load_s = time.perf_counter() - T_START
    out = {
        "impl": "official HyperConvDecoder (workspace/dnd/module/hyperconv.py) + sentence-transformers",
        "stages": spec["stages"],
        "kernel": spec["kernel"],
        "parameters": sum(p.numel() for p in gen.decoder.parameters()),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_s": load_s,
    }
    with tempfile.TemporaryDirectory() as tmp:
        parts = []
        t = time.perf_counter()
        gen.generate(os.path.join(tmp, "adapter-first"), parts)
        out["first_adapter_s"] = time.perf_counter() - t
        out["script_start_to_first_adapter_s"] = time.perf_counter() - T_START
        if args.mode == "full":
            k = iter(range(10**6))
            med, times = median_time(lambda: gen.generate(os.path.join(tmp, f"a{next(k)}"), parts),
                                     spec["repeats"])
            out["per_adapter_s_median"] = med
            out["per_adapter_s"] = times
            timed_parts = parts[2:]  # the first generation and the warm-up are not timed
            out["parts_median"] = {key: statistics.median(p[key] for p in timed_parts) for key in timed_parts[0]}
            cond = gen.condition()

            def forward():
                with torch.inference_mode():
                    gen.decoder(cond)

            out["decoder_forward_s_median"] = median_time(forward, spec["repeats"])[0]
            out["peak_rss_mb_generation"] = rc.peak_rss_mb()
            out["train"] = train_steps(gen.decoder, [tuple(s) for s in spec["stages"]], spec["train_steps"])
    out["peak_rss_mb"] = rc.peak_rss_mb()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
