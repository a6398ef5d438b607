#!/usr/bin/env bash
# The main job on the default model (SmolLM2-135M-Instruct) and data (../shared/data): fetch and verify
# the assets, then score the base model on the eight common-sense benchmarks' test splits
# (results/base/results.{json,md}). LIMIT caps examples per task (default 500; LIMIT=0 for all).
# Resumable: finished (model, task) results are reused.
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT=${LIMIT:-500}
cargo build --release --locked --bin dnd
./target/release/dnd fetch
limit=()
[ "$LIMIT" != 0 ] && limit=(--limit "$LIMIT")
./target/release/dnd eval --tasks arc_easy,arc_challenge,boolq,hellaswag,openbookqa,piqa,winogrande,siqa \
  --split test "${limit[@]}" --out results/base
