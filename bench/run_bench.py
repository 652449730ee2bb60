#!/usr/bin/env python3
"""Run the latency benchmark: same as `amo-engine bench ...`.

    python bench/run_bench.py --config medium-sd3
    python bench/run_bench.py --config medium-flux
"""

import sys

from amo_engine.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
