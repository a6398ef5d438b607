#!/usr/bin/env bash
# llama.cpp parity of `dnd export` (LoRA GGUF and merged GGUF) on SmolLM2-135M (llama: permuted Q/K) and
# Qwen2.5-Coder-0.5B (qwen2); records results/parity/gguf_lora.json.
#   PY=$VENV/bin/python scripts/reference/gguf_lora_parity.sh
# The venv needs llama-cpp-python (requirements.txt: built with the CMAKE_ARGS noted there), numpy and
# safetensors. Writes ~6 GB of temporary GGUFs (float copies of the bases) under $TMPDIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
M=${DND_CACHE:-$HOME/.cache/dnd}/models
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
export OMP_WAIT_POLICY=PASSIVE   # llama.cpp's spinning OpenMP threads starve each other on 2 cores
cargo build --release -q -p dnd-export --tests
for model in SmolLM2-135M-Instruct.Q4_1.gguf Qwen2.5-Coder-0.5B-Instruct.gguf; do
  DND_GGUF_MODEL="$M/$model" DND_GGUF_OUT="$W/$model" \
    cargo test --release -q -p dnd-export --test llamacpp_interop -- --ignored
  $PY scripts/reference/gguf_lora_parity.py --dir "$W/$model" --model "$M/$model" | tail -1 > "$W/$model.json"
  rm -rf "${W:?}/$model"
done
$PY - "$W" <<'PYEOF'
import json, sys, glob, os
runs = [json.load(open(f)) for f in sorted(glob.glob(f"{sys.argv[1]}/*.json"))]
res = {
    "metric": "per position max|llama.cpp logit - dnd logit| / max|dnd logit| (full vocabulary), worst over 3 prompts",
    "tolerance": 1e-3,
    "adapter": "rank 8, alpha 16, all 7 projections, A and B sinusoids of amplitude 0.02 (crates/dnd-export/tests/common)",
    "command": "PY=$VENV/bin/python scripts/reference/gguf_lora_parity.sh",
    "runs": runs,
}
os.makedirs("results/parity", exist_ok=True)
json.dump(res, open("results/parity/gguf_lora.json", "w"), indent=2)
print(json.dumps(res, indent=2))
bad = [(r["model"], k) for r in runs for k, v in r["worst_relative"].items() if k.startswith("float") and v > 1e-3]
assert not bad, f"over tolerance: {bad}"
PYEOF
