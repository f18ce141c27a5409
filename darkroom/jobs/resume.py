"""What earlier invocations left in a job folder, read on the workers; and the rows it spares.

Before generating, an invocation (holding the folder's lease):

1. tidies each run folder on the driver, from listings alone: data files no commit marker names
   are deleted (a writer died before committing them), staging leftovers too, and the files of
   runs written before commit markers existed are committed as they are (they were renamed into
   place whole);
2. reads every committed file whole on the workers, page checksums verified (`verify_files`): a
   file whose bytes are bad (missing, empty, not Parquet, a bad checksum) is un-committed and
   moved aside (`.unreadable-<name>`) with a warning, and its rows are generated again. A store
   that keeps failing (503 SlowDown, dropped connections) is not a bad file: its errors are
   retried (`platform.storage`), and when they do not pass the scan fails before it has set
   anything aside. Each task returns a few numbers per file to the driver; the row ids and
   inputs stay in Ray's object store (`RunState.done`) for the workers that expand prompts.

Those workers drop the request rows already done (`split_done`) and, in the check pass, compare
each done row's inputs with what the job now asks (`input_problem`): a row id that already holds
another prompt, negative prompt, class or control image stops the job before anything is written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from darkroom.platform.data import layout, storage
from darkroom.platform.data.records import sha256
from darkroom.platform.data.storage import Location
from darkroom.platform.families.conditioning import is_class_id

# What defines a row besides its id: a row written under the same id with any of these different
# would be a different image, so a rerun refuses rather than mix them.
ROW_INPUTS = ("prompt", "negative_prompt", "class_label", "control_image_sha256",
              "input_images")
DONE_SCHEMA = pa.schema([
    ("row_id", pa.string()), ("kind", pa.string()), ("prompt", pa.string()),
    ("negative_prompt", pa.string()), ("class_label", pa.int64()),
    ("control_image_sha256", pa.string()), ("input_images", pa.string()),
])
EDITED = ("image", "mask")  # input images compared by their SHA-256 (control: its own column)
FILES_PER_TASK = 16


@dataclass
class RunState:
    """One run's rows from earlier invocations: counts for timing.json, and the done rows (refs
    of DONE_SCHEMA tables in the object store)."""

    run_id: str
    done: list[Any] = field(default_factory=list)
    images: int = 0
    errors: int = 0
    seconds: float = 0.0


def tidy(run_dir: Location, warn: Callable[[str], None]) -> list[tuple[str, Location]]:
    """Step 1 for one run folder; returns its committed files as (kind, location)."""
    committing = layout.run_format(run_dir) >= layout.FORMAT
    found = []
    for kind in (layout.IMAGES, layout.ERRORS):
        folder = run_dir / kind
        for entry in storage.list_dir(folder):
            if entry.loc.name.startswith(".") and entry.loc.name.endswith(".tmp"):
                storage.delete(entry.loc)  # staging file of a writer before commit markers
        committed, orphans = layout.listing(folder, committing=True)
        if not committing:  # an older run: its files were renamed into place whole
            for path in orphans:
                layout.commit(path, {"rows": None, "adopted": True})
            committed, orphans = sorted(committed + orphans, key=lambda f: f.name), []
        for path in orphans:
            storage.delete(path)
        if orphans:
            warn(f"  {run_dir.name}/{kind}: removed {len(orphans)} uncommitted file(s) a "
                 "crashed invocation left")
        found += [(kind, path) for path in committed]
    return found


def verify_files(entries: list[tuple[str, str]], job_dir: str,
                 options: dict[str, Any] | None) -> tuple[list[dict[str, Any]], pa.Table]:
    """Step 2 on a worker: read each file whole, checksums verified. Returns one summary per
    file (rows, seconds, or why it is unreadable) and the done rows (DONE_SCHEMA)."""
    storage.set_options(job_dir, options)
    summaries, tables = [], []
    for kind, uri in entries:
        try:
            table = layout.read_verified(storage.location(uri))
            if "row_id" not in table.column_names:
                raise layout.Unreadable("it has no row_id column")
        except layout.Unreadable as err:  # the file is bad: regenerate its rows
            summaries.append({"file": uri, "kind": kind, "error": str(err)})
            continue
        seconds = 0.0
        if kind == layout.IMAGES:
            seconds = pc.sum(table.column("gen_seconds")).as_py() or 0.0
        summaries.append({"file": uri, "kind": kind, "rows": table.num_rows,
                          "seconds": seconds, "error": None})
        columns = {"row_id": table.column("row_id"),
                   "kind": pa.array([kind] * table.num_rows, pa.string())}
        for name in ROW_INPUTS:
            columns[name] = (table.column(name) if name in table.column_names
                             else pa.nulls(table.num_rows, DONE_SCHEMA.field(name).type))
        tables.append(pa.table(columns).cast(DONE_SCHEMA))
    return summaries, pa.concat_tables(tables) if tables else DONE_SCHEMA.empty_table()


def scan(job_dir: Location, run_ids: list[str], options: dict[str, Any] | None,
         warn: Callable[[str], None]) -> dict[str, RunState]:
    """Steps 1 and 2 for the runs of an invocation (Ray must be up)."""
    import ray

    verify = ray.remote(verify_files).options(num_returns=2)
    states = {run_id: RunState(run_id) for run_id in run_ids}
    pending = []
    for run_id in run_ids:
        run_dir = job_dir / run_id
        if not storage.exists(run_dir / layout.RUN_INFO):
            continue
        files = [(kind, str(path)) for kind, path in tidy(run_dir, warn)]
        for start in range(0, len(files), FILES_PER_TASK):
            summary, done = verify.remote(files[start:start + FILES_PER_TASK], str(job_dir),
                                          options)
            states[run_id].done.append(done)
            pending.append((run_id, summary))
    # every file's verdict first: a store that fails part way leaves the folder as it was
    verdicts = ray.get([summary for _, summary in pending])
    for (run_id, _), items in zip(pending, verdicts, strict=True):
        for item in items:
            state = states[run_id]
            if item["error"] is not None:
                _set_aside(storage.location(item["file"]), item["error"], warn)
            elif item["kind"] == layout.IMAGES:
                state.images += item["rows"]
                state.seconds += item["seconds"]
            else:
                state.errors += item["rows"]
    return states


def _set_aside(path: Location, reason: str, warn: Callable[[str], None]) -> None:
    layout.uncommit(path)  # first: from here on no reader trusts it
    aside = path.with_name(f".unreadable-{path.name}")
    try:
        storage.move(path, aside)
    except OSError:  # gone already: nothing to keep for inspection
        pass
    warn(f"warning: {path} is unreadable ({reason}); moved it to {aside.name}, its rows will "
         "be generated again")


# -- on the workers that expand prompts into request rows -----------------------------------

_DONE: dict[tuple[str, ...], pa.Table] = {}


def done_rows(refs: list[Any]) -> pa.Table:
    """The done rows behind `refs`, fetched once per worker process."""
    import ray

    key = tuple(ref.hex() for ref in refs)
    if key not in _DONE:
        tables = ray.get(list(refs)) if refs else []
        _DONE.clear()  # one job at a time per worker: keep only the latest
        _DONE[key] = pa.concat_tables([DONE_SCHEMA.empty_table(), *tables])
    return _DONE[key]


def split_done(requests: pa.Table, done: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(request rows still to make, request rows already done)."""
    if not done.num_rows:
        return requests, requests.slice(0, 0)
    is_done = pc.is_in(requests.column("row_id"), value_set=done.column("row_id"))
    return requests.filter(pc.invert(is_done)), requests.filter(is_done)


def input_problem(requests: pa.Table, done: pa.Table) -> str | None:
    """Why done rows cannot stand for these (done) request rows, or None: the first row whose
    recorded inputs differ from what the job now gives for it."""
    images = done.filter(pc.equal(done.column("kind"), layout.IMAGES))
    if not requests.num_rows or not images.num_rows:
        return None
    recorded = {row["row_id"]: row for row in images.filter(
        pc.is_in(images.column("row_id"), value_set=requests.column("row_id"))).to_pylist()}
    for row in requests.to_pylist():
        old = recorded.get(row["row_id"])
        if old is None:
            continue
        old = recorded_inputs(old)
        for column, value in row_inputs(row).items():
            if value is not ANY and old[column] != value:
                return (f"row {row['row_id']} was written with {column} {old[column]!r}, but the "
                        f"job now gives {value!r} for it: the job's inputs changed under the "
                        "same job name. Use a new `name` (or delete the job folder) so old and "
                        "new images are not mixed")
    return None


ANY = object()  # an expected input that cannot be told before generation (a class name)


def row_inputs(row: dict[str, Any]) -> dict[str, Any]:
    """A request row's inputs as its image row records them (ROW_INPUTS)."""
    label = row.get("class_label")
    if label is not None and not is_class_id(str(label).strip()):
        recorded: Any = ANY  # a class name: the model resolves it to an id
    else:
        recorded = None if label is None else int(label)
    control = row.get("control_image")
    return {
        "prompt": row.get("prompt") or "",
        "negative_prompt": row.get("negative_prompt") or "",
        "class_label": recorded,
        "control_image_sha256": None if control is None else sha256(control),
        "input_images": [(role, sha256(row[role])) for role in EDITED if row.get(role)],
    }


def recorded_inputs(done: dict[str, Any]) -> dict[str, Any]:
    """A done image row's inputs, in the form `row_inputs` gives them."""
    images = json.loads(done.get("input_images") or "[]")
    return {**done, "input_images": [(i["role"], i["sha256"]) for i in images
                                     if i["role"] in EDITED]}
