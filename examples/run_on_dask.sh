#!/usr/bin/env bash
# Run the showcase examples/primes.py on a Dask cluster started here: one scheduler and
# two single-threaded workers on 127.0.0.1.  Needs: pip install '.[dask]'
#
#     bash examples/run_on_dask.sh            # scheduler on port 8786
#     PORT=9786 bash examples/run_on_dask.sh
#
# On a real cluster, start `dask scheduler` on one machine and `dask worker tcp://HOST:8786`
# on the others (autofork and the program's own modules installed there), then run only
# the last command with --address tcp://HOST:8786.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${PORT:-8786}"
ADDRESS="tcp://127.0.0.1:${PORT}"
LOGS="$(mktemp -d)"
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$LOGS"
}
trap cleanup EXIT

dask scheduler --host 127.0.0.1 --port "$PORT" --no-dashboard >"$LOGS/scheduler.log" 2>&1 &
PIDS+=($!)
for i in 1 2; do
    dask worker "$ADDRESS" --host 127.0.0.1 --nthreads 1 --no-dashboard \
        --local-directory "$LOGS" >"$LOGS/worker-$i.log" 2>&1 &
    PIDS+=($!)
done

# Wait until both workers have joined the scheduler.
python - "$ADDRESS" <<'EOF'
import sys
from distributed import Client

with Client(sys.argv[1], timeout=30) as client:
    client.wait_for_workers(2, timeout=60)
    print(f"cluster at {sys.argv[1]}: {len(client.scheduler_info()['workers'])} workers")
EOF

python -m autofork --backend dask --address "$ADDRESS" examples/primes.py
