#!/usr/bin/env python3
"""Build a TensorRT plan for an exported folder: same as `amo-engine build ...` (NVIDIA GPU).

    python export/build_engine.py engines/sd3-medium-1024 --precision bf16 --opt-level 3
"""

import sys

from amo_engine.cli import main

if __name__ == "__main__":
    sys.exit(main(["build", *sys.argv[1:]]))
