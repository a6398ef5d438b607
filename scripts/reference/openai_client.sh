#!/usr/bin/env bash
# The official openai client against `dnd serve` on SmolLM2-135M with a trained generator; records
# results/serve/openai_client.json.
#   GEN=path/to/generator PY=$VENV/bin/python scripts/reference/openai_client.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
: "${GEN:?set GEN to a generator directory (dnd train --out DIR)}"
PORT=${PORT:-8099}
W=$(mktemp -d)
cargo build --release -q -p dnd-cli
./target/release/dnd serve --port "$PORT" --api-key user-key --admin-key admin-key --generator "$GEN" \
  --adapters "$W/adapters" > "$W/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$W"' EXIT
for _ in $(seq 120); do grep -q serving "$W/serve.log" && break; sleep 0.5; done
mkdir -p results/serve
$PY scripts/reference/openai_client.py --base-url "http://127.0.0.1:$PORT/v1" --key user-key \
  --admin-key admin-key > "$W/out.json"
$PY - "$W/out.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
r["command"] = "GEN=... PY=$VENV/bin/python scripts/reference/openai_client.sh"
json.dump(r, open("results/serve/openai_client.json", "w"), indent=2)
print(json.dumps(r, indent=2))
PYEOF
