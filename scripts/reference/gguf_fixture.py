#!/usr/bin/env python3
"""Real-model parity fixture from a GGUF file, computed with transformers' GGUF loader.

    python scripts/reference/gguf_fixture.py --model ~/.cache/dnd/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --out crates/dnd-llm/tests/fixtures/gguf_smollm2.json

Records tokenizer ids for a set of strings, chat-template renderings, logits at every position of 3 fixed
prompts (every 97th vocab id + top-20 + max|logit|) and a 20-token greedy generation.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import refcommon as rc  # noqa: E402

TOKENIZER_STRINGS = [
    "The quick brown fox jumps over the lazy dog.",
    "  leading and trailing spaces  ",
    "12345 678",
    "naïve café 東京 🙂",
    "def f(x):\n    return x**2\n",
    "Hello, world! It's 3.14159... isn't it?",
    "",
]


def tokenizer_block(tok):
    items = []
    for s in TOKENIZER_STRINGS:
        ids = tok.encode(s, add_special_tokens=False)
        items.append({
            "text": s,
            "ids": ids,
            "ids_default": tok.encode(s),  # with whatever specials the tokenizer adds by default
            "tokens": tok.convert_ids_to_tokens(ids),
            "decoded": tok.decode(ids),
        })
    chats = []
    for name, msgs in (("user", rc.CHAT_USER), ("system_user", rc.CHAT_SYSTEM)):
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        ids = tok.encode(text, add_special_tokens=False)
        tmpl_ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
        if isinstance(tmpl_ids, dict) or hasattr(tmpl_ids, "keys"):
            tmpl_ids = tmpl_ids["input_ids"]
        chats.append({
            "name": name,
            "messages": msgs,
            "rendered": text,
            "ids": ids,
            "ids_apply_chat_template": list(map(int, tmpl_ids)),
            "tokens": tok.convert_ids_to_tokens(ids),
        })
    return {
        "bos_token": tok.bos_token, "bos_token_id": tok.bos_token_id,
        "eos_token": tok.eos_token, "eos_token_id": tok.eos_token_id,
        "pad_token": tok.pad_token, "pad_token_id": tok.pad_token_id,
        "len": len(tok),
        "tokenizer_class": type(tok).__name__,
        "chat_template": tok.chat_template,
        "strings": items,
        "chat": chats,
    }


@torch.no_grad()
def greedy(model, tok, max_new=20, messages=rc.CHAT_USER):
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok.encode(text, add_special_tokens=False)
    inp = torch.tensor([ids], dtype=torch.long)
    out = model.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=max_new, do_sample=False,
                         num_beams=1, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    new = out[0, len(ids):].tolist()
    # independent check: plain argmax loop without the KV cache
    cur = list(ids)
    manual = []
    for _ in range(max_new):
        nxt = int(model(input_ids=torch.tensor([cur])).logits[0, -1].argmax())
        manual.append(nxt)
        cur.append(nxt)
        if nxt == tok.eos_token_id or (model.generation_config.eos_token_id is not None and nxt in (
                model.generation_config.eos_token_id if isinstance(model.generation_config.eos_token_id, list)
                else [model.generation_config.eos_token_id])):
            break
    return {
        "messages": messages,
        "prompt": text,
        "prompt_ids": ids,
        "max_new_tokens": max_new,
        "new_ids": new,
        "text": tok.decode(new, skip_special_tokens=True),
        "text_with_specials": tok.decode(new, skip_special_tokens=False),
        "manual_argmax_loop_ids": manual,
        "eos_token_id_generation_config": model.generation_config.eos_token_id,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    model, tok = rc.load_gguf(args.model)
    print(f"loaded in {time.time() - t0:.1f}s", file=sys.stderr)
    cfg = model.config
    vocab = cfg.vocab_size
    fixture = {
        "model_file": os.path.basename(args.model),
        "versions": rc.versions(),
        "loader": "transformers AutoModelForCausalLM/AutoTokenizer from_pretrained(gguf_file=...), float32, eager",
        "gguf_metadata": rc.gguf_metadata(args.model),
        "config": cfg.to_dict(),
        "tokenizer": tokenizer_block(tok),
    }
    fixture["config"].pop("transformers_version", None)
    t1 = time.time()
    fixture["logits"] = rc.logits_block(model, tok, vocab)
    print(f"logits in {time.time() - t1:.1f}s", file=sys.stderr)
    t2 = time.time()
    fixture["greedy"] = greedy(model, tok)
    print(f"greedy in {time.time() - t2:.1f}s: {fixture['greedy']['text']!r}", file=sys.stderr)
    # a second one that should end in EOS before max_new_tokens (checks stop handling)
    fixture["greedy_question"] = greedy(model, tok, 20, [{"role": "user", "content": "What is the capital of France?"}])
    print(f"greedy_question: {fixture['greedy_question']['text']!r}", file=sys.stderr)
    size = rc.write_json(fixture, args.out)
    print(f"wrote {args.out} ({size} bytes)")


if __name__ == "__main__":
    main()
