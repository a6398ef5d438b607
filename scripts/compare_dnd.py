#!/usr/bin/env python3
"""Paired comparison of the DnD rows of two `dnd experiment` runs (e.g. two decoder sizes).

Reads the per-item score files under $DND_CACHE/experiments/<name>/scores/runs/<target>/dnd-<k>/ and,
per target, averages each item's primary metric over the generated adapters, then reports both runs'
means and the paired difference with its standard error. Analysis of dnd's own output only.

    python3 scripts/compare_dnd.py commonsense hidden128 [--targets a,b,...]
"""
import argparse
import glob
import json
import math
import os


def dnd_items(root, target):
    """item id -> mean primary metric over the target's generated adapters."""
    per_item = {}
    files = sorted(glob.glob(os.path.join(root, "scores", "runs", target, "dnd-*", f"{target}.json")))
    for f in files:
        run = json.load(open(f))
        for r in run["records"]:
            per_item.setdefault(r["id"], []).append(r["scores"][run["primary"]])
    return {k: sum(v) / len(v) for k, v in per_item.items()}, len(files)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--targets", default="")
    ap.add_argument("--cache", default=os.environ.get("DND_CACHE", os.path.expanduser("~/.cache/dnd")))
    args = ap.parse_args()
    ra, rb = (os.path.join(args.cache, "experiments", n) for n in (args.a, args.b))
    targets = args.targets.split(",") if args.targets else sorted(
        os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(rb, "scores", "runs", "*", "dnd-0")))
    print(f"| target | {args.a} | {args.b} | {args.b} - {args.a} (paired stderr) | adapters |")
    print("|---|---|---|---|---|")
    diffs = []
    for t in targets:
        (ia, na), (ib, nb) = dnd_items(ra, t), dnd_items(rb, t)
        common = sorted(set(ia) & set(ib))
        if not common:
            continue
        d = [ib[k] - ia[k] for k in common]
        n = len(d)
        mean = sum(d) / n
        se = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n) if n > 1 else float("nan")
        ma = 100 * sum(ia[k] for k in common) / n
        mb = 100 * sum(ib[k] for k in common) / n
        diffs.append(100 * mean)
        print(f"| {t} | {ma:.1f} | {mb:.1f} | {100 * mean:+.1f} ± {100 * se:.1f} | {na} / {nb} |")
    if diffs:
        wins = sum(x > 0 for x in diffs)
        losses = sum(x < 0 for x in diffs)
        print(f"\nMean difference over {len(diffs)} targets: {sum(diffs) / len(diffs):+.2f} points; "
              f"{args.b} higher on {wins}, lower on {losses}, tied on {len(diffs) - wins - losses}.")


if __name__ == "__main__":
    main()
