#!/usr/bin/env bash
# PEFT interoperability, both directions, on SmolLM2-135M-Instruct; records results/parity/peft.json.
#   PY=$VENV/bin/python scripts/reference/peft_interop.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
MODEL=${MODEL:-${DND_CACHE:-$HOME/.cache/dnd}/models/SmolLM2-135M-Instruct.Q4_1.gguf}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
export TQDM_DISABLE=1
$PY scripts/reference/peft_check.py make --model "$MODEL" --out "$W/peft" --seed 0 --logits "$W/peft_logits.json"
DND_PEFT_MODEL="$MODEL" DND_PEFT_IN="$W/peft" DND_PEFT_IN_LOGITS="$W/peft_logits.json" DND_PEFT_OUT="$W" \
  cargo test --release -q -p dnd-llm --test peft_interop -- --ignored
$PY scripts/reference/peft_check.py score --model "$MODEL" --adapter "$W/adapter" --logits "$W/peft_on_dnd.json"
$PY - "$W" "$MODEL" <<'PYEOF'
import json, sys, os
w = sys.argv[1]
dnd = json.load(open(f"{w}/dnd_logits.json"))
peft = json.load(open(f"{w}/peft_on_dnd.json"))["logits"]
worst = 0.0
for a, b in zip(dnd["logits"]["prompts"], peft["prompts"]):
    for pos, (ra, rb) in enumerate(zip(a["subset_logits"], b["subset_logits"])):
        worst = max(worst, max(abs(x - y) for x, y in zip(ra, rb)) / b["max_abs"][pos])
res = {
    "model": os.path.basename(sys.argv[2]),
    "peft_written_loaded_by_dnd_worst_relative": dnd["peft_in_worst_relative"],
    "dnd_written_loaded_by_peft_worst_relative": worst,
    "tolerance": 1e-3,
    "metric": "max over prompts/positions of max|logit diff| (every 97th vocab id) / max|logit|",
    "command": "PY=$VENV/bin/python scripts/reference/peft_interop.sh",
}
os.makedirs("results/parity", exist_ok=True)
json.dump(res, open("results/parity/peft.json", "w"), indent=2)
print(json.dumps(res, indent=2))
assert worst <= 1e-3 and dnd["peft_in_worst_relative"] <= 1e-3
PYEOF
