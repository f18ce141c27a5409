"""The per-image pass: Ray Data reads image rows, a pool of `ScoringActor`s runs the plan's parts
on them (features and per-image scores), and the driver gets the columns back keyed by row_id.

A part that cannot load on the actor (missing weights) does not stop the others: its reason comes
back in an `error_<part>` column and the metrics that need it are recorded as missing. Rows a
part's score cache already holds (`skip`) are not given to that part; its columns hold
placeholders there, which the driver fills from the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from darkroom.evals import registry
from darkroom.evals.scorers.images import decode_all
from darkroom.evals.scorers.plan import ScorePlan
from darkroom.evals.units import Part, PartFn, PlannedPart, error_column
from darkroom.platform.errors import UserError

Select = Callable[[pa.Table], pa.Table]  # the rows of a table that are wanted
INPUT_COLUMNS = ["row_id", "image", "prompt", "class_label"]
META_COLUMNS = ["prompt_id", "sample_idx", "seed"]  # passed through when the files have them
SIZE_COLUMNS = ["width", "height"]  # what an image's header is checked against before decoding
# what some parts read of a row besides its image (edits: the source image and mask, JSON)
PART_INPUTS = ["input_images"]


def build_part(planned: PlannedPart, device: str = "cpu") -> PartFn:
    """A planned part, loaded by its scorer (missing weights raise `WeightsMissing`)."""
    return registry.scorer(planned.scorer).build(planned, device)


def _reason(err: Exception) -> str:
    return str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"


class ScoringActor:
    """Ray Data actor: image rows in; row_id, features and per-image scores out."""

    def __init__(self, plan: Mapping[str, Any],
                 skip: Mapping[str, Mapping[str, Sequence[str]]] | None = None) -> None:
        import torch

        torch.set_num_threads(1)  # one thread per CPU actor: more fight Ray's other workers
        self.plan = ScorePlan.model_validate(plan)
        # part -> run -> row ids its cache holds
        self.skip = {part: {run: set(rows) for run, rows in runs.items()}
                     for part, runs in (skip or {}).items()}
        self.parts: dict[Part, PartFn] = {}
        self.errors: dict[Part, str] = {}
        for planned in self.plan.parts:
            try:
                self.parts[planned.key] = build_part(planned, self.plan.device)
            except Exception as err:  # reported per metric as missing, never as 0
                self.errors[planned.key] = _reason(err)

    def _run(self, key: Part, part: PartFn, images: list[np.ndarray],
             batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The part on the batch's rows its cache does not hold; placeholders on the others."""
        skip = self.skip.get(str(key))
        if not skip:
            return part(images, batch)
        groups = batch.get("group", np.full(len(images), ""))
        wanted = np.array([str(row) not in skip.get(str(group), ())
                           for row, group in zip(batch["row_id"], groups, strict=True)], bool)
        if wanted.all():
            return part(images, batch)
        where = np.flatnonzero(wanted)
        scored = part([images[i] for i in where],
                      {k: np.asarray(v)[where] for k, v in batch.items()})
        return {name: _scatter(values, where, len(images)) for name, values in scored.items()}

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Decode a batch's images and run every part on them; unloadable parts as errors.

        An image that does not decode, or declares more pixels than its row's size, does not
        sink the batch: a blank stand-in takes its place in the parts (so every column keeps one
        value per row) and its `unreadable` column gives the reason; the driver leaves such rows
        out of every metric.
        """
        images, unreadable = decode_all(batch["image"], batch.get("width"), batch.get("height"))
        out = {k: np.asarray(batch[k]) for k in ("row_id", "group", "prompt", "class_label",
                                                 *META_COLUMNS) if k in batch}
        out["unreadable"] = unreadable
        for key, part in self.parts.items():
            out.update(self._run(key, part, images, batch))
        for part, reason in self.errors.items():
            out[error_column(part)] = np.array([reason] * len(images), dtype=object)
        return out


def _scatter(values: np.ndarray, where: np.ndarray, count: int) -> np.ndarray:
    """A part's values for the rows `where`, in a column of `count` rows (NaN, or None, at the
    others)."""
    values = np.asarray(values)
    if values.dtype.kind == "f":
        full = np.full((count, *values.shape[1:]), np.nan, values.dtype)
    else:
        full = np.full((count, *values.shape[1:]), None, dtype=object)
    full[where] = values
    return full


def scored_dataset(ds, plan: ScorePlan, actors: int = 1, batch_size: int = 32,
                   actor: type | None = None, gpus_per_actor: float = 0.0,
                   skip: Mapping[str, Mapping[str, Sequence[str]]] | None = None):
    """The Ray dataset `ds` (columns row_id, image, group, optionally prompt and class_label)
    mapped through a pool of `actors` ScoringActors (or a class that wraps one, for benchmarks);
    `skip`: part -> run -> row ids that part is not asked for."""
    from ray.data import ActorPoolStrategy

    kwargs: dict[str, Any] = {"plan": plan.model_dump()}
    if skip:
        kwargs["skip"] = {part: {run: list(rows) for run, rows in runs.items()}
                          for part, runs in skip.items()}
    return ds.map_batches(
        actor or ScoringActor, fn_constructor_kwargs=kwargs,
        batch_size=batch_size, batch_format="numpy", compute=ActorPoolStrategy(size=actors),
        num_cpus=1, num_gpus=gpus_per_actor or None,
    )


def score_dataset(ds, plan: ScorePlan, actors: int = 1, batch_size: int = 32,
                  gpus_per_actor: float = 0.0,
                  skip: Mapping[str, Mapping[str, Sequence[str]]] | None = None
                  ) -> dict[str, Any]:
    """The scored columns of `ds`, gathered on the driver as numpy arrays."""
    batches = scored_dataset(ds, plan, actors, batch_size, gpus_per_actor=gpus_per_actor,
                             skip=skip).iter_batches(batch_size=None, batch_format="numpy")
    chunks = list(batches)
    if not chunks:
        return {}
    return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}


def images_dataset(files: Sequence[str], groups: Sequence[str],
                   skipped: list[tuple[str, str]] | None = None,
                   keep: Mapping[str, Select] | None = None,
                   metadata: Mapping[str, str] | None = None):
    """A Ray dataset over image Parquet files (local paths or URIs); `group` names the file's run,
    `keep[group]` picks the rows of a table its spec asks for (`outputs.SpecRows.select`;
    the others are not scored), and `metadata` (prompt_id -> JSON: a suite's questions and
    checks) becomes each row's `metadata` column.

    The files are read by Ray tasks on the workers, from where they are (the driver gets a few
    bytes per file back; the images stay in the object store), and all of them are read before
    the scoring actors start, so read tasks never wait for CPUs the actors hold. Page checksums
    are verified; a file that cannot be read is left out and listed in `skipped` as (path,
    reason). A row id that two files of a group hold is scored twice and counted once
    (`results.run_scores`).
    """
    import ray

    from darkroom.platform.data import storage

    read = ray.remote(read_image_files).options(num_returns=2)
    entries = list(zip(map(str, files), groups, strict=True))
    wanted = ray.put(dict(keep or {}))  # once, however many read tasks
    notes = ray.put(dict(metadata or {}))
    pending = [read.remote(entries[i:i + FILES_PER_READ], storage.registered(), wanted, notes)
               for i in range(0, len(entries), FILES_PER_READ)]
    tables = []
    for summary, table in pending:
        for path, reason in ray.get(summary):
            if reason is not None and skipped is not None:
                skipped.append((path, reason))
        tables.append(table)
    return ray.data.from_arrow_refs(tables) if tables else ray.data.from_items([])


FILES_PER_READ = 8


def read_image_files(entries: Sequence[tuple[str, str]], options: dict | None,
                     keep: Mapping[str, Select] | None = None,
                     metadata: Mapping[str, str] | None = None
                     ) -> tuple[list[tuple[str, str | None]], pa.Table]:
    """Ray task: (path, group) pairs -> ([(path, why unreadable or None)], their rows (those
    `keep[group]` picks) with a `group` column and their prompts' `metadata`)."""
    from darkroom.platform.data import storage

    storage.register(options)
    # files written before a column existed get it as nulls, so every block has one schema
    schema = pa.schema([("row_id", pa.string()), ("image", pa.binary()), ("prompt", pa.string()),
                        ("class_label", pa.int64()), ("prompt_id", pa.string()),
                        ("sample_idx", pa.int64()), ("seed", pa.int64()), ("width", pa.int64()),
                        ("height", pa.int64()), ("input_images", pa.string()),
                        ("group", pa.string()), ("metadata", pa.string())])
    summaries, tables = [], []
    for path, group in entries:
        try:
            table = storage.read_parquet(storage.location(path), verify=True)
            table = table.select([c for c in INPUT_COLUMNS + META_COLUMNS + SIZE_COLUMNS
                                  + PART_INPUTS if c in table.column_names])
        except Exception as err:  # reported with the run; the other files are still scored
            summaries.append((path, f"{type(err).__name__}: {str(err)[:200]}"))
            continue
        summaries.append((path, None))
        if keep and group in keep:
            table = keep[group](table)
        table = table.append_column("group", pa.array([group] * len(table), pa.string()))
        if metadata and "prompt_id" in table.column_names:
            table = table.append_column("metadata", pa.array(
                [metadata.get(str(p), "") for p in table.column("prompt_id").to_pylist()],
                pa.string()))
        for missing in (f for f in schema if f.name not in table.column_names):
            table = table.append_column(missing, pa.nulls(len(table), missing.type))
        tables.append(table.select(schema.names).cast(schema))
    return summaries, pa.concat_tables(tables) if tables else schema.empty_table()


def table_dataset(table: pa.Table, group: str):
    """A Ray dataset over an in-memory table with `image` (encoded bytes)."""
    import ray

    table = table.append_column("row_id", pa.array([str(i) for i in range(len(table))]))
    table = table.append_column("group", pa.array([group] * len(table)))
    return ray.data.from_arrow(table.select(["row_id", "image", "group"]))
