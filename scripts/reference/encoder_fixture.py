#!/usr/bin/env python3
"""Parity fixture for the Rust MiniLM encoder (crates/dnd-encode).

Builds the sentence-transformers pipeline (Transformer -> mean Pooling -> Normalize, as the model's
modules.json describes) from the cached model directory and records, for a few varied texts encoded as one
padded batch:
  - the WordPiece ids (with [CLS]/[SEP]) after truncation to MAX_LEN,
  - per-token last_hidden_state at the valid positions, on every STRIDE-th hidden dimension (to keep the
    JSON small), plus every dimension of the first and last token,
  - the mean-pooled, L2-normalised sentence embedding (all 384 dims).

    python scripts/reference/encoder_fixture.py [--model ~/.cache/dnd/models/all-MiniLM-L6-v2] \
        [--out crates/dnd-encode/tests/fixtures/minilm_parity.json]
"""
import argparse
import json
import os

import torch
from sentence_transformers import SentenceTransformer, models

MAX_LEN = 256
STRIDE = 6

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "Which of these would let the most heat travel through? (A) a new pair of jeans (B) a steel spoon "
    "in a cafeteria (C) a cotton candy at a store (D) a calvin klein cotton hat",
    "Ünïcödé, accents & punctuation!? Crème brûlée costs $3.50 -- 東京 tokens, emoji-free.",
    # Longer than MAX_LEN word pieces, so it checks truncation to MAX_LEN (keeping the final [SEP]).
    " ".join(f"word{i} is followed by another sentence about item {i}." for i in range(40)),
]


def main():
    p = argparse.ArgumentParser()
    default_model = os.path.join(
        os.environ.get("DND_CACHE", os.path.expanduser("~/.cache/dnd")), "models", "all-MiniLM-L6-v2"
    )
    p.add_argument("--model", default=default_model)
    p.add_argument("--out", default="crates/dnd-encode/tests/fixtures/minilm_parity.json")
    a = p.parse_args()

    torch.manual_seed(0)
    transformer = models.Transformer(a.model, max_seq_length=MAX_LEN)
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), pooling_mode="mean")
    st = SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu")
    st.eval()

    tok = st.tokenize(TEXTS)
    with torch.no_grad():
        out = st.forward(dict(tok))
    hidden = out["token_embeddings"]  # [N, T, 384]
    pooled = out["sentence_embedding"]  # [N, 384], normalised
    mask = tok["attention_mask"]

    records = []
    for i, text in enumerate(TEXTS):
        n = int(mask[i].sum())
        h = hidden[i, :n].double()
        records.append(
            {
                "text": text,
                "ids": tok["input_ids"][i, :n].tolist(),
                "hidden_strided": [[float(f"{x:.7g}") for x in row[::STRIDE].tolist()] for row in h],
                "hidden_first": [float(f"{x:.7g}") for x in h[0].tolist()],
                "hidden_last": [float(f"{x:.7g}") for x in h[n - 1].tolist()],
                "pooled": [float(f"{x:.8g}") for x in pooled[i].double().tolist()],
            }
        )
    cos = float(pooled[0] @ pooled[1])
    fixture = {
        "generator": "scripts/reference/encoder_fixture.py",
        "sentence_transformers": __import__("sentence_transformers").__version__,
        "transformers": __import__("transformers").__version__,
        "max_len": MAX_LEN,
        "stride": STRIDE,
        "cosine_0_1": cos,
        "texts": records,
    }
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
    print(f"wrote {a.out}: {os.path.getsize(a.out)} bytes; cosine(0,1) = {cos:.6f}")
    for r in records:
        print(len(r["ids"]), r["text"][:50])


if __name__ == "__main__":
    main()
