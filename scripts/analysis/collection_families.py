"""Per-family view of a collection summary written by `dnd collect --summary PREFIX` (PREFIX.json): for
each family of tasks (the part of the name before the first dot: t0, bbh, gauntlet, math; the built-in
tasks and code_alpaca on their own) the number of tasks, how many learned by the held-out criterion
(the LoRA's answer-token loss on the validation items below the base model's by more than two paired
stderrs), the median held-out loss before and after, and the summed and mean wall time. Pure Python.

    python3 scripts/analysis/collection_families.py results/collect/universe.json
"""
import json
import statistics as st
import sys

summary = json.load(open(sys.argv[1]))
fam = {}
for t in summary["tasks"]:
    name = t["task"]
    key = name.split(".")[0] if "." in name else ("code" if name == "code_alpaca" else "built-in")
    fam.setdefault(key, []).append(t)
print("| family | tasks | learned | median held-out loss base -> LoRA | wall time summed (min) | mean per task (s) |")
print("|---|---|---|---|---|---|")
rows = sorted(fam.items(), key=lambda kv: -len(kv[1])) + [("all", summary["tasks"])]
for key, ts in rows:
    h = [t["heldout"] for t in ts if t.get("heldout")]
    learned = sum(x["base_loss"] - x["lora_loss"] > 2 * x["paired_stderr"] for x in h)
    wall = [t["wall_time_s"] for t in ts]
    print(f"| {key} | {len(ts)} | {learned}/{len(h)} | "
          f"{st.median(x['base_loss'] for x in h):.2f} -> {st.median(x['lora_loss'] for x in h):.2f} | "
          f"{sum(wall) / 60:.1f} | {st.mean(wall):.1f} |")
not_learned = [t["task"] for t in summary["tasks"]
               if t.get("heldout") and not (t["heldout"]["base_loss"] - t["heldout"]["lora_loss"]
                                            > 2 * t["heldout"]["paired_stderr"])]
print(f"\nNot learned ({len(not_learned)}): {', '.join(not_learned) or 'none'}")
