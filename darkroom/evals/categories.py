"""What evaluation reads from the job's prompt source: the category of each prompt (for
per-category FID) and the ids of the prompts the spec asks for.

The generated rows do not carry a category; the job's `job.yaml` names its prompt file (made
absolute, or a URI) and its id column, so the category of each prompt id is read back from that
file with the jobs' own id rule: the `prompts.columns.id` column when given, else the record's
position (`00000`, `00001`, ...), as for inline lists and classes.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from darkroom.platform.data import storage
from darkroom.platform.data.storage import Location

COLUMN = "category"
RECORD_SUFFIXES = (".jsonl", ".csv", ".parquet")  # files with columns (an id, a category)


def _records(path: Location) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    data = storage.read_bytes(path)
    if suffix == ".jsonl":
        lines = data.decode("utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    if suffix == ".csv":
        return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(data)).to_pylist()
    return []


def _prompt_file(job_spec: Mapping[str, Any] | None) -> Location | None:
    file = ((job_spec or {}).get("prompts") or {}).get("file")
    return storage.location(str(file)) if file else None


def prompt_categories(job_spec: dict[str, Any] | None) -> tuple[dict[str, str] | None, str]:
    """(prompt_id -> category, "") from the job's prompt file, or (None, why there are none)."""
    prompts = (job_spec or {}).get("prompts") or {}
    path = _prompt_file(job_spec)
    if path is None:
        return None, ("the job's prompts do not come from a file (inline list, classes or "
                      "control images), so they have no `category` column")
    if path.suffix.lower() not in RECORD_SUFFIXES:
        return None, f"the prompt file {path.name} has no columns (use .jsonl, .csv or .parquet)"
    try:
        records = _records(path)
    except (OSError, ValueError) as err:
        return None, f"the job's prompt file {path} cannot be read ({type(err).__name__}: {err})"
    if not any(COLUMN in record for record in records):
        return None, f"the prompt file {path.name} has no `{COLUMN}` column"
    id_column = (prompts.get("columns") or {}).get("id")
    categories = {}
    for index, record in enumerate(records):
        prompt_id = str(record[id_column]) if id_column else f"{index:05d}"
        value = record.get(COLUMN)
        if value is not None and value != "":
            categories[prompt_id] = str(value)
    return categories, ""


def positional_ids(job_spec: Mapping[str, Any] | None) -> bool:
    """Whether the job's prompt ids are positions (`00000`, ...): inline lists, classes, and
    prompt files without an id column."""
    prompts = (job_spec or {}).get("prompts") or {}
    if prompts.get("list") is not None or prompts.get("classes") is not None:
        return True
    return bool(prompts.get("file")) and not (prompts.get("columns") or {}).get("id")


def first_prompt_ids(job_spec: Mapping[str, Any] | None, count: int
                     ) -> tuple[frozenset[str] | None, str]:
    """The ids of the first `count` prompts of a prompt file with an id column (what `limit`
    keeps), or (None, why they cannot be told)."""
    prompts = (job_spec or {}).get("prompts") or {}
    path, id_column = _prompt_file(job_spec), (prompts.get("columns") or {}).get("id")
    if path is None or not id_column or path.suffix.lower() not in RECORD_SUFFIXES:
        source = "control images" if prompts.get("control_images") else "prompts"
        return None, f"the job's {source} have no ids that tell the first {count} apart"
    try:
        records = _records(path)
        return frozenset(str(r[id_column]) for r in records[:count]), ""
    except (OSError, ValueError, KeyError) as err:
        return None, f"the job's prompt file {path} cannot be read ({type(err).__name__}: {err})"


def attach_categories(columns: dict[str, np.ndarray], categories: dict[str, str] | None) -> None:
    """Give the rows a `category` column (None where a prompt has none) from their prompt ids."""
    if categories is not None and "prompt_id" in columns:
        columns[COLUMN] = np.array([categories.get(str(p)) for p in columns["prompt_id"]],
                                   dtype=object)
