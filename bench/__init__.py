"""peft-repro, in layers (each imports only those below it; tests/test_layers.py): api (interfaces), harness (what
makes a record), grid (planning), report (records -> tables, claims, plots), tools, cli."""
