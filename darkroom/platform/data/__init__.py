"""Where a job's files live and what they hold: storage (local or object stores), the folder layout
and commit rule, the Parquet row schemas, run.json."""
