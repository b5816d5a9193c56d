"""peft-repro harness: registries, the cell runner, training, evaluation and reports."""
import warnings

# Library warnings that say nothing to the user of a cell, filtered for every entry point (CLI, Snakemake jobs, the
# fork server, tests): peft asks transformers 5 for `is_gradient_checkpointing`, deprecated for v6, at every cell.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
