#!/usr/bin/env bash
# Trivial-task throughput of peergrid, Ray and Dask on this machine, in one run, with the ratios.
#
#   bench/compare/run.sh                 # 4,000 tasks, median of 5 runs each
#   TASKS=200 RUNS=1 bench/compare/run.sh
#
# peergrid: `cargo bench -p peergrid-submitter --bench grid -- --mode trivial` (2 workers × 1
# slot, replication 2, every receipt verified, every result durable before it counts). Ray and
# Dask: bench/compare/trivial_tasks.py (2 single-threaded workers, each task run once), in a venv
# at target/bench-venv, created and filled from PyPI on first use. Nothing is committed.
set -euo pipefail
cd "$(dirname "$0")/../.."
tasks=${TASKS:-4000}
runs=${RUNS:-5}
venv=target/bench-venv

if ! "$venv/bin/python" -c 'import ray, distributed' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet ray dask distributed
fi

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
# The bench's progress lines go to a log, shown in full if the bench fails.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! grid=$(cargo bench --quiet -p peergrid-submitter --bench grid -- \
    --mode trivial --tasks "$tasks" --runs "$runs" --json 2>"$log" | grep '"mode":"trivial"'); then
    echo "the peergrid grid bench failed:" >&2
    cat "$log" >&2
    exit 1
fi
python=$("$venv/bin/python" bench/compare/trivial_tasks.py --tasks "$tasks" --runs "$runs" --json)
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

"$venv/bin/python" - "$grid" "$python" <<'PY'
import json, sys
grid = json.loads(sys.argv[1])
others = [json.loads(line) for line in sys.argv[2].splitlines() if line.strip()]
ours = grid["tasks_per_s"]
print(f"peergrid: {ours:.0f} accepted tasks/s ({grid['copies_per_s']:.0f} copies/s; "
      f"2 copies per task, receipts verified, results durable), runs {grid['all_tasks_per_s']}")
for other in others:
    print(f"{other['framework']} {other['version']}: {other['tasks_per_s']:.0f} tasks/s, "
          f"runs {other['all_tasks_per_s']}; peergrid/{other['framework']} = "
          f"{ours / other['tasks_per_s']:.2f}")
PY
