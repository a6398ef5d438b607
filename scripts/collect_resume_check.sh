#!/bin/bash
# Resume check on the real model: one uninterrupted collection, and one killed (SIGKILL) twice
# mid-way and rerun; their checkpoints and spread files must be byte-identical.
#   scripts/collect_resume_check.sh [DND_BINARY] [WORKDIR]
set -u
B=${1:-target/release/dnd}
W=${2:-/tmp/dnd-resume-check}
ARGS="--tasks winogrande,siqa --first-phase 2 --checkpoints 4 --state-every 1"
rm -rf "$W" && mkdir -p "$W"
$B collect $ARGS --dir "$W/a" > "$W/a.log" 2>&1
for delay in 25 40; do
  $B collect $ARGS --dir "$W/b" > "$W/b.log" 2>&1 &
  pid=$!
  sleep $delay
  kill -9 $pid; wait $pid 2>/dev/null
  echo "killed after ${delay}s; files:"; (cd "$W/b" && find . -name '*.safetensors' | sort | tr '\n' ' '); echo
done
$B collect $ARGS --dir "$W/b" >> "$W/b.log" 2>&1
for r in a b; do
  (cd "$W/$r" && find . \( -path '*checkpoints*' -o -name checkpoint_std.safetensors \) -type f | sort | xargs sha256sum) > "$W/$r.sha"
done
wc -l < "$W/a.sha"
if cmp -s "$W/a.sha" "$W/b.sha"; then echo "IDENTICAL"; else echo "DIFFERENT"; diff "$W/a.sha" "$W/b.sha"; exit 1; fi
