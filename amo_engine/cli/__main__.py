"""``python -m amo_engine.cli``: the amo-engine command."""

import sys

from amo_engine.cli import main

sys.exit(main())
