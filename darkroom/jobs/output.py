"""Writing a job's folder (`platform.layout`): job.yaml and run.json, the rows of each actor call,
and timing.json. The folder is a local path or a URI; both go through `platform.storage`.

The commit protocol (workers, no rename needed): an actor writes the rows of one call as one
Parquet file per run and outcome (images, errors), and after each file is complete, its commit
marker (`<file>.commit`, a few bytes). Readers trust only files with a marker. A file's name is
the invocation's id and a digest of the call's row ids, so a batch that Ray retries (its actor
died) rewrites its own files instead of adding copies: its marker is removed first, the file
written again, and the marker written again. A data file left without a marker by a crash is
invisible and is deleted by the next invocation (`jobs.resume`). Before it writes a call's files
the actor checks that its invocation still holds the folder's lease (`jobs.lease.check_held`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from darkroom.jobs import lease
from darkroom.platform.data import layout, storage
from darkroom.platform.data.records import ERROR_SCHEMA, IMAGE_SCHEMA
from darkroom.platform.data.runinfo import RunInfo, write_run_info
from darkroom.platform.data.storage import Location

# What the driver hears of each file an actor wrote: no pixels, a few dozen bytes.
FILE_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("kind", pa.string()), ("file", pa.string()),
    ("rows", pa.int64()), ("seconds", pa.float64()), ("error", pa.string()),
])


def invocation_id() -> str:
    """A new invocation's id: UTC time (so file names sort by invocation) and a random part."""
    return f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def write_job_files(job_dir: Location, job_spec: dict[str, Any] | None,
                    infos: list[RunInfo]) -> None:
    """run.json of every run (with the layout format) and, when given, job.yaml."""
    for info in infos:
        run_dir = job_dir / info.run_id
        for sub in (layout.IMAGES, layout.ERRORS):
            storage.makedirs(run_dir / sub)
        write_run_info(run_dir, info)
    if job_spec is not None:
        storage.write_text(job_dir / layout.JOB_SPEC, yaml.safe_dump(job_spec, sort_keys=False))


def file_name(invocation: str, row_ids: list[str]) -> str:
    """`<invocation>-<digest of the call's row ids>.parquet`: unique per invocation and call,
    and the same again when Ray retries the call."""
    digest = hashlib.sha256("\n".join(sorted(row_ids)).encode()).hexdigest()[:16]
    return f"{invocation}-{digest}{layout.DATA_SUFFIX}"


def write_call(job_dir: Location, rows: pa.Table, invocation: str,
               lease_token: str | None = None) -> pa.Table:
    """Write the generator's output rows of one call (image columns plus `error`): per run, one
    images file and one errors file, each committed once complete. Returns FILE_SCHEMA rows.
    With `lease_token`, nothing is written unless the folder's lease still carries it."""
    if lease_token is not None:
        lease.check_held(job_dir, lease_token)  # a holder whose lease was taken writes no more
    name = file_name(invocation, rows.column("row_id").to_pylist())
    failed = pc.is_valid(rows.column("error"))
    written = []
    for run_id in pc.unique(rows.column("run_id")).to_pylist():
        mine = pc.equal(rows.column("run_id"), run_id)
        for kind, schema, pick in ((layout.IMAGES, IMAGE_SCHEMA, pc.invert(failed)),
                                   (layout.ERRORS, ERROR_SCHEMA, failed)):
            part = rows.filter(pc.and_(mine, pick))
            path = job_dir / run_id / kind / name
            # a retried call: its earlier files stop counting before they are replaced (and a
            # kind this attempt did not produce must not keep rows from the first attempt)
            layout.uncommit(path)
            if not part.num_rows:
                continue
            part = part.select(schema.names).cast(schema)
            storage.write_parquet(part, path)
            seconds = 0.0
            if kind == layout.IMAGES:
                seconds = pc.sum(part.column("gen_seconds")).as_py() or 0.0
            layout.commit(path, {"rows": part.num_rows, "seconds": seconds,
                                 "invocation": invocation})
            error = part.column("error")[0].as_py() if kind == layout.ERRORS else None
            written.append({"run_id": run_id, "kind": kind, "file": name,
                            "rows": part.num_rows, "seconds": seconds, "error": error})
    return pa.Table.from_pylist(written, schema=FILE_SCHEMA)


def timing(images: int, seconds: float, errors: int) -> dict[str, Any]:
    """What timing.json holds. `seconds` is actor time spent on the run's images (the sum of
    their `gen_seconds`), so `images_per_s` is the throughput of one actor; it is comparable
    across the runs of a sweep whatever the pool size."""
    return {
        "images": images,
        "seconds": round(seconds, 4),
        "images_per_s": round(images / seconds, 4) if seconds else None,
        "errors": errors,
    }


def write_timing(run_dir: Location, values: dict[str, Any]) -> dict[str, Any]:
    """timing.json of a run."""
    storage.write_text(run_dir / layout.TIMING, json.dumps(values, indent=2) + "\n")
    return values
