# Sourced by the `dnd serve` reference scripts: builds dnd, starts `dnd serve` on loopback with the
# generator $GEN, keys "user-key" / "admin-key" and the extra flags given, waits until it listens, and
# stops it (and removes its scratch directory $W) on exit. Sets PY, PORT, W and SERVER.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY=${PY:-python3}
: "${GEN:?set GEN to a generator directory (dnd train --out DIR)}"
PORT=${PORT:-8099}
W=$(mktemp -d)
cargo build --release -q -p dnd-cli
start_server() {
  ./target/release/dnd serve --port "$PORT" --api-key user-key --admin-key admin-key --generator "$GEN" \
    --adapters "$W/adapters" "$@" > "$W/serve.log" 2>&1 &
  SERVER=$!
  trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$W"' EXIT
  for _ in $(seq 120); do grep -q serving "$W/serve.log" && return; sleep 0.5; done
  echo "dnd serve did not start:" >&2
  cat "$W/serve.log" >&2
  exit 1
}
mkdir -p results/serve
