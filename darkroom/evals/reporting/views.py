"""A run's images where MLflow's UI shows them.

- The image grid: for a fixed set of prompts, the same in every run of a job (`grid_prompts`),
  each prompt's first images are logged under one key per prompt and a step per sample, as
  `mlflow.log_image(key=, step=)` logs them; selecting runs in the UI shows the same prompt and
  seed side by side, and its step slider goes through the samples.
- The per-image table: prompt, negative prompt, seed, settings, the image and every per-image
  score, in MLflow's table format (sortable and filterable in the UI) for a bounded sample of
  the rows, the grid's first; every row (without pixels) as `images_table.parquet`.

Files are written in the layout MLflow's own client gives them (grid images
`images/<key>+step+<n>+timestamp+<ms>+<uuid>.png`, each with a `+compressed.webp` thumbnail,
the `mlflow.loggedImages` tag; table image cells `{"type": "image", ...}` and the
`mlflow.loggedArtifacts` tag) and logged in one request per run: `log_image` makes three
requests per image, about 50 ms each on a local SQLite store. Images the safety checker flagged
are withheld (a grey tile), as on contact sheets.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from darkroom.evals.outputs import SpecRows
from darkroom.evals.reporting.contact_sheets import caption_of, flagged_rows
from darkroom.evals.results import SCORES_FILE, left_out
from darkroom.evals.scorers.images import decode_checked
from darkroom.platform.data import layout, storage
from darkroom.platform.data.storage import Location

TABLE = "images_table.json"
FULL_TABLE = "images_table.parquet"
LOGGED_IMAGES = "mlflow.loggedImages"
LOGGED_ARTIFACTS = "mlflow.loggedArtifacts"
GRID_DIGEST = "darkroom.grid_digest"  # the grid's image hashes: unchanged grids are not logged
SHOWN_SIDE = 128  # small images (16 px digits) are scaled up to at least this, nearest-neighbour
LARGEST_SIDE = 512  # and large ones down to at most this
THUMBNAIL_SIDE = 256  # MLflow's compressed copy
GREY = 128
# The image rows' columns the table shows, in order (those a file has).
ROW_COLUMNS = ["row_id", "prompt_id", "sample_idx", "prompt", "negative_prompt", "class_label",
               "seed", "sampler", "steps", "guidance_scale", "eta", "strength",
               "image_guidance_scale", "width", "height", "adapters", "image_sha256",
               "gen_seconds"]


def spread_prompts(categories: Mapping[str, str | None], count: int) -> list[str]:
    """`count` prompt ids spread over the categories (class labels, the prompt file's
    categories, or one group when there are none): each category's prompts ordered by a hash
    of their id, taken one per category in turn. It depends only on the ids and categories,
    so every run of a job gets the same prompts."""
    def digest(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    groups: dict[str, list[str]] = {}
    for prompt_id, category in categories.items():
        groups.setdefault(str(category), []).append(str(prompt_id))
    ordered = [sorted(ids, key=digest) for _, ids in sorted(groups.items(),
                                                            key=lambda kv: digest(kv[0]))]
    chosen: list[str] = []
    for rank in range(max((len(g) for g in ordered), default=0)):
        chosen += [g[rank] for g in ordered if rank < len(g)]
    return chosen[:count]


def image_key(prompt_id: str, caption: str, length: int = 64) -> str:
    """The grid key of a prompt: its id and caption in the characters MLflow allows."""
    text = re.sub(r"[^A-Za-z0-9_\-. ]+", " ", f"{prompt_id} {caption}")
    return re.sub(r" +", " ", text).strip()[:length].strip()


def shown(image: np.ndarray) -> Image.Image:
    """An image as the UI shows it: small ones scaled up (nearest-neighbour, pixels stay
    sharp), large ones down."""
    picture = Image.fromarray(image).convert("RGB")
    side = max(picture.size)
    if side < SHOWN_SIDE:
        factor = -(-SHOWN_SIDE // side)
        return picture.resize((picture.width * factor, picture.height * factor),
                              Image.Resampling.NEAREST)
    if side > LARGEST_SIDE:
        picture.thumbnail((LARGEST_SIDE, LARGEST_SIDE), Image.Resampling.LANCZOS)
    return picture


@dataclass
class RunRows:
    """A run's image rows (the current spec's, each once) without pixels, with its per-image
    scores and why rows were left out; what the views and the lineage read."""

    table: pa.Table  # ROW_COLUMNS the files have, then the score columns

    @property
    def count(self) -> int:
        return self.table.num_rows


def read_run_rows(run_dir: Location, rows: SpecRows) -> RunRows:
    """The run's rows with their scores (`scores/scores.parquet`) and the reason a row was
    left out of the metrics (`left_out`), if it was."""
    tables = []
    for path in layout.parquet_files(run_dir / layout.IMAGES):
        fs, inner = storage.filesystem(path)
        names = pq.read_schema(inner, filesystem=fs).names
        tables.append(layout.read_file(path, [c for c in ROW_COLUMNS if c in names]))
    if not tables:
        return RunRows(pa.table({"row_id": pa.array([], pa.string())}))
    table = layout.first_of_each(pa.concat_tables(tables, promote_options="default"))
    table = rows.select(table).sort_by("row_id")
    ids = table.column("row_id").to_pylist()
    scores_file = run_dir / layout.SCORES / SCORES_FILE
    if storage.exists(scores_file):
        scores = storage.read_parquet(scores_file)
        index = {r: i for i, r in enumerate(scores.column("row_id").to_pylist())}
        at = [index.get(r) for r in ids]
        for name in scores.column_names:
            if name not in ("row_id", "evaluated_at") and name not in table.column_names:
                values = scores.column(name).to_pylist()
                table = table.append_column(name, pa.array(
                    [None if i is None else values[i] for i in at], scores.schema.field(name).type))
    skipped = left_out(run_dir)
    table = table.append_column("left_out", pa.array([skipped.get(r) for r in ids], pa.string()))
    return RunRows(table)


def grid_rows(rows: RunRows, prompts: Sequence[str], samples: int) -> list[int]:
    """Indices of the grid's rows: the first `samples` samples of each of `prompts`, in the
    prompts' order."""
    ids = rows.table.column("prompt_id").to_pylist() if rows.count else []
    sample = rows.table.column("sample_idx").to_pylist() if rows.count else []
    where = {(str(p), s): i for i, (p, s) in enumerate(zip(ids, sample, strict=True))}
    return [where[(p, s)] for p in prompts for s in range(samples) if (p, s) in where]


def table_rows(rows: RunRows, grid: list[int], limit: int) -> list[int]:
    """Indices of the table's sample: the grid's rows, then others ordered by a hash of
    (prompt, sample), the same in every run, up to `limit`."""
    def digest(i: int) -> str:
        key = f"{rows.table.column('prompt_id')[i]}/{rows.table.column('sample_idx')[i]}"
        return hashlib.sha256(key.encode()).hexdigest()

    others = sorted((i for i in range(rows.count) if i not in set(grid)), key=digest)
    return (list(grid) + others)[:limit]


def images_of(run_dir: Location, row_ids: set[str]) -> dict[str, tuple[bytes, int, int]]:
    """row_id -> (encoded image, width, height) of the wanted rows, one file at a time."""
    found: dict[str, tuple[bytes, int, int]] = {}
    for path in layout.parquet_files(run_dir / layout.IMAGES):
        if len(found) == len(row_ids):
            break
        table = layout.read_file(path, ["row_id", "image", "width", "height"])
        for row in table.to_pylist():
            if row["row_id"] in row_ids and row["row_id"] not in found:
                found[row["row_id"]] = (row["image"], row["width"], row["height"])
    return found


class ImageFiles:
    """Images written into `folder` as MLflow's client writes them (a full PNG and a
    compressed WebP), each once per row."""

    def __init__(self, folder: Path, run_dir: Location, withheld: set[str]) -> None:
        self.folder, self.run_dir, self.withheld = folder, run_dir, withheld
        self.cells: dict[str, dict[str, str]] = {}  # row_id -> its table cell

    def picture(self, row_id: str, encoded: tuple[bytes, int, int] | None) -> Image.Image:
        """The row's image as shown, or a grey tile (withheld, unreadable, missing)."""
        if encoded is not None and row_id not in self.withheld:
            try:
                return shown(decode_checked(*encoded))
            except Exception:  # left out of the metrics; a grey tile here
                pass
        return Image.new("RGB", (SHOWN_SIDE, SHOWN_SIDE), (GREY,) * 3)

    def write(self, stem: str, picture: Image.Image) -> dict[str, str]:
        """`<stem>.png` and `<stem>+compressed.webp` (a table image cell)."""
        from mlflow.tracking.multimedia import compress_image_size

        (self.folder / stem).parent.mkdir(parents=True, exist_ok=True)
        picture.save(self.folder / f"{stem}.png")
        compress_image_size(picture, THUMBNAIL_SIDE).save(self.folder / f"{stem}+compressed.webp")
        return {"type": "image", "filepath": f"{stem}.png",
                "compressed_filepath": f"{stem}+compressed.webp"}


def write_views(folder: Path, run_dir: Location, rows: RunRows, prompts: Sequence[str],
                samples: int, table_limit: int, grid_digest: str | None = None
                ) -> dict[str, str]:
    """Write the run's grid images, its table and its full table into `folder` (to be logged
    as the run's artifacts); returns the tags to set. The grid is left out when its digest
    (the images' hashes) is `grid_digest`, the one already logged."""
    grid = grid_rows(rows, prompts, samples)
    sample = table_rows(rows, grid, table_limit)
    column = {name: rows.table.column(name).to_pylist() for name in rows.table.column_names}
    ids = column.get("row_id", [])
    digest = hashlib.sha256(json.dumps(
        [[ids[i], column["image_sha256"][i] if "image_sha256" in column else None]
         for i in grid]).encode()).hexdigest()[:32]
    tags: dict[str, str] = {}
    files = ImageFiles(folder, run_dir, flagged_rows(run_dir))
    encoded = images_of(run_dir, {ids[i] for i in (*grid, *sample)})
    if grid and digest != grid_digest:
        stamp = int(time.time() * 1000)
        for i in grid:
            caption = caption_of(column["prompt"][i], column["class_label"][i])
            key = image_key(str(column["prompt_id"][i]), caption).replace("/", "~")
            stem = (f"images/{key}+step+{column['sample_idx'][i]}+timestamp+{stamp}"
                    f"+{uuid.uuid4()}")
            files.cells[ids[i]] = files.write(stem, files.picture(ids[i], encoded.get(ids[i])))
        tags.update({LOGGED_IMAGES: "True", GRID_DIGEST: digest})
    if sample:
        _write_table(folder, files, column, sample, encoded)
        tags[LOGGED_ARTIFACTS] = json.dumps([{"path": TABLE, "type": "table"}])
    pq.write_table(rows.table, folder / FULL_TABLE)
    return tags


def _write_table(folder: Path, files: ImageFiles, column: dict[str, list], sample: list[int],
                 encoded: dict[str, tuple[bytes, int, int]]) -> None:
    """The sample in MLflow's table format (pandas' `split` orientation), the image after the
    request and settings columns, each cell an image file."""
    names = list(column)
    at = names.index("gen_seconds") + 1 if "gen_seconds" in names else len(names)
    header = [*names[:at], "image", *names[at:]]
    withheld = files.withheld
    data = []
    for i in sample:
        row_id = column["row_id"][i]
        cell = files.cells.get(row_id) or files.write(
            f"table_images/images_table/{uuid.uuid4()}",
            files.picture(row_id, encoded.get(row_id)))
        values = [_plain(column[n][i]) for n in names]
        if row_id in withheld:
            values[names.index("left_out")] = "withheld: flagged by the safety checker"
        data.append([*values[:at], cell, *values[at:]])
    (folder / TABLE).write_text(json.dumps({"columns": header, "data": data}))


def _plain(value: Any) -> Any:
    """A cell as JSON takes it (NaN as null)."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value
