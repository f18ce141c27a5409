"""Per-run cache of a part's per-image scores: `<run>/scores/part-<scorer>-<protocol hash>.parquet`.

For the parts whose scorer declares its `cache` identity (a judge's model and what it is asked:
the question template, the answers), each scored row is kept with the hash of what the part
read: the image, the prompt and the prompt's metadata (a suite's questions). A later evaluation
takes a row from the cache when that hash is unchanged and its numbers are finite, and asks the
part only for the other rows: adding a judged metric, a prompt or an image judges only what is
new, and a row the judge failed on (NaN) is asked again. Another judge or template is another
protocol hash and another file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from darkroom.evals import registry
from darkroom.evals.metrics.base import RunScores
from darkroom.evals.outputs import SpecRows
from darkroom.evals.results import left_out, write_atomic
from darkroom.evals.scorers.plan import ScorePlan
from darkroom.evals.units import Part
from darkroom.platform.data import layout, storage
from darkroom.platform.data.storage import Location

PREFIX = "part-"
INPUT = "input_sha256"


def protocol_hash(protocol: Mapping[str, Any]) -> str:
    """16 hex digits of the SHA-256 of the protocol as sorted-key JSON."""
    return hashlib.sha256(json.dumps(protocol, sort_keys=True, default=str).encode()
                          ).hexdigest()[:16]


def cache_path(run_dir: Location, scorer: str, protocol: Mapping[str, Any]) -> Location:
    """Where a run's scores of one part under one protocol are kept (a path or a URI)."""
    return run_dir / layout.SCORES / f"{PREFIX}{scorer}-{protocol_hash(protocol)}.parquet"


def input_hashes(run_dir: Location, rows: SpecRows | None = None,
                 metadata: Mapping[str, str] | None = None) -> dict[str, str]:
    """row_id -> SHA-256 of what a part reads of the row: its image's hash, its prompt and its
    prompt's metadata (`metadata`: prompt_id -> JSON); the image bytes are not read."""
    table = layout.read_table(run_dir / layout.IMAGES,
                              columns=["row_id", "image_sha256", "prompt", "prompt_id",
                                       "sample_idx"])
    if table is None:
        return {}
    table = rows.select(table) if rows is not None else table
    out = {}
    for row, image, prompt, prompt_id in zip(*(table.column(c).to_pylist() for c in (
            "row_id", "image_sha256", "prompt", "prompt_id")), strict=True):
        parts = [image, prompt or "", (metadata or {}).get(str(prompt_id), "")]
        out.setdefault(row, hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest())
    return out


def _usable(values: Mapping[str, Any]) -> bool:
    """A cached row counts when none of its numbers is NaN or infinite."""
    for value in values.values():
        if isinstance(value, float) and not np.isfinite(value):
            return False
    return True


def read_scores(run_dir: Location, scorer: str, protocol: Mapping[str, Any],
                columns: Iterable[str], inputs: Mapping[str, str]
                ) -> dict[str, dict[str, Any]]:
    """row_id -> {column: value} for the rows of `inputs` (row_id -> input hash) the cache holds
    with the same input hash and finite numbers; {} when there is no readable cache."""
    path = cache_path(run_dir, scorer, protocol)
    if not storage.exists(path):
        return {}
    try:
        table = storage.read_parquet(path).to_pydict()
    except Exception:  # an unreadable cache is an empty one
        return {}
    columns = [c for c in columns if c in table]
    hits = {}
    for i, row in enumerate(table.get("row_id", [])):
        if inputs.get(row) != table[INPUT][i]:
            continue
        values = {c: table[c][i] for c in columns}
        if _usable(values):
            hits[row] = values
    return hits


def write_scores(run_dir: Location, scorer: str, protocol: Mapping[str, Any],
                 columns: Mapping[str, np.ndarray], inputs: Mapping[str, str]) -> Location | None:
    """Keep the rows of `columns` (with `row_id`) whose numbers are finite, beside the cached
    rows still valid for `inputs`; written whole or not at all."""
    names = [c for c in columns if c != "row_id"]
    rows: dict[str, dict[str, Any]] = read_scores(run_dir, scorer, protocol, names, inputs)
    for i, row in enumerate(columns["row_id"]):
        values = {c: _plain(columns[c][i]) for c in names}
        if str(row) in inputs and _usable(values):
            rows[str(row)] = values
    if not rows:
        return None
    order = sorted(rows)
    table = pa.table({"row_id": pa.array(order, pa.string()),
                      INPUT: pa.array([inputs[r] for r in order], pa.string()),
                      **{c: pa.array([rows[r][c] for r in order]) for c in names}})
    table = table.replace_schema_metadata({"darkroom.protocol": json.dumps(
        protocol, sort_keys=True, default=str)})
    target = cache_path(run_dir, scorer, protocol)
    write_atomic(table, target)
    return target


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


class StoredScores:
    """A run's per-row score caches, for the plan's parts whose scorer declares one: the rows
    each holds, what to fill in after a pass, and what to keep from it."""

    def __init__(self, result: Any, plan: ScorePlan,
                 metadata: Mapping[str, str] | None = None) -> None:
        self.run_dir = result.run_dir
        self.parts = {p.key: (registry.scorer(p.scorer), p) for p in plan.parts
                      if registry.scorer(p.scorer).cache is not None}
        self.inputs = input_hashes(result.run_dir, result.rows, metadata) if self.parts else {}
        self.protocols = {key: scorer.cache(planned)
                          for key, (scorer, planned) in self.parts.items()}
        self.hits: dict[Part, dict[str, dict[str, Any]]] = {
            key: read_scores(result.run_dir, key.scorer, self.protocols[key], scorer.columns,
                             self.inputs) for key, (scorer, _) in self.parts.items()}
        self.unreadable = left_out(result.run_dir) if self.parts else {}

    def covers(self, part: Part) -> bool:
        """Whether the cache holds the part's scores of every row (less those left out as
        unreadable)."""
        hits = self.hits.get(part)
        return hits is not None and all(row in hits or row in self.unreadable
                                        for row in self.inputs)

    def attach(self, scores: RunScores) -> bool:
        """Fill the cached rows' values into the scores; whether there were any."""
        filled = False
        ids = [str(r) for r in scores.columns["row_id"]]
        for key, hits in self.hits.items():
            if not hits:
                continue
            for column in self.parts[key][0].columns:
                values = scores.columns.get(column)
                if values is None:
                    values = np.full(len(ids), None, dtype=object)
                values = np.array(values, dtype=object if values.dtype.kind != "f" else None)
                for i, row in enumerate(ids):
                    if row in hits and column in hits[row]:
                        values[i] = hits[row][column]
                        filled = True
                scores.columns[column] = _typed(values)
        return filled

    def keep(self, scores: RunScores) -> None:
        """Write every part's finite scores of the run to its cache."""
        for key, (scorer, _) in self.parts.items():
            columns = {c: scores.columns[c] for c in scorer.columns if c in scores.columns}
            if columns and key not in scores.part_errors:
                write_scores(self.run_dir, key.scorer, self.protocols[key],
                                  {"row_id": scores.columns["row_id"], **columns}, self.inputs)


def _typed(values: np.ndarray) -> np.ndarray:
    """An object column of numbers as float64 (NaN for None), else as it is."""
    if values.dtype.kind == "f":
        return values
    if all(v is None or isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
           for v in values):
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return values
