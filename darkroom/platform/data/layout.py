"""Where a job's files live, shared by the writers (jobs) and the readers (evals, compare).

OUTPUT/<job name>/job.yaml                 the resolved job spec of the latest invocation
OUTPUT/<job name>/.lease                   held by the invocation writing the folder
OUTPUT/<job name>/.lease.lock              local folders: locked while the lease changes hands
OUTPUT/<job name>/<run_id>/run.json        the run's resolved settings (model, sampler, ...)
OUTPUT/<job name>/<run_id>/images/*.parquet    image rows (records.IMAGE_SCHEMA)
OUTPUT/<job name>/<run_id>/images/*.parquet.commit   one commit marker per finished data file
OUTPUT/<job name>/<run_id>/errors/*.parquet    rows that could not be generated (+ markers)
OUTPUT/<job name>/<run_id>/timing.json     images, seconds, images/s of the generation
OUTPUT/<job name>/<run_id>/scores/*.parquet    per-image scores keyed by row_id (evals)

OUTPUT is a local folder or a URI (`storage.location`). The commit rule, the same on every store,
for runs whose run.json says `"format": 2` (every run written since commit markers exist): a data
file counts only when its commit marker exists, and the marker is written after the data file is
complete. A data file without a marker (a writer killed mid-write, or before it could
commit) is invisible to every reader here and is removed by the next `darkroom run`. A row id
can appear in two committed files only after two invocations wrote the folder at once; both
copies are the same request with the same seed, and `read_table` keeps the one in the file whose
name sorts first. Older runs (no `format` in run.json) wrote each file under a dot-prefixed name
and renamed it into place, so there every non-dot Parquet file counts; `darkroom run` commits
them (writes their markers) before it adds to such a run.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from darkroom.platform.data import storage
from darkroom.platform.data.storage import Location

JOB_SPEC = "job.yaml"
RUN_INFO = "run.json"
IMAGES = "images"
ERRORS = "errors"
SCORES = "scores"
TIMING = "timing.json"
DATA_SUFFIX = ".parquet"
COMMIT_SUFFIX = ".commit"
FORMAT = 2  # run.json's "format": data files count only with a commit marker


def run_dirs(job_dir: str | Location) -> list[Location]:
    """The run folders of a job folder, in name order (folders holding a run.json)."""
    job_dir = storage.location(job_dir)
    return [e.loc for e in storage.list_dir(job_dir)
            if e.is_dir and not e.loc.name.startswith(".") and storage.is_file(e.loc / RUN_INFO)]


def read_json(path: str | Location) -> dict[str, Any]:
    """A JSON file (run.json, timing.json) as a dict."""
    return json.loads(storage.read_text(storage.location(path)))


def marker(data_file: Location) -> Location:
    """The commit marker of a data file: `<name>.parquet.commit` beside it."""
    return data_file.with_name(data_file.name + COMMIT_SUFFIX)


def run_format(run_dir: Location) -> int:
    """The layout format of a run folder: 2 (commit markers) or 1 (older runs, or none yet).

    A store that does not answer is an error, not format 1: format 1 trusts every data file.
    """
    try:
        return int(read_json(run_dir / RUN_INFO).get("format", 1))
    except (FileNotFoundError, ValueError):
        return 1


def listing(folder: str | Location,
            committing: bool | None = None) -> tuple[list[Location], list[Location]]:
    """(committed data files, data files no marker names) of a data folder (`<run>/images`,
    `<run>/errors`), each in name order. Dot-prefixed files (moved aside, staging) are neither.

    `committing` says whether the commit rule applies; by default the run's format decides
    (for older runs every data file is committed).
    """
    folder = storage.location(folder)
    if committing is None:
        committing = run_format(folder.parent) >= FORMAT
    names = {e.loc.name: e.loc for e in storage.list_dir(folder)
             if not e.is_dir and not e.loc.name.startswith(".")}
    committed, orphans = [], []
    for name, loc in names.items():
        if name.endswith(DATA_SUFFIX):
            trusted = name + COMMIT_SUFFIX in names or not committing
            (committed if trusted else orphans).append(loc)
    return sorted(committed, key=lambda f: f.name), sorted(orphans, key=lambda f: f.name)


def parquet_files(folder: str | Location) -> list[Location]:
    """The committed Parquet files of a folder, in name order (the only ones readers trust)."""
    return listing(folder)[0]


def commit(data_file: Location, record: dict[str, Any]) -> None:
    """Write the commit marker of a complete data file (one small object)."""
    storage.write_text(marker(data_file), json.dumps(record, sort_keys=True) + "\n")


def uncommit(data_file: Location) -> bool:
    """Remove a data file's commit marker, so readers no longer trust the file."""
    return storage.delete(marker(data_file))


def read_file(path: Location, columns: list[str] | None = None,
              verify: bool = False) -> pa.Table:
    """One Parquet file; `verify` checks every page's checksum (the whole file is read)."""
    return storage.read_parquet(path, columns=columns, verify=verify)


class Unreadable(ValueError):
    """A committed data file whose bytes are wrong: missing, empty, not Parquet, a bad page."""


def read_verified(path: Location) -> pa.Table:
    """One whole Parquet file, every page's checksum verified. Its bytes are fetched first (a
    store's errors are retried there, and end in `storage.StoreUnavailable`), then parsed in
    memory, so `Unreadable` means the file itself is bad, never that the store was busy."""
    import pyarrow.parquet as pq

    try:
        data = storage.read_bytes(path)
    except FileNotFoundError as err:
        raise Unreadable("its commit marker names no file") from err
    try:
        return pq.read_table(pa.BufferReader(data), page_checksum_verification=True)
    except Exception as err:  # any failure to parse bytes in memory is the bytes' fault
        raise Unreadable(f"{type(err).__name__}: {str(err)[:120]}") from err


def first_of_each(table: pa.Table) -> pa.Table:
    """The rows of `table` with each row_id kept once (its first occurrence)."""
    ids = table.column("row_id")
    if pc.count_distinct(ids).as_py() == len(ids):
        return table
    firsts = pa.table({"row_id": ids, "i": pa.array(range(len(ids)), pa.int64())}).group_by(
        "row_id", use_threads=False).aggregate([("i", "min")]).column("i_min")
    return table.take(pc.take(firsts, pc.array_sort_indices(firsts)))


def read_table(folder: str | Location, columns: list[str] | None = None) -> pa.Table | None:
    """All committed Parquet files of a folder as one table, each row id once (the copy in the
    file whose name sorts first), or None when there are none."""
    files = parquet_files(folder)
    if not files:
        return None
    wanted = None if columns is None else list(dict.fromkeys(["row_id", *columns]))
    table = pa.concat_tables([read_file(f, wanted) for f in files], promote_options="default")
    table = first_of_each(table)
    return table if columns is None else table.select(columns)
