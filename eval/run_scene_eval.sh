#!/usr/bin/env bash
# The glyph-scene model's evaluation as reported in docs/glyph-models.md. Settings fixed on
# 2026-12-04, before the trained model's first AMO or overshoot result was seen: 28 steps; the 122
# training words x seeds 0-3 (488 paired images per sampler; the words cycle through every texture
# and tone) at c = 2 with Euler, overshoot and AMO; one seed each (122 pairs) for overshoot and AMO
# at c = 1, 4 and 8, and for all three at 10 steps with c = 2; the 30 held-out words x seeds 0-3
# (120 pairs) at 28 steps, c = 2. Seeds from 100 up are kept apart for choosing any variant of AMO's
# map; none is used in these rows. Rows are appended: rerun to finish an interrupted run.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-eval/results/glyph-scene}
AMO=${AMO:-.venv/bin/amo-engine}
run() { "$AMO" eval --model glyph-scene --out-dir "$OUT" --quiet "$@"; }
run --words train --seeds 4 --steps 28 --c 2
for c in 1 4 8; do run --words train --seeds 1 --steps 28 --c "$c" --samplers overshoot,amo; done
run --words train --seeds 1 --steps 10 --c 2
run --words held-out --seeds 4 --steps 28 --c 2
run --report-only
