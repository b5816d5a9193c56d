"""peft-repro harness: registries, the cell runner, training, evaluation and reports."""
