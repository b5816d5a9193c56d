"""Interfaces every layer shares: the error type, the model-kind interface, the metric registry. Imports nothing
else of the project."""
