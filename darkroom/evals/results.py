"""One run's evaluation results beside its images: per-image scores Parquet, counts, the eval
record. The run folder is a local path or a URI (`platform.storage`).

`RunResult` is what evaluating one run gives (metrics with their intervals, missing metrics with
reasons, warnings); `write_scores` keeps per-image scores beside the run's images, keyed by
row_id; `write_record` notes how they were made (`scores/eval.json`), which `darkroom compare`
reads to compare runs image by image.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from darkroom.evals import registry
from darkroom.evals.metrics.base import RunScores
from darkroom.evals.outputs import SpecRows, read_timing
from darkroom.evals.units import ERROR_PREFIX, FEATURES, Part, error_column
from darkroom.platform.data import layout, storage
from darkroom.platform.data.runinfo import RunInfo, read_run_info
from darkroom.platform.data.storage import Location

PENDING_FILE = "eval_pending.json"
SCORES_FILE = "scores.parquet"
UNREADABLE_FILE = "unreadable.parquet"
RECORD_FILE = "eval.json"



@dataclass
class RunResult:
    """One run's evaluation: its images, metrics, missing metrics with reasons, warnings."""

    run_id: str
    run_dir: Location
    info: RunInfo
    timing: dict[str, Any]
    count: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)  # row_id -> why it was left out
    mlflow_run_id: str | None = None
    rows: SpecRows = field(default_factory=SpecRows)  # the rows its current spec asks for

    def summary(self) -> dict[str, Any]:
        """The result as plain data (what `darkroom eval --json` prints)."""
        return {"run_id": self.run_id, "mlflow_run_id": self.mlflow_run_id, "images": self.count,
                "metrics": dict(self.metrics), "missing": dict(self.missing),
                "warnings": list(self.warnings), "rows_unreadable": len(self.unreadable)}


class PendingResults:
    """Computed metrics not yet in MLflow: `<job>/eval_pending.json`, valid while the runs'
    image files, their run.json and the eval settings are those it was computed from."""

    def __init__(self, job_dir: Location, run_dirs: list[Location], spec: Any) -> None:
        self.path = job_dir / PENDING_FILE
        files = []
        for d in run_dirs:
            files.append((d.name, storage.read_text(d / layout.RUN_INFO)))  # what it asks for
            for f in layout.parquet_files(d / layout.IMAGES):
                found = storage.info(f)
                files.append((f"{d.name}/{f.name}", found and found.size, found and found.mtime))
        self.key = hashlib.sha256(json.dumps(
            [spec.model_dump(mode="json"), [d.name for d in run_dirs], files],
            sort_keys=True, default=str).encode()).hexdigest()

    def save(self, results: list[RunResult], protocol: dict) -> None:
        """Write the results and protocol (atomically) before anything is logged."""
        body = {"key": self.key, "protocol": protocol, "results": [
            {**r.summary(), "unreadable": r.unreadable} for r in results]}
        storage.write_text(self.path, json.dumps(body, default=str))

    def load(self) -> tuple[list[RunResult], dict] | None:
        """The saved results if they are for exactly these files and settings, else None."""
        try:
            body = json.loads(storage.read_text(self.path))
        except (OSError, ValueError):
            return None
        if body.get("key") != self.key:
            return None
        results = []
        for saved in body["results"]:
            run_dir = self.path.parent / saved["run_id"]
            results.append(RunResult(
                saved["run_id"], run_dir, read_run_info(run_dir), read_timing(run_dir),
                count=saved["images"], metrics=saved["metrics"], missing=saved["missing"],
                warnings=saved["warnings"], unreadable=saved["unreadable"]))
        return results, body["protocol"]


def run_scores(run_id: str, columns: dict[str, np.ndarray], parts: Iterable[Part] = ()
               ) -> tuple[RunScores, dict[str, str]]:
    """One run's rows of the scoring pass (all runs' columns, `group` naming the run), each row
    id once, in row_id order, with the reasons any of `parts` did not load; and the rows left
    out as unreadable (row_id -> reason)."""
    if not columns:
        return RunScores(run_id, {"row_id": np.array([], dtype=object)}), {}
    mine = np.flatnonzero(columns["group"] == run_id)
    ids = columns["row_id"][mine].astype(str)
    _, first = np.unique(ids, return_index=True)  # sorted by row_id, first occurrence of each
    rows = mine[first]
    reasons = columns.get("unreadable", np.full(len(columns["row_id"]), "", dtype=object))
    unreadable = {str(columns["row_id"][i]): reasons[i] for i in rows
                  if isinstance(reasons[i], str) and reasons[i]}
    rows = np.array([i for i in rows if str(columns["row_id"][i]) not in unreadable],
                    dtype=np.int64)
    picked = {k: v[rows] for k, v in columns.items()
              if not k.startswith(ERROR_PREFIX) and k != "unreadable"}
    errors = {part: str(columns[error_column(part)][mine[0]]) for part in parts
              if error_column(part) in columns and len(mine)}
    return RunScores(run_id, picked, errors), unreadable


def left_out(run_dir: Location) -> dict[str, str]:
    """row_id -> reason for the rows the last evaluation left out as unreadable."""
    path = run_dir / layout.SCORES / UNREADABLE_FILE
    if not storage.exists(path):
        return {}
    table = storage.read_parquet(path)
    return dict(zip(table.column("row_id").to_pylist(), table.column("reason").to_pylist(),
                    strict=True))


def write_unreadable(run_dir: Location, unreadable: dict[str, str]) -> Location:
    """<run>/scores/unreadable.parquet: the rows evaluation left out, each with its reason
    (rewritten by every evaluation, so it lists exactly the current ones)."""
    folder = run_dir / layout.SCORES
    table = pa.table({"row_id": pa.array(sorted(unreadable), pa.string()),
                      "reason": pa.array([unreadable[r] for r in sorted(unreadable)], pa.string())})
    target = folder / UNREADABLE_FILE
    write_atomic(table, target)
    return target


def write_atomic(table: pa.Table, target: Location) -> None:
    """A Parquet file that readers see whole or not at all (`storage.write_bytes`)."""
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, write_page_checksum=True)
    storage.write_bytes(target, buffer.getvalue().to_pybytes())


def write_scores(run_dir: Location, scores: RunScores) -> Location | None:
    """Per-image scores keyed by row_id into <run>/scores/scores.parquet, merged with columns an
    earlier evaluation wrote; written under a dot-name and renamed, so readers never see half."""
    saved = {c for s in registry.scorers().values() if s.name != FEATURES for c in s.columns}
    new = {k: v for k, v in scores.columns.items() if k in saved}
    if not new or not scores.count:
        return None
    table = pa.table({"row_id": pa.array(scores.columns["row_id"].astype(str)),
                      **{k: pa.array(list(v)) for k, v in new.items()}})
    table = table.append_column("evaluated_at", pa.array(
        [dt.datetime.now(dt.UTC)] * len(table), pa.timestamp("us", tz="UTC")))
    target = run_dir / layout.SCORES / SCORES_FILE
    if storage.exists(target):
        old = storage.read_parquet(target)
        keep = [c for c in old.column_names if c not in table.column_names or c == "row_id"]
        if len(keep) > 1:
            table = table.join(old.select(keep), "row_id", join_type="left outer")
    write_atomic(table.sort_by("row_id"), target)
    return target


def write_record(run_dir: Location, record: dict[str, Any]) -> Location:
    """<run>/scores/eval.json: the eval settings, the feature extractors' protocols and the
    reference statistics each run was measured against (what compare needs to redo the math)."""
    target = run_dir / layout.SCORES / RECORD_FILE
    earlier = read_record(run_dir) or {}
    # an evaluation of other metrics keeps what the earlier ones were measured with
    record = {**earlier, **record, **{key: {**(earlier.get(key) or {}), **(record.get(key) or {})}
                                      for key in ("protocols", "references")}}
    text = json.dumps(record, indent=2, sort_keys=True, default=str) + "\n"
    storage.write_bytes(target, text.encode())
    return target


class EvalRecord(BaseModel):
    """The shape of `scores/eval.json`, checked before it is used."""

    model_config = ConfigDict(extra="allow")

    spec: dict[str, Any]
    protocols: dict[str, dict[str, Any]] = Field(default_factory=dict)
    references: dict[str, dict[str, Any]] = Field(default_factory=dict)


def read_record(run_dir: Location) -> dict[str, Any] | None:
    """The run's eval record, or None when it has not been evaluated (by this version) or the
    file is not an eval record (damaged or edited: a list, `protocols` a string, ...)."""
    try:
        record = json.loads(storage.read_bytes(run_dir / layout.SCORES / RECORD_FILE))
        EvalRecord.model_validate(record)
    except (OSError, ValueError):  # pydantic's ValidationError is a ValueError
        return None
    return record
