"""`python -m bench ...`: the same command line as the `peft-repro` console script (bench/cli.py)."""

import sys

from bench.cli import main

sys.exit(main())
