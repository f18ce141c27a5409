"""Evaluation: feature extractors, metrics, reference statistics, MLflow tracking, compare."""
