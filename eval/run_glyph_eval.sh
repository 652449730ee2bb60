#!/usr/bin/env bash
# The glyph model's OCR evaluation as reported in the README (settings fixed before any AMO result
# was looked at): 162 words x 3 seeds at the paper's default (28 steps, c = 2); one seed each for
# c = 1, for 10 steps and for the held-out words. ~20 minutes on a 2-core CPU. Rows are appended:
# rerun to finish an interrupted run.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-eval/results/glyph}
AMO=${AMO:-.venv/bin/amo-engine}
"$AMO" eval --model glyph --out-dir "$OUT" --words train --seeds 3 --steps 28 --c 2 --quiet
"$AMO" eval --model glyph --out-dir "$OUT" --words train --seeds 1 --steps 28 --c 1 --samplers overshoot,amo --quiet
"$AMO" eval --model glyph --out-dir "$OUT" --words train --seeds 1 --steps 10 --c 2 --quiet
"$AMO" eval --model glyph --out-dir "$OUT" --words held-out --seeds 1 --steps 28 --c 2 --quiet
"$AMO" eval --model glyph --out-dir "$OUT" --report-only --quiet
