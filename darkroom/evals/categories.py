"""What evaluation reads from the job's prompt source: the category and skills of each prompt
(for per-category FID and per-skill results), a suite's questions and checks for the judged
metrics, and the ids of the prompts the spec asks for.

The generated rows carry none of it; the job's `job.yaml` names its prompt file (made absolute,
or a URI) and its id column, or its suite, so each prompt id's annotations are read back from
there with the jobs' own id rule: the `prompts.columns.id` column when given, else the record's
position (`00000`, `00001`, ...), as for inline lists, classes and suites.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from darkroom.platform.data import storage
from darkroom.platform.data.storage import Location

COLUMN = "category"
SKILLS = "skills"  # the rows' column of skills (a tuple per row)
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


@dataclass
class Annotations:
    """What evaluation knows of a job's prompts beyond their text, by prompt id: the category
    (None with `reason` when there are none), the skills, and the JSON the judged parts read
    (a suite's questions and detector checks)."""

    categories: dict[str, str] | None = None
    skills: dict[str, tuple[str, ...]] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    reason: str = ""


def prompt_annotations(job_spec: Mapping[str, Any] | None) -> Annotations:
    """The annotations of the job's prompts: a suite's (skills, questions, checks), or a prompt
    file's `category` column (its only skill)."""
    prompts = (job_spec or {}).get("prompts") or {}
    if prompts.get("suite"):
        return _suite_annotations(prompts["suite"], prompts.get("file"))
    categories, reason = prompt_categories(dict(job_spec or {}))
    skills = {p: (c,) for p, c in (categories or {}).items()}
    return Annotations(categories, skills, {}, reason)


def _suite_annotations(name: str, file: str | None) -> Annotations:
    from darkroom.platform.suites import SuiteError, items

    try:
        found = items(name, file, lambda path: storage.read_bytes(storage.location(str(path))))
    except (SuiteError, OSError) as err:
        return Annotations(reason=f"the prompts of suite `{name}` cannot be read here: {err}")
    ids = [f"{i:05d}" for i in range(len(found))]
    # a prompt without skills of its own (GenEval 2, DPG-Bench) has those of its questions
    skills = [item.skills or tuple(sorted({q.skill for q in item.questions if q.skill}))
              for item in found]
    single = all(len(s) == 1 for s in skills)
    # prompts are drawn within their category only where each has exactly one
    categories = {i: s[0] for i, s in zip(ids, skills, strict=True)} if single else None
    reason = "" if single else (f"the prompts of suite `{name}` do not each have one category "
                                "(their skills are several, or none)")
    return Annotations(categories, dict(zip(ids, skills, strict=True)),
                       {i: item.annotation() for i, item in zip(ids, found, strict=True)},
                       reason)


def positional_ids(job_spec: Mapping[str, Any] | None) -> bool:
    """Whether the job's prompt ids are positions (`00000`, ...): inline lists, classes, suites
    and prompt files without an id column."""
    prompts = (job_spec or {}).get("prompts") or {}
    if prompts.get("list") is not None or prompts.get("classes") is not None \
            or prompts.get("suite"):
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


def attach_annotations(columns: dict[str, np.ndarray], annotations: Annotations) -> None:
    """Give the rows their prompts' `category`, `skills` and `metadata` columns (when there are
    any)."""
    attach_categories(columns, annotations.categories)
    if "prompt_id" not in columns:
        return
    ids = [str(p) for p in columns["prompt_id"]]
    if annotations.skills:
        values = np.empty(len(ids), dtype=object)
        values[:] = [annotations.skills.get(p, ()) for p in ids]
        columns[SKILLS] = values
    if annotations.metadata:
        columns["metadata"] = np.array([annotations.metadata.get(p, "") for p in ids],
                                       dtype=object)
