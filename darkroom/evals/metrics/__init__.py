"""Metric math over a run's scored rows: corpus distances, k-NN manifolds, bootstrap intervals."""
