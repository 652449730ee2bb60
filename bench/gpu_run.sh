#!/usr/bin/env bash
# The one prepared GPU command (bench/gpu_run.py says what it measures). On the device, from the
# repository root, with the wheels of bench/gpu_carry.txt in .whl/ (carry [".whl"]):
#     bash bench/gpu_run.sh COMMIT
# Installs the carried wheels beside the image's torch, records the GPU, then runs every arm within
# a 520 s budget (the device tool's call limit is 600 s); results land in $OUT as they finish.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-run-out}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "gpu_run.sh: the carried wheels did not install (see bench/gpu_carry.txt)" >&2; exit 1; }
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/nvidia-smi.txt" 2>&1
timeout 560 python3 bench/gpu_run.py --out "$OUT" --budget 520 --commit "${1:-unknown}" 2>&1 | tee "$OUT/gpu_run.log"
