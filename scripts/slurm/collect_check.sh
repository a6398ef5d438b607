#!/usr/bin/env bash
# A collection as a Slurm job array on a real single-node cluster (scripts/slurm/cluster.sh) against
# the same collection run locally: checkpoints, spread files, plots and the JSON files (without their
# time, memory and speed fields) must be identical.
#   scripts/slurm/collect_check.sh [WORKDIR]
# Uses SmolLM2-135M on two tasks with a short schedule (a few minutes on 2 cores). Array element 0 is
# killed mid-way and requeued (scontrol requeue): it resumes from its saved state.
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${1:-/tmp/dnd-slurm-check}
B=$PWD/target/release/dnd
ARGS=(collect --tasks winogrande,siqa --first-phase 4 --checkpoints 4 --state-every 1)
rm -rf "$W" && mkdir -p "$W"
cargo build --release -q -p dnd-cli
eval "$(scripts/slurm/cluster.sh up)"
"$B" "${ARGS[@]}" --dir "$W/local" > "$W/local.log" 2>&1
"$B" "${ARGS[@]}" --dir "$W/array" --emit-slurm "$W/collect.sbatch" --slurm-logs "$W/logs" --slurm-mem 3G
job=$(sbatch --parsable "$W/collect.sbatch")
# Kill element 0 once it has saved a step, and requeue it.
until ls "$W"/array/winogrande/checkpoints/step-* >/dev/null 2>&1; do sleep 1; done
scontrol requeue "${job}_0"
echo "requeued ${job}_0 after $(ls -d "$W"/array/winogrande/checkpoints/step-* | wc -l) checkpoint(s)"
while squeue -h -j "$job" 2>/dev/null | grep -q .; do sleep 2; done
grep -c "resum" "$W"/logs/*_0.out || true
"$B" "${ARGS[@]}" --dir "$W/array" --merge > "$W/merge.log" 2>&1
python3 - "$W/local" "$W/array" <<'PYEOF'
import hashlib, json, os, sys
TIMING = {"wall_time_s", "seconds", "sessions", "peak_rss_mb", "train_tokens_per_s"}
def strip(v):
    if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items() if k not in TIMING}
    if isinstance(v, list):
        return [strip(x) for x in v]
    return v
def digest(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            rel = os.path.relpath(p, root)
            if rel.startswith("units/"):
                continue
            data = open(p, "rb").read()
            if f.endswith(".json"):
                data = json.dumps(strip(json.loads(data)), sort_keys=True).encode()
            out[rel] = hashlib.sha256(data).hexdigest()
    return out
a, b = digest(sys.argv[1]), digest(sys.argv[2])
differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
print(f"{len(a)} files; differ: {differ or 'none'}")
sys.exit(1 if differ else 0)
PYEOF
