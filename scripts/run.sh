#!/usr/bin/env bash
# The main job on the default model (SmolLM2-135M-Instruct) and data (../shared/data): the whole
# Drag-and-Drop loop, leave-one-out over the eight common-sense tasks.
#   1. fetch and verify the assets;
#   2. collect LoRA checkpoint trajectories for every task ($DND_CACHE/collections/commonsense);
#   3. per held-out task: train a generator on the other tasks, generate adapters from the held-out
#      task's unlabeled prompts, score them and every baseline on its test split;
#   4. write the report to results/experiment/commonsense/.
# LIMIT caps the test items scored per task (default 100; 0 for all). Every stage is resumable: rerun
# after an interruption and finished work (checkpoints, generators, adapters, scores) is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT=${LIMIT:-100}
scripts/system-deps.sh
cargo build --release --locked --bin dnd
./target/release/dnd fetch
./target/release/dnd collect
./target/release/dnd experiment --limit "$LIMIT"
