"""peft-repro, in layers (each imports only those below it; tests/test_layers.py): api (interfaces), harness (what
makes a record), grid (planning), report (records -> tables, claims, plots), tools, cli."""

import warnings

# Library warnings that say nothing to the user of a cell, filtered for every entry point (CLI, Snakemake jobs, the
# fork server, tests): peft asks transformers 5 for `is_gradient_checkpointing`, deprecated for v6, at every cell.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
