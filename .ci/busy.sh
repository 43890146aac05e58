#!/usr/bin/env bash
# Run a command with N CPU-burning processes beside it (default 2), as on a busy shared machine.
# The burners are started and stopped here, whatever the command does: `.ci/busy.sh [-n N] CMD...`
set -uo pipefail
n=2
if [ "${1:-}" = "-n" ]; then n=$2; shift 2; fi
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT INT TERM
for _ in $(seq "$n"); do
  (while :; do :; done) &
  pids+=($!)
done
echo "busy: $n CPU burners beside: $*"
"$@"
