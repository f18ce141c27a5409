"""Prompt categories for per-category FID, read from the prompt file the job recorded.

The generated rows do not carry a category; the job's `job.yaml` names its prompt file (made
absolute) and its id column, so the category of each prompt id is read back from that file with
the jobs' own id rule: the `prompts.columns.id` column when given, else the record's position
(`00000`, `00001`, ...).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

COLUMN = "category"


def _records(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        lines = path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    return []


def prompt_categories(job_spec: dict[str, Any] | None) -> tuple[dict[str, str] | None, str]:
    """(prompt_id -> category, "") from the job's prompt file, or (None, why there are none)."""
    prompts = (job_spec or {}).get("prompts") or {}
    file = prompts.get("file")
    if not file:
        return None, ("the job's prompts do not come from a file (inline list, classes or "
                      "control images), so they have no `category` column")
    path = Path(file).expanduser()
    if path.suffix.lower() not in (".jsonl", ".csv", ".parquet"):
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


def attach_categories(columns: dict[str, np.ndarray], categories: dict[str, str] | None) -> None:
    """Give the rows a `category` column (None where a prompt has none) from their prompt ids."""
    if categories is not None and "prompt_id" in columns:
        columns[COLUMN] = np.array([categories.get(str(p)) for p in columns["prompt_id"]],
                                   dtype=object)
