"""Evaluation: confusion matrices -> per-class scores, evaluator, report data."""
