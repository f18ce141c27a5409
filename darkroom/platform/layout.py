"""Where a job's files live, shared by the writer (jobs) and the readers (evals, compare).

OUTPUT/<job name>/job.yaml                 the resolved job spec of the latest invocation
OUTPUT/<job name>/<run_id>/run.json        the run's resolved settings (model, sampler, ...)
OUTPUT/<job name>/<run_id>/images/*.parquet    image rows (records.IMAGE_SCHEMA)
OUTPUT/<job name>/<run_id>/errors/*.parquet    rows that could not be generated
OUTPUT/<job name>/<run_id>/timing.json     images, seconds, images/s of the generation
OUTPUT/<job name>/<run_id>/scores/*.parquet    per-image scores keyed by row_id (evals)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

JOB_SPEC = "job.yaml"
RUN_INFO = "run.json"
IMAGES = "images"
ERRORS = "errors"
SCORES = "scores"
TIMING = "timing.json"


def run_dirs(job_dir: str | Path) -> list[Path]:
    """The run folders of a job folder, in name order (folders holding a run.json)."""
    return sorted(p.parent for p in Path(job_dir).glob(f"*/{RUN_INFO}"))


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON file (run.json, timing.json) as a dict."""
    return json.loads(Path(path).read_text())


def parquet_files(folder: str | Path) -> list[Path]:
    """Finished Parquet files only: writers stage under a dot-prefixed name and rename."""
    folder = Path(folder)
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))


def read_table(folder: str | Path, columns: list[str] | None = None) -> pa.Table | None:
    """All finished Parquet files of a folder as one table, or None when there are none."""
    files = parquet_files(folder)
    if not files:
        return None
    return pa.concat_tables(
        [pq.read_table(f, columns=columns) for f in files], promote_options="default"
    )
