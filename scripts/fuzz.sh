#!/usr/bin/env bash
# libFuzzer (cargo-fuzz, nightly toolchain) on every parser dnd exposes to files and requests:
# GGUF, safetensors, adapter_config.json, task files, JSONL prompts, `dnd serve` request bodies.
#   scripts/fuzz.sh [RUNS] [TARGET...]      (default 1000000 runs of each target)
# Each target starts from the committed seeds in fuzz/seeds/TARGET and grows a working corpus outside
# the repository; memory is capped (a crash on unbounded allocation), and a crash leaves its input under
# fuzz/artifacts/TARGET. Prints one summary line per target and writes results/fuzz/runs.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-1000000}
shift || true
TARGETS=${*:-gguf safetensors adapter_config task_file prompts http_body}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version 0.13.2 --locked
WORK=${FUZZ_WORK:-${TMPDIR:-/tmp}/dnd-fuzz-corpus}
mkdir -p results/fuzz
for t in $TARGETS; do
  mkdir -p "$WORK/$t"
  start=$(date +%s)
  set +e
  (cd fuzz && cargo +nightly fuzz run -O "$t" "$WORK/$t" "seeds/$t" -- -runs="$RUNS" -rss_limit_mb=2048 \
      -malloc_limit_mb=1024 -max_len=65536 -timeout=10 -print_final_stats=1) > "$WORK/$t.log" 2>&1
  rc=$?
  set -e
  done_line=$(grep -E "^Done [0-9]+ runs" "$WORK/$t.log" | tail -1 || true)
  execs=$(grep -E "^stat::number_of_executed_units" "$WORK/$t.log" | awk '{print $2}' | tail -1)
  line="{\"target\": \"$t\", \"runs\": ${execs:-0}, \"seconds\": $(( $(date +%s) - start )), \"exit\": $rc, \"corpus\": $(ls "$WORK/$t" | wc -l), \"libfuzzer\": \"$done_line\"}"
  echo "$line" | tee -a results/fuzz/runs.jsonl
  [ $rc -eq 0 ] || { tail -40 "$WORK/$t.log"; exit $rc; }
done
