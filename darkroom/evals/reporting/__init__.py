"""What people read: MLflow runs, run names, `darkroom compare` tables, paired verdicts, the HTML
report and contact sheets."""
