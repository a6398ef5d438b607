"""Shared helpers for the Python reference scripts (fixtures, PEFT interop, benchmarks).

Reference side only: nothing in the product imports this.
"""
import json
import os
import sys

import numpy as np
import torch

SUBSET_STRIDE = 97
TOP_K = 20

CHAT_USER = [{"role": "user", "content": "The capital of France is"}]
CHAT_SYSTEM = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "The capital of France is"},
]
PLAIN_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
]


def versions() -> dict:
    import transformers

    out = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
    }
    for mod in ("gguf", "peft", "tokenizers", "safetensors"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover - optional
            try:
                from importlib.metadata import version

                out[mod] = version(mod)
            except Exception:
                out[mod] = None
    return out


def _dtype_kw():
    """transformers >= 4.56 takes `dtype`, older ones `torch_dtype`."""
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return {"dtype": torch.float32} if major >= 5 else {"torch_dtype": torch.float32}


def load_gguf(path: str, attn: str = "eager"):
    """(model, tokenizer) from a GGUF file via transformers' GGUF loader, float32, eager attention by default."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = os.path.abspath(os.path.expanduser(path))
    d, f = os.path.dirname(path), os.path.basename(path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, attn_implementation=attn, **_dtype_kw())
    model.eval()
    # (model.float() is refused: the GGUF path marks the model as "quantized", though weights are dequantised)
    bad = {str(p.dtype) for p in model.parameters() if p.dtype != torch.float32}
    assert not bad, f"non-float32 parameters: {bad}"
    return model, tok


def gguf_metadata(path: str) -> dict:
    """Small scalar metadata fields of a GGUF (no vocab arrays)."""
    import gguf

    r = gguf.GGUFReader(os.path.expanduser(path))
    out = {}
    for name, field in r.fields.items():
        if name.startswith("tokenizer.ggml.") and name not in (
            "tokenizer.ggml.model",
            "tokenizer.ggml.pre",
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.padding_token_id",
            "tokenizer.ggml.unknown_token_id",
            "tokenizer.ggml.add_bos_token",
            "tokenizer.ggml.add_eos_token",
            "tokenizer.ggml.add_space_prefix",
        ):
            continue
        try:
            v = field.contents()
        except Exception:
            continue
        if isinstance(v, list) and len(v) > 16:
            continue
        if isinstance(v, (bytes, bytearray)):
            v = v.decode("utf-8", "replace")
        out[name] = v
    types = {}
    for t in r.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    out["_tensor_types"] = types
    out["_n_tensors"] = len(r.tensors)
    return out


def r7(x):
    if isinstance(x, np.ndarray):
        x = x.tolist()
    if isinstance(x, list):
        return [r7(v) for v in x]
    if isinstance(x, float):
        return float(f"{x:.7g}")
    return x


def subset_ids(vocab_size: int):
    return list(range(0, vocab_size, SUBSET_STRIDE))


@torch.no_grad()
def logits_record(model, ids, vocab_size: int) -> dict:
    """Logits at every position, restricted to every 97th id, plus per-position top-20 and max|logit|."""
    out = model(input_ids=torch.tensor([ids], dtype=torch.long))
    lg = out.logits[0].float()  # [T, V]
    assert lg.shape[1] >= vocab_size, (lg.shape, vocab_size)
    lg = lg[:, :vocab_size]
    sub = torch.tensor(subset_ids(vocab_size), dtype=torch.long)
    top_v, top_i = torch.topk(lg, TOP_K, dim=-1)
    return {
        "ids": list(map(int, ids)),
        "subset_logits": r7(lg[:, sub].numpy()),
        "top_ids": top_i.tolist(),
        "top_logits": r7(top_v.numpy()),
        "max_abs": r7(lg.abs().max(dim=-1).values.numpy()),
        "argmax": lg.argmax(dim=-1).tolist(),
    }


def fixed_prompts(tok):
    """The 3 fixed prompts: two plain strings and the rendered user chat prompt (ids without extra specials)."""
    chat = tok.apply_chat_template(CHAT_USER, tokenize=False, add_generation_prompt=True)
    texts = PLAIN_PROMPTS + [chat]
    return [(t, tok.encode(t, add_special_tokens=False)) for t in texts]


def logits_block(model, tok, vocab_size: int) -> dict:
    return {
        "subset_stride": SUBSET_STRIDE,
        "subset_ids": subset_ids(vocab_size),
        "top_k": TOP_K,
        "prompts": [dict(text=t, **logits_record(model, ids, vocab_size)) for t, ids in fixed_prompts(tok)],
    }


def write_json(obj, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"), ensure_ascii=False,
                  default=lambda o: sorted(o) if isinstance(o, (set, frozenset)) else str(o))
        f.write("\n")
    return os.path.getsize(path)


def peak_rss_mb():
    """This process's peak RSS (VmHWM). Not getrusage: Linux keeps ru_maxrss across fork+exec, so a
    child of the dnd benchmark would report dnd's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return 0.0
