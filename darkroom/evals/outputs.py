"""What evaluation reads from a job's output folder, as `darkroom run` wrote it: the job file
(`job.yaml`, as plain data), each run's `timing.json` (its `run.json` is platform's `RunInfo`),
and a run's image rows without their images, and the images' hashes. Folders are local paths or
URIs (`platform.storage`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from darkroom.platform.data import layout, storage
from darkroom.platform.data.storage import Location

# The identity and request columns of an image row that metrics and pairing use.
ROW_COLUMNS = ["row_id", "prompt_id", "sample_idx", "seed", "prompt", "class_label"]


def read_job_file(job_dir: Location) -> dict[str, Any]:
    """The job folder's job.yaml as plain data; {} when there is none or it is not a mapping
    (the job was validated when it ran; evaluation only reads settings from it)."""
    path = job_dir / layout.JOB_SPEC
    if not storage.is_file(path):
        return {}
    from darkroom.platform.config import parse_yaml

    data, _ = parse_yaml(storage.read_text(path), str(path))
    return data if isinstance(data, dict) else {}


def read_timing(run_dir: Location) -> dict[str, Any]:
    """The run's timing.json (images, seconds, images/s of its generation), or {}."""
    path = run_dir / layout.TIMING
    return layout.read_json(path) if storage.exists(path) else {}


def first_value(run_dir: Location, column: str) -> Any:
    """A column's value in the run's first image row (for settings all rows share)."""
    files = layout.parquet_files(run_dir / layout.IMAGES)
    if not files:
        return None
    values = layout.read_file(files[0], columns=[column]).column(column).to_pylist()
    return values[0] if values else None


def image_hashes(run_dir: Location) -> dict[str, str]:
    """row_id -> image_sha256 of the run's image rows (the image bytes are not read)."""
    table = layout.read_table(run_dir / layout.IMAGES, columns=["row_id", "image_sha256"])
    if table is None:
        return {}
    return dict(zip(table.column("row_id").to_pylist(), table.column("image_sha256").to_pylist(),
                    strict=True))


def read_rows(run_dir: Location, skip: Mapping[str, str] | None = None,
              bad_files: list[tuple[str, str]] | None = None) -> dict[str, np.ndarray] | None:
    """A run's image rows without the images (`ROW_COLUMNS` its files have), each row id once
    in row_id order (its first copy), less the row ids in `skip`; None when no file can be read.

    A file that cannot be read is left out, and listed in `bad_files` as (path, reason).
    """
    tables = []
    for path in layout.parquet_files(run_dir / layout.IMAGES):
        try:
            fs, inner = storage.filesystem(path)
            names = pq.read_schema(inner, filesystem=fs).names
            tables.append(storage.read_parquet(path, columns=[c for c in ROW_COLUMNS
                                                              if c in names]))
        except Exception as err:  # reported with the run; the other files are still read
            if bad_files is not None:
                bad_files.append((str(path), f"{type(err).__name__}: {str(err)[:200]}"))
    if not tables:
        return None
    table = pa.concat_tables(tables, promote_options="default")
    ids = np.asarray(table.column("row_id").to_pylist(), dtype=object)
    _, first = np.unique(ids.astype(str), return_index=True)
    keep = np.array([i for i in first if ids[i] not in (skip or {})], dtype=np.int64)
    return {name: np.asarray(table.column(name).to_pylist(), dtype=object)[keep]
            for name in table.column_names}
