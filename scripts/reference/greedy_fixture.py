#!/usr/bin/env python3
"""transformers' greedy outputs on 20 fixed chat prompts, with and without a LoRA adapter (issue 18's
decoding parity fixture).

    python scripts/reference/greedy_fixture.py --model M.gguf --name smollm2 \
        --out crates/dnd-llm/tests/fixtures/greedy_smollm2.json \
        --adapter-out crates/dnd-llm/tests/fixtures/greedy_adapter_smollm2

The adapter is seeded, not trained: rank 2 on q_proj and v_proj, A and B drawn from a fixed torch
generator and scaled so that it changes some answers and not others. It is written as a PEFT directory
(f16 weights, small enough to commit) and loaded back with PEFT, so the generations with the adapter are
PEFT's reading of the very files dnd reads. Each prompt is generated alone (no padding), transformers
`generate` with do_sample=False and a KV cache, stopping at the model's end-of-turn ids or after
--max-new tokens. dnd's test (crates/dnd-llm/tests/real_models.rs) checks its decoder against these ids
one prompt at a time and all 20 in one batch.
"""
import argparse
import json
import os
import sys

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


def seeded_adapter(model, scale):
    """PEFT LoRA on `model` with A, B from a fixed generator (B non-zero, unlike PEFT's init)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=RANK, lora_alpha=2 * RANK, lora_dropout=0.0, target_modules=TARGETS, bias="none",
                     task_type="CAUSAL_LM")
    pm = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(18)
    with torch.no_grad():
        for name, p in sorted(pm.named_parameters()):
            if "lora_A" in name or "lora_B" in name:
                v = torch.randn(p.shape, generator=g) * scale / (p.shape[1] ** 0.5)
                # f16-representable values, so the committed f16 file holds them exactly.
                p.copy_(v.half().float())
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
    ap.add_argument("--adapter-out", required=True)
    ap.add_argument("--max-new", type=int, default=24)
    ap.add_argument("--scale", type=float, default=0.25, help="size of the seeded adapter's entries")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = rc.load_gguf(args.model)
    gen_eos = model.generation_config.eos_token_id
    eos = sorted(set((gen_eos if isinstance(gen_eos, list) else [gen_eos]) + [tok.eos_token_id]) - {None})

    base = [greedy(model, tok, p, args.max_new, eos) for p in PROMPTS]
    pm = seeded_adapter(model, args.scale)
    pm.save_pretrained(args.adapter_out, safe_serialization=True)
    from peft import PeftModel
    from safetensors.torch import load_file, save_file

    card = os.path.join(args.adapter_out, "README.md")  # PEFT's model card template
    if os.path.exists(card):
        os.remove(card)
    config_path = os.path.join(args.adapter_out, "adapter_config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["base_model_name_or_path"] = args.name  # not this machine's path
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    weights = os.path.join(args.adapter_out, "adapter_model.safetensors")
    save_file({k: v.half() for k, v in load_file(weights).items()}, weights)
    base_model, _ = rc.load_gguf(args.model)
    adapted = PeftModel.from_pretrained(base_model, args.adapter_out)
    adapted.eval()
    with_adapter = [greedy(adapted, tok, p, args.max_new, eos) for p in PROMPTS]
    changed = sum(b[1] != a[1] for b, a in zip(base, with_adapter))
    print(f"{args.name}: the adapter changes {changed} of {len(PROMPTS)} generations", file=sys.stderr)
    for p, (_, b), (_, a) in zip(PROMPTS, base, with_adapter):
        print(f"  {p!r}\n    base:    {tok.decode(b)!r}\n    adapter: {tok.decode(a)!r}", file=sys.stderr)
    rc.write_json({
        "model": args.name,
        "max_new_tokens": args.max_new,
        "eos_ids": eos,
        "adapter": {"dir": os.path.basename(args.adapter_out), "rank": RANK, "targets": TARGETS,
                    "scale": args.scale, "seed": 18, "changed": changed},
        "prompts": [{"text": p, "prompt_ids": ids, "base_ids": b, "adapter_ids": a}
                    for p, (ids, b), (_, a) in zip(PROMPTS, base, with_adapter)],
        "versions": rc.versions(),
    }, args.out)


if __name__ == "__main__":
    main()
