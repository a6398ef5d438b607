#!/usr/bin/env bash
# Load test of `dnd serve` on loopback (SmolLM2-135M with a trained generator): 1 client, then 50
# concurrent clients mixing completions, chat and adapter creation for 2 minutes; records
# results/serve/load_test.json. Run it on a quiet machine.
#   GEN=path/to/generator PY=$VENV/bin/python scripts/reference/load_test.sh
source "$(dirname "$0")/serve_common.sh"
start_server --max-queue 256
$PY scripts/reference/load_test.py --url "http://127.0.0.1:$PORT/v1" --key user-key --admin-key admin-key --pid $SERVER \
  "$@" | tee "$W/out.json"
$PY - "$W/out.json" "$(uptime)" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
r["load_average_after"] = sys.argv[2].split("load average:")[-1].strip()
r["command"] = "GEN=... PY=$VENV/bin/python scripts/reference/load_test.sh"
json.dump(r, open("results/serve/load_test.json", "w"), indent=2)
PYEOF
