"""How many basis directions a collection's tasks need: the best held-out error any basis head of K
directions can reach, with the directions the training tasks' principal ones (what `dnd train --head basis`
starts from) and each held-out checkpoint predicted by the projection of its own task's mean training
checkpoint on them. Relative to predicting the mean training checkpoint (1: no better; 0: exact).
Raw parameter space (every A and B value, every 7th kept), unweighted: the trainer's token weights are
left out, so the figures bound the shape of the curve, not the trainer's exact loss. Held out as the
trainer does: every 5th checkpoint of the collection counted across tasks, never a task's only one.
Needs numpy and safetensors (the reference venv).

    $VENV/bin/python scripts/analysis/basis_rank.py $DND_CACHE/collections/universe 8 16 32 64 128 200 290
"""
import json
import os
import sys

import numpy as np
from safetensors.numpy import load_file

STRIDE, HOLDOUT = 7, 5
root, ks = sys.argv[1], [int(k) for k in sys.argv[2:]] or [16]
names = [t["task"] for t in json.load(open(os.path.join(root, "collection.json")))["tasks"]]
ck = []
for n in names:
    d = os.path.join(root, n, "checkpoints")
    ck.append([])
    for s in sorted(os.listdir(d)):
        w = load_file(os.path.join(d, s, "adapter_model.safetensors"))
        ck[-1].append(np.concatenate([w[k].astype(np.float32).ravel() for k in sorted(w)])[::STRIDE])
seen, held, train = 0, [], []
for t, vs in enumerate(ck):
    train.append([])
    for i in range(len(vs)):
        seen += 1
        if seen % HOLDOUT == 0 and len(vs) > 1:
            held.append((t, i))
        else:
            train[-1].append(i)
means = np.stack([np.mean([ck[t][i] for i in train[t]], 0) for t in range(len(ck))])
center = np.mean([ck[t][i] for t in range(len(ck)) for i in train[t]], 0)
x = means - center
lam, u = np.linalg.eigh(x @ x.T)
order = np.argsort(lam)[::-1]
lam, u = lam[order], u[:, order]
base = np.mean([np.sum((ck[t][i] - center) ** 2) for t, i in held])
own = np.mean([np.sum((ck[t][i] - means[t]) ** 2) for t, i in held])
print(f"{len(ck)} tasks, {len(held)} held-out checkpoints; the own task's mean: {own / base:.4f}\n")
print("| K | best held-out error / the mean checkpoint's | variance of the task means held |")
print("|---|---|---|")
for k in ks:
    k = min(k, len(lam))
    v = (u[:, :k].T @ x) / np.sqrt(np.maximum(lam[:k], 1e-30))[:, None]
    err = np.mean([np.sum((ck[t][i] - center - (x[t] @ v.T) @ v) ** 2) for t, i in held])
    print(f"| {k} | {err / base:.3f} | {lam[:k].sum() / lam.sum():.3f} |")
