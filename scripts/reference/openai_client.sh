#!/usr/bin/env bash
# The official openai client against `dnd serve` on SmolLM2-135M with a trained generator; records
# results/serve/openai_client.json.
#   GEN=path/to/generator PY=$VENV/bin/python scripts/reference/openai_client.sh
source "$(dirname "$0")/serve_common.sh"
start_server
$PY scripts/reference/openai_client.py --base-url "http://127.0.0.1:$PORT/v1" --key user-key \
  --admin-key admin-key > "$W/out.json"
$PY - "$W/out.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
r["command"] = "GEN=... PY=$VENV/bin/python scripts/reference/openai_client.sh"
json.dump(r, open("results/serve/openai_client.json", "w"), indent=2)
print(json.dumps(r, indent=2))
PYEOF
