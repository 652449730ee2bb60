#!/usr/bin/env bash
# The glyph model's OCR evaluation as reported in the README (settings fixed before any AMO result
# was looked at): the 122 training words x 4 seeds (488 paired images per sampler) at the paper's
# default (28 steps, c = 2); one seed each for c = 1, for 10 steps and for the 30 held-out words.
# ~15 minutes on a 2-core CPU. Rows are appended: rerun to finish an interrupted run.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-eval/results/glyph}
AMO=${AMO:-.venv/bin/amo-engine}
"$AMO" eval --model glyph --out-dir "$OUT" --words train --seeds 4 --steps 28 --c 2 --quiet
"$AMO" eval --model glyph --out-dir "$OUT" --words train --seeds 1 --steps 28 --c 1 --samplers overshoot,amo --quiet
"$AMO" eval --model glyph --out-dir "$OUT" --words train --seeds 1 --steps 10 --c 2 --quiet
"$AMO" eval --model glyph --out-dir "$OUT" --words held-out --seeds 1 --steps 28 --c 2 --quiet
"$AMO" eval --model glyph --out-dir "$OUT" --report-only --quiet
