#!/usr/bin/env python3
"""Export a transformer to an engine folder: same as `amo-engine export ...`.

    python export/export_engine.py --model tiny-sd3 --out engines/tiny-sd3
"""

import sys

from amo_engine.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
