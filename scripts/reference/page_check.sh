#!/usr/bin/env bash
# The page of `dnd serve` in headless Chromium: drop a prompts file, get an adapter, chat with it next
# to the base model; records results/serve/page.png and results/serve/page_check.json.
#   GEN=path/to/generator PY=$VENV/bin/python scripts/reference/page_check.sh
# Installs what it needs when missing: Debian's chromium package (apt, as root) and Playwright's Python
# package into the venv (its own browser download is not used: it drives the system Chromium).
source "$(dirname "$0")/serve_common.sh"
CHROMIUM=${CHROMIUM:-$(command -v chromium || true)}
if [ -z "$CHROMIUM" ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
  CHROMIUM=$(command -v chromium)
fi
$PY -c "import playwright" 2>/dev/null || $PY -m pip install -q playwright==1.65.3
start_server
$PY scripts/reference/page_check.py --url "http://127.0.0.1:$PORT/" --key admin-key --chromium "$CHROMIUM" \
  --shot results/serve/page.png | tee results/serve/page_check.json
