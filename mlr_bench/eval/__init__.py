"""Metrics and the shared evaluator."""
