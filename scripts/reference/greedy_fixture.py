#!/usr/bin/env python3
"""transformers' greedy outputs on 20 fixed chat prompts, with and without a LoRA adapter (issue 18's
decoding parity fixture).

    python scripts/reference/greedy_fixture.py --model M.gguf --name smollm2 \
        --out crates/dnd-llm/tests/fixtures/greedy_smollm2.json

The adapter is not trained and not stored: rank 2 (alpha 4) on q_proj and v_proj, every A and B from
tiny_fixture.py's closed formula under its PEFT key, times --scale (a power of two, so exact in f32),
which dnd's test computes the same way (crates/dnd-llm/tests/common/mod.rs, `formula_lora`). The scale
is chosen so that the adapter changes some answers and not others. Each prompt is generated alone (no padding), transformers
`generate` with do_sample=False and a KV cache, stopping at the model's end-of-turn ids or after
--max-new tokens. dnd's test (crates/dnd-llm/tests/real_models.rs) checks its decoder against these ids
one prompt at a time and all 20 in one batch.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import refcommon as rc  # noqa: E402

PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Write a Python function that returns the square of a number.",
    "What is 12 times 7?",
    "Translate 'good morning' into Spanish.",
    "Give me a synonym for 'happy'.",
    "Why is the sky blue? Answer in one sentence.",
    "List the planets closest to the sun.",
    "What does DNA stand for?",
    "Complete the sentence: The quick brown fox",
    "Who wrote Romeo and Juliet?",
    "Is a tomato a fruit or a vegetable?",
    "Explain what a for loop does.",
    "What is the boiling point of water in Celsius?",
    "Write a haiku about the sea.",
    "How many days are in a leap year?",
    "What is the opposite of 'cold'?",
    "Sort these numbers: 5, 2, 9, 1.",
    "What language is spoken in Brazil?",
    "Say hello in French.",
]

RANK = 2
TARGETS = ["q_proj", "v_proj"]


def formula_adapter(model, scale):
    """PEFT LoRA on `model` whose A and B are the tiny fixtures' formula (under the saved PEFT key)
    times `scale`."""
    from peft import LoraConfig, get_peft_model
    from tiny_fixture import formula_tensor

    cfg = LoraConfig(r=RANK, lora_alpha=2 * RANK, lora_dropout=0.0, target_modules=TARGETS, bias="none",
                     task_type="CAUSAL_LM")
    pm = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                key = name.replace(".default", "")
                v = formula_tensor(key, tuple(p.shape), norm=False) * np.float32(scale)
                p.copy_(torch.from_numpy(v))
    pm.eval()
    return pm


@torch.no_grad()
def greedy(model, tok, prompt, max_new, eos):
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    ids = tok.encode(text, add_special_tokens=False)
    inp = torch.tensor([ids], dtype=torch.long)
    out = model.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=max_new, do_sample=False,
                         num_beams=1, eos_token_id=eos, pad_token_id=eos[0])
    return ids, out[0, len(ids):].tolist()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-new", type=int, default=24)
    ap.add_argument("--scale", type=float, default=0.5, help="power of two multiplying the formula adapter")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = rc.load_gguf(args.model)
    gen_eos = model.generation_config.eos_token_id
    eos = sorted(set((gen_eos if isinstance(gen_eos, list) else [gen_eos]) + [tok.eos_token_id]) - {None})

    base = [greedy(model, tok, p, args.max_new, eos) for p in PROMPTS]
    adapted = formula_adapter(model, args.scale)
    with_adapter = [greedy(adapted, tok, p, args.max_new, eos) for p in PROMPTS]
    changed = sum(b[1] != a[1] for b, a in zip(base, with_adapter))
    print(f"{args.name}: the adapter changes {changed} of {len(PROMPTS)} generations", file=sys.stderr)
    for p, (_, b), (_, a) in zip(PROMPTS, base, with_adapter):
        print(f"  {p!r}\n    base:    {tok.decode(b)!r}\n    adapter: {tok.decode(a)!r}", file=sys.stderr)
    rc.write_json({
        "model": args.name,
        "max_new_tokens": args.max_new,
        "eos_ids": eos,
        "adapter": {"formula": "tiny_fixture.py FORMULA (plain form) under the PEFT saved key, times scale",
                    "rank": RANK, "alpha": 2 * RANK, "targets": TARGETS, "scale": args.scale,
                    "changed": changed},
        "prompts": [{"text": p, "prompt_ids": ids, "base_ids": b, "adapter_ids": a}
                    for p, (ids, b), (_, a) in zip(PROMPTS, base, with_adapter)],
        "versions": rc.versions(),
    }, args.out)


if __name__ == "__main__":
    main()
