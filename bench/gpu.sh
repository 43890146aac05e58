#!/usr/bin/env bash
# The seed-sized configuration on one GPU: ViT-S/16 at 224 + 12-layer text (preset `seed`), 800 steps
# of 64, 3 folds, one process per fold as the supervisor runs them (not sandboxed: this measures the
# model and the harness, bench.run_overhead measures the product). Prints wall time per experiment,
# steps/s, images/s, MFU against the chip's bf16 dense peak, GPU busy fraction, peak memory.
#
#   bench/gpu.sh                 # on a GPU machine; one call, well under 10 minutes on an H100/H200
#   bench/gpu.sh --cpu-smoke     # the same pipeline on CPU with 2 steps of 8 (checks the script, not speed)
#
# Env: PY (interpreter, default .venv/bin/python), OUT (folder, default a new /tmp/ar-gpu-*),
#      SYNTH=small|default (synthetic dataset: small = 640 train+val pairs, default = 11k; the step cost
#      is the same, the eval pool and the data load are not), STEPS (default 800), COMPILE=1 (also time
#      the step under torch.compile), PEAK_TFLOPS (the chip's bf16 peak when its name is not known).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}; [ -x "$PY" ] || PY=python3
MODE=gpu; [ "${1:-}" = "--cpu-smoke" ] && MODE=cpu
OUT=${OUT:-$(mktemp -d /tmp/ar-gpu-XXXXXX)}
SYNTH=${SYNTH:-small}
FOLDS=3        # eval pools of the leak-free split protocol: one training process, three pools
PROCS=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
T0=$(date +%s)
say() { echo "[gpu.sh +$(( $(date +%s) - T0 ))s] $*"; }

if [ "$MODE" = gpu ]; then
  nvidia-smi -L || { echo "gpu.sh: no nvidia-smi; run with --cpu-smoke on a machine without a GPU"; exit 2; }
  "$PY" -c 'import torch, sys; ok = torch.cuda.is_available(); print("torch", torch.__version__, "cuda", torch.version.cuda, "available", ok, torch.cuda.get_device_name() if ok else ""); sys.exit(0 if ok else 2)' \
    || { echo "gpu.sh: torch sees no CUDA device"; exit 2; }
  SET=(MAX_STEPS=${STEPS:-800})
  STEPARGS=(--device cuda)
else
  SET=(MAX_STEPS=2 BATCH_SIZE=8 EVAL_BATCH_SIZE=32)
  STEPARGS=(--device cpu --warmup 1 --blocks 1 --steps 1 --flop-steps 1)
fi
say "mode $MODE, out $OUT, synthetic $SYNTH, template constants: ${SET[*]}"

# 1. data: synthetic prints and this size's tensor cache, then the per-fold task folders (trusted side)
say "preparing data"
"$PY" -m model.prepare --data "$OUT/data" --preset seed --synthetic "$SYNTH" --cache-dir "$OUT/cache" | tail -1
"$PY" -m model.tasks build --data "$OUT/data" --cache-dir "$OUT/cache" --image-size 224 --context-length 77 \
    --folds $FOLDS --split val --out "$OUT/tasks" | tail -1
"$PY" -c "from model.tasks import deal_task; deal_task('$OUT/tasks', 0, '$OUT/deal/task', '$OUT/deal/key.npz')"

# 2. the step alone: FLOPs per step, ms per step, memory (no data load, no eval)
say "timing the template's step"
SETJSON=(); for kv in "${SET[@]}"; do SETJSON+=("$kv"); done
"$PY" -m bench.gpu_step step --preset seed "${STEPARGS[@]}" --set "${SETJSON[@]}" | tail -1 > "$OUT/step.json"
cat "$OUT/step.json"
if [ "${COMPILE:-0}" = 1 ] && [ "$MODE" = gpu ]; then
  "$PY" -m bench.gpu_step step --preset seed --device cuda --compile --set "${SETJSON[@]}" | tail -1 > "$OUT/step_compiled.json"
  cat "$OUT/step_compiled.json"
fi

# 3. the experiment: the seed train.py, one process per fold, nvidia-smi sampling every 100 ms
"$PY" - "$OUT" "${SET[@]}" <<'PYEOF'
import json, sys
from pathlib import Path
from model.constants import rewrite_constants
from model.presets import render_template
out, sets = Path(sys.argv[1]), dict(kv.split("=", 1) for kv in sys.argv[2:])
text = rewrite_constants(render_template("seed"), {k: json.loads(v) for k, v in sets.items()})
(out / "run").mkdir(exist_ok=True)
(out / "run" / "train.py").write_text(text)
PYEOF
SMI_PID=
if [ "$MODE" = gpu ]; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 100 > "$OUT/smi.csv" &
  SMI_PID=$!
fi
trap '[ -n "$SMI_PID" ] && kill "$SMI_PID" 2>/dev/null || true' EXIT
for k in $(seq 0 $((PROCS - 1))); do
  FD="$OUT/run/fold-$k"; mkdir -p "$FD"
  say "fold $k"
  s=$(date +%s.%N)
  AR_RUN_DIR="$FD" AR_TASK_DIR="$OUT/deal/task" "$PY" "$OUT/run/train.py" > "$FD/stdout.log" 2> "$FD/stderr.log" \
    || { echo "fold $k failed:"; tail -20 "$FD/stderr.log"; exit 1; }
  e=$(date +%s.%N)
  "$PY" -c "print(round($e - $s, 3))" > "$FD/wall_s"
  grep -E "^(steps|train_seconds|total_seconds|peak_memory_gb):" "$FD/stdout.log" | tr '\n' ' '; echo
done
[ -n "$SMI_PID" ] && kill "$SMI_PID" 2>/dev/null || true

# 4. the harness scores the embeddings (as the supervisor does), then the report
"$PY" -c "
import json, sys
from tools.scoring import score_eclip
b = score_eclip('$OUT/run', ['$OUT/deal/key.npz'])
json.dump({k: v for k, v in b.items() if k != 'folds'}, open('$OUT/score.json', 'w'))
print('mean_rank', round(b['mean_rank'], 2), 'random', round(b['random_mean_rank'], 1))"
"$PY" -m bench.gpu_step report "$OUT"
say "done ($MODE$([ "$MODE" = cpu ] && echo ': NOT a GPU measurement'))"
