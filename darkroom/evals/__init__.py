"""Evaluation: per-image scorers on Ray actors (`scorers/`), metric math with bootstrap intervals
(`metrics/`), reference statistics, per-run caches and results, and what people read: MLflow
runs, compare tables, paired verdicts, the HTML report (`reporting/`)."""
