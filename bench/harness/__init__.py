"""Everything that makes a record: the cell, tasks, models, methods' loading, model kinds, training, evaluation,
scoring, identity. Its files are the harness fingerprint; it imports only bench.api."""
