#!/usr/bin/env bash
# Load test of `dnd serve` on loopback (SmolLM2-135M with a trained generator): 1 client, then 50
# concurrent clients mixing completions, chat and adapter creation for 2 minutes; records
# results/serve/load_test.json. Run it on a quiet machine.
#   GEN=path/to/generator PY=$VENV/bin/python scripts/reference/load_test.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
: "${GEN:?set GEN to a generator directory (dnd train --out DIR)}"
PORT=${PORT:-8097}
W=$(mktemp -d)
cargo build --release -q -p dnd-cli
./target/release/dnd serve --port "$PORT" --api-key k --admin-key a --generator "$GEN" --adapters "$W/adapters" \
  --max-queue 256 > "$W/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$W"' EXIT
for _ in $(seq 120); do grep -q serving "$W/serve.log" && break; sleep 0.5; done
mkdir -p results/serve
$PY scripts/reference/load_test.py --url "http://127.0.0.1:$PORT/v1" --key k --admin-key a --pid $SERVER \
  "$@" | tee "$W/out.json"
$PY - "$W/out.json" "$(uptime)" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
r["load_average_after"] = sys.argv[2].split("load average:")[-1].strip()
r["command"] = "GEN=... PY=$VENV/bin/python scripts/reference/load_test.sh"
json.dump(r, open("results/serve/load_test.json", "w"), indent=2)
PYEOF
