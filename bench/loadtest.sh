#!/usr/bin/env bash
# The load tests in README (Serving): Ray Serve on this machine, loopback clients, every image checked
# against its single-request image, then a fault run that SIGKILLs one of the two renderer replicas.
# Usage: bench/loadtest.sh [OUT_DIR]   (default bench/results); about 5 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/results}"
amo=.venv/bin/amo-engine
engine="$(mktemp -d)/glyph-b4"
$amo export --model glyph --out "$engine" --batch 4
# glyph: the trained model on its ONNX engine (4 images per call), the paper's 28 steps
$amo loadtest --model glyph --engine "$engine" --replicas 2 --threads 1 --concurrency 1,2,4,8,16 --requests 32 \
    --steps 28 --kill-replica-after 5 --port 8311 --out "$out/loadtest-glyph.json"
# tiny-sd3: the random-weight preset on eager PyTorch (4 images per call)
$amo loadtest --model tiny-sd3 --replicas 2 --threads 1 --max-batch 4 --concurrency 1,2,4,8,16 --requests 32 \
    --steps 8 --kill-replica-after 5 --port 8312 --out "$out/loadtest-tiny-sd3.json"
