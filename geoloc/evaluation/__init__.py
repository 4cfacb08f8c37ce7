"""Evaluation: recall@N on benchmarks and on the user's own photos (see docs/commands/eval.md)."""
