#!/usr/bin/env bash
# The page of `dnd serve` in headless Chromium: drop a prompts file, get an adapter, chat with it next
# to the base model; records results/serve/page.png and results/serve/page_check.json.
#   GEN=path/to/generator PY=$VENV/bin/python scripts/reference/page_check.sh
# Installs what it needs when missing: Debian's chromium package (apt, as root) and Playwright's Python
# package into the venv (its own browser download is not used: it drives the system Chromium).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
: "${GEN:?set GEN to a generator directory (dnd train --out DIR)}"
PORT=${PORT:-8098}
CHROMIUM=${CHROMIUM:-$(command -v chromium || true)}
if [ -z "$CHROMIUM" ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
  CHROMIUM=$(command -v chromium)
fi
$PY -c "import playwright" 2>/dev/null || $PY -m pip install -q playwright==1.65.3
W=$(mktemp -d)
cargo build --release -q -p dnd-cli
./target/release/dnd serve --port "$PORT" --api-key page-key --generator "$GEN" --adapters "$W/adapters" \
  > "$W/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$W"' EXIT
for _ in $(seq 120); do grep -q serving "$W/serve.log" && break; sleep 0.5; done
mkdir -p results/serve
$PY scripts/reference/page_check.py --url "http://127.0.0.1:$PORT/" --key page-key --chromium "$CHROMIUM" \
  --shot results/serve/page.png | tee results/serve/page_check.json
