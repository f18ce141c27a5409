"""Writing a job's folder (`platform.layout`): run info, Parquet checkpoints, timing, resume scan.

A reader never sees half a file: every file is written under a dot-prefixed name and renamed into
place (an atomic rename on one filesystem). Rows are buffered per run and written every
`checkpoint_rows` rows or `checkpoint_seconds`, so a crash loses at most one buffer.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from darkroom.platform import layout
from darkroom.platform.errors import UserError
from darkroom.platform.records import ERROR_SCHEMA, IMAGE_SCHEMA


def write_atomic(path: Path, text: str) -> None:
    """Write a text file under a staging name and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    staging.write_text(text)
    os.replace(staging, path)


def write_job_files(job_dir: Path, job_spec: dict[str, Any], infos: list[dict[str, Any]]) -> None:
    """job.yaml (the resolved spec of this invocation) and one run.json per run."""
    write_atomic(job_dir / layout.JOB_SPEC, yaml.safe_dump(job_spec, sort_keys=False))
    for info in infos:
        run_dir = job_dir / info["run_id"]
        for sub in (layout.IMAGES, layout.ERRORS):
            (run_dir / sub).mkdir(parents=True, exist_ok=True)
            for stale in (run_dir / sub).glob(".*.tmp"):  # staging files of a crashed invocation
                stale.unlink(missing_ok=True)
        write_atomic(run_dir / layout.RUN_INFO, json.dumps(info, indent=2) + "\n")


# What defines a row besides its id: a row written under the same id with any of these different
# would be a different image, so a rerun refuses rather than mix them.
ROW_INPUTS = ("prompt", "negative_prompt", "class_label", "control_image_sha256")


def done_rows(run_dir: Path, expected: dict[str, dict[str, Any]],
              warn: Callable[[str], None] = print) -> tuple[set[str], int]:
    """Row ids already written (images or errors) and how many of them are errors.

    Every file is read whole with its page checksums verified, so a file corrupted anywhere
    (even with a valid header and footer) is found: it is moved aside (dot-prefixed, so readers
    skip it) and its rows are generated again. A row whose inputs (`ROW_INPUTS`) differ from
    what the job now asks for that row id means the inputs changed under the same job name: an
    error, since mixing them would be silent.
    """
    done: set[str] = set()
    errors = 0
    for sub in (layout.IMAGES, layout.ERRORS):
        for path in layout.parquet_files(run_dir / sub):
            try:
                table = pq.read_table(path, page_checksum_verification=True)
            except Exception as err:  # unreadable: regenerate its rows rather than fail the job
                aside = path.with_name(f".unreadable-{path.name}")
                os.replace(path, aside)
                warn(f"warning: {path} is unreadable ({type(err).__name__}: {str(err)[:120]}); "
                     f"moved it to {aside.name}, its rows will be generated again")
                continue
            ids = table.column("row_id").to_pylist()
            if sub == layout.IMAGES:
                _check_inputs(path, table.select(["row_id", *ROW_INPUTS]).to_pylist(), expected)
            else:
                errors += len(set(ids) - done)
            done.update(ids)
    return done, errors


def _check_inputs(path: Path, rows: list[dict[str, Any]],
                  expected: dict[str, dict[str, Any]]) -> None:
    for row in rows:
        want = expected.get(row["row_id"])
        if want is None:
            continue
        for column, value in want.items():
            if value is not ANY and row[column] != value:
                raise UserError(
                    f"{path} holds row {row['row_id']} with {column} {row[column]!r}, but the "
                    f"job now gives {value!r} for it: the job's inputs changed under the same "
                    "job name. Use a new `name` (or delete the job folder) so old and new images "
                    "are not mixed"
                )


ANY = object()  # an expected input that cannot be told before generation (a class name)


class Writer:
    """Buffers Generator output per run and writes it as Parquet checkpoints."""

    def __init__(self, job_dir: Path, rows_per_file: int, seconds_per_file: float,
                 log: Callable[[str], None] = print) -> None:
        self.job_dir = job_dir
        self.rows_per_file = rows_per_file
        self.seconds_per_file = seconds_per_file
        self.log = log
        self.buffers: dict[tuple[str, str], list[pa.Table]] = defaultdict(list)
        self.last_flush = time.monotonic()
        self.seen: set[str] = set()
        self.written: dict[str, int] = defaultdict(int)  # run_id -> image rows this invocation
        self.failed: dict[str, int] = defaultdict(int)  # run_id -> error rows this invocation

    def add(self, batch: pa.Table) -> int:
        """Buffer one Generator output batch; returns how many of its rows failed."""
        # Ray Data hands each task's output over once, retries included; a row id seen twice
        # would still never be written twice
        ids = batch.column("row_id").to_pylist()
        fresh = [row_id not in self.seen for row_id in ids]
        self.seen.update(ids)
        if not all(fresh):
            batch = batch.filter(pa.array(fresh))
        failed_mask = pc.is_valid(batch.column("error"))
        images = batch.filter(pc.invert(failed_mask))
        errors = batch.filter(failed_mask)
        for kind, table, schema in ((layout.IMAGES, images, IMAGE_SCHEMA),
                                    (layout.ERRORS, errors, ERROR_SCHEMA)):
            if table.num_rows:
                table = table.select(schema.names).cast(schema)
                for run_id in pc.unique(table.column("run_id")).to_pylist():
                    part = table.filter(pc.equal(table.column("run_id"), run_id))
                    self.buffers[(run_id, kind)].append(part)
        buffered = sum(t.num_rows for tables in self.buffers.values() for t in tables)
        if (buffered >= self.rows_per_file
                or time.monotonic() - self.last_flush >= self.seconds_per_file):
            self.flush()
        return errors.num_rows

    def flush(self) -> None:
        """Write every buffered run's rows as one new Parquet file each (staged, renamed)."""
        for (run_id, kind), tables in self.buffers.items():
            if not tables:
                continue
            table = pa.concat_tables(tables)
            name = f"{time.time_ns() // 1000:016d}-{uuid.uuid4().hex[:8]}.parquet"
            folder = self.job_dir / run_id / kind
            staging = folder / f".{name}.tmp"
            pq.write_table(table, staging, write_page_checksum=True)
            os.replace(staging, folder / name)
            counts = self.written if kind == layout.IMAGES else self.failed
            counts[run_id] += table.num_rows
            what = "image" if kind == layout.IMAGES else "failed"
            self.log(f"  {run_id}: wrote {table.num_rows} {what} row(s)")
        self.buffers.clear()
        self.last_flush = time.monotonic()


def write_timing(run_dir: Path) -> dict[str, Any]:
    """timing.json from every image row of the run (so it stays right across resumed runs).

    `seconds` is actor time spent on the run's images (the sum of their `gen_seconds`), so
    `images_per_s` is the throughput of one actor; it is comparable across the runs of a sweep
    whatever the pool size.
    """
    table = layout.read_table(run_dir / layout.IMAGES, columns=["row_id", "gen_seconds"])
    per_row = {} if table is None else dict(zip(table.column("row_id").to_pylist(),
                                                table.column("gen_seconds").to_pylist(),
                                                strict=True))  # a repeated row counts once
    images = len(per_row)
    seconds = float(sum(s or 0.0 for s in per_row.values()))
    errors = layout.read_table(run_dir / layout.ERRORS, columns=["row_id"])
    timing = {
        "images": images,
        "seconds": round(seconds, 4),
        "images_per_s": round(images / seconds, 4) if seconds else None,
        "errors": 0 if errors is None else len(set(errors.column("row_id").to_pylist())),
    }
    write_atomic(run_dir / layout.TIMING, json.dumps(timing, indent=2) + "\n")
    return timing
