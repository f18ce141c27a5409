"""What evaluation reads from a job's output folder, as `darkroom run` wrote it: the job file
(`job.yaml`, as plain data), each run's `timing.json` (its `run.json` is platform's `RunInfo`),
a run's image rows without their images, and the images' hashes. Folders are local paths or
URIs (`platform.storage`).

A run folder can hold more rows than its spec now asks for: a job narrowed after it ran
(`prompts.limit` or `images_per_prompt` lowered) keeps the rows made before. Readers take only
the rows of the current spec (`SpecRows`, from run.json and job.yaml): samples below
`images_per_prompt` of the first `prompt_count` prompts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from darkroom.evals.categories import first_prompt_ids, positional_ids
from darkroom.platform.data import layout, storage
from darkroom.platform.data.runinfo import RunInfo
from darkroom.platform.data.storage import Location

# The identity and request columns of an image row that metrics and pairing use.
ROW_COLUMNS = ["row_id", "prompt_id", "sample_idx", "seed", "prompt", "class_label"]


@dataclass(frozen=True)
class SpecRows:
    """Which image rows a run's current spec asks for: samples below `images_per_prompt`, of
    the prompts at positions below `first` (ids `00000`, ...) or with an id in `ids`. None:
    no restriction on that."""

    images_per_prompt: int | None = None
    first: int | None = None
    ids: frozenset[str] | None = None

    def mask(self, prompt_ids: Sequence[Any], sample_idx: Sequence[Any]) -> np.ndarray:
        """True for the rows the spec asks for (a row that does not record one is kept)."""
        keep = np.ones(len(prompt_ids), dtype=bool)
        for i, (prompt, sample) in enumerate(zip(prompt_ids, sample_idx, strict=True)):
            if self.images_per_prompt is not None and _known(sample):
                keep[i] = int(sample) < self.images_per_prompt
            if keep[i] and prompt is not None and self.first is not None:
                keep[i] = str(prompt).isdecimal() and int(prompt) < self.first
            if keep[i] and prompt is not None and self.ids is not None:
                keep[i] = str(prompt) in self.ids
        return keep

    def select(self, table: pa.Table) -> pa.Table:
        """The rows of an image table (with prompt_id and sample_idx) the spec asks for."""
        if self == SpecRows() or not {"prompt_id", "sample_idx"} <= set(table.column_names):
            return table
        return table.filter(pa.array(self.mask(table.column("prompt_id").to_pylist(),
                                               table.column("sample_idx").to_pylist())))


def _known(value: Any) -> bool:
    return value is not None and value == value  # None, or NaN from Arrow: not recorded


def spec_rows(run_dir: Location, info: RunInfo, job_spec: Mapping[str, Any] | None
              ) -> tuple[SpecRows, list[str]]:
    """The run's `SpecRows`, and a warning when the folder holds rows outside them (left out)
    or holds more prompts than the spec and which ones it asks for cannot be told."""
    if info.prompt_count < 1:  # run.json from before it recorded the counts
        return SpecRows(), []
    table = layout.read_table(run_dir / layout.IMAGES, columns=["prompt_id", "sample_idx"])
    if table is None:
        return SpecRows(), []
    count, per_prompt = info.prompt_count, info.images_per_prompt
    rows = SpecRows(images_per_prompt=per_prompt,
                    first=count if positional_ids(job_spec) else None)
    prompts = {p for p in rows.select(table).column("prompt_id").to_pylist() if p is not None}
    unknown = ""
    if len(prompts) > count and rows.first is None:
        ids, unknown = first_prompt_ids(job_spec, count)
        rows = SpecRows(images_per_prompt=per_prompt, ids=ids)
    kept = rows.select(table).num_rows
    asked = f"run.json asks for {count} prompt(s) x {per_prompt} image(s)"
    warnings = []
    if kept < table.num_rows:
        warnings.append(f"{table.num_rows - kept} of the run's {table.num_rows} image rows are "
                        f"not in its current spec ({asked}; rows an earlier, wider invocation "
                        "made): they were left out")
    if unknown:
        warnings.append(f"the run holds images of {len(prompts)} prompts, but {asked}, and "
                        f"{unknown}: all of them were evaluated")
    return rows, warnings


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


def image_hashes(run_dir: Location, rows: SpecRows | None = None) -> dict[str, str]:
    """row_id -> image_sha256 of the run's image rows (those of `rows`, when given; the image
    bytes are not read)."""
    table = layout.read_table(run_dir / layout.IMAGES,
                              columns=["row_id", "image_sha256", "prompt_id", "sample_idx"])
    if table is None:
        return {}
    table = rows.select(table) if rows is not None else table
    return dict(zip(table.column("row_id").to_pylist(), table.column("image_sha256").to_pylist(),
                    strict=True))


def read_rows(run_dir: Location, skip: Mapping[str, str] | None = None,
              bad_files: list[tuple[str, str]] | None = None, rows: SpecRows | None = None
              ) -> dict[str, np.ndarray] | None:
    """A run's image rows without the images (`ROW_COLUMNS` its files have), each row id once
    in row_id order (its first copy), those of `rows` when given, less the row ids in `skip`;
    None when no file can be read.

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
    table = rows.select(table) if rows is not None else table
    ids = np.asarray(table.column("row_id").to_pylist(), dtype=object)
    _, first = np.unique(ids.astype(str), return_index=True)
    keep = np.array([i for i in first if ids[i] not in (skip or {})], dtype=np.int64)
    return {name: np.asarray(table.column(name).to_pylist(), dtype=object)[keep]
            for name in table.column_names}
