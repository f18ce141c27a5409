"""The runs a rating round compares, and the images they share.

Runs of one job share prompts and seeds: the row (prompt_id, sample_idx) of two runs was made
from the same prompt and the same noise, so the two images differ only by the settings under
test. A pair shown to raters is such a key across two runs, whose rows also agree on the seed.
Images are read from the runs' committed Parquet files when shown (a few files kept in memory).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from darkroom.evals.reporting.naming import run_names
from darkroom.platform.data import layout, storage
from darkroom.platform.data.runinfo import RunInfo, read_run_info
from darkroom.platform.data.storage import Location
from darkroom.platform.errors import UserError, did_you_mean

Key = tuple[str, int]  # (prompt_id, sample_idx)
FILES_CACHED = 8  # data files whose images are kept in memory at once
ROW_COLUMNS = ["row_id", "prompt_id", "sample_idx", "seed", "prompt", "class_label"]


@dataclass(frozen=True)
class Row:
    """Where one image is: its data file and row id, with the seed and what was asked."""

    file: Location
    row_id: str
    seed: int
    prompt: str


@functools.lru_cache(maxsize=FILES_CACHED)
def _images(file: Location) -> dict[str, bytes]:
    table = storage.read_parquet(file, columns=["row_id", "image"])
    return dict(zip(table.column("row_id").to_pylist(), table.column("image").to_pylist(),
                    strict=True))


def _asked(record: dict) -> str:
    """What the row asked for, as raters read it: the prompt, or the class."""
    if record.get("prompt"):
        return str(record["prompt"])
    if record.get("class_label") is not None:
        return f"class {record['class_label']}"
    return ""


def read_rows(run_dir: Location) -> dict[Key, Row]:
    """A run's rows by (prompt_id, sample_idx): each row id once, from the file whose name sorts
    first (as every reader of a run does)."""
    rows: dict[Key, Row] = {}
    seen: set[str] = set()
    for file in layout.parquet_files(run_dir / layout.IMAGES):
        names = set(_schema_names(file))
        table: pa.Table = storage.read_parquet(file, columns=[c for c in ROW_COLUMNS
                                                              if c in names])
        for record in table.to_pylist():
            if record["row_id"] in seen:
                continue
            seen.add(record["row_id"])
            key = (str(record["prompt_id"]), int(record["sample_idx"]))
            rows.setdefault(key, Row(file, record["row_id"], int(record["seed"]),
                                     _asked(record)))
    return rows


def _schema_names(file: Location) -> list[str]:
    import pyarrow.parquet as pq

    fs, inner = storage.filesystem(file)
    return pq.read_schema(inner, filesystem=fs).names


class Runs:
    """The runs of one rating round: their names, rows and shared keys."""

    def __init__(self, job_dir: Location, run_ids: Sequence[str] | None = None) -> None:
        found = {d.name: d for d in layout.run_dirs(job_dir)}
        if run_ids:
            unknown = [r for r in run_ids if r not in found]
            if unknown:
                raise UserError(f"--runs: no run `{unknown[0]}` in {job_dir};"
                                f"{did_you_mean(unknown[0], found)}")
            found = {r: found[r] for r in run_ids}
        if len(found) < 2:
            raise UserError(f"JOB_OR_RUNS: {job_dir} has {len(found)} run folder(s) to rate: "
                            "a round compares at least two runs of one job (give a job folder "
                            "written by `darkroom run`, or --runs with two or more of its run "
                            "ids)")
        self.job_dir = job_dir
        self.dirs = found
        self.ids = sorted(found)
        self.infos: dict[str, RunInfo] = {r: read_run_info(d) for r, d in found.items()}
        # named among all the job's runs, as MLflow names them
        everyone = {d.name: read_run_info(d) for d in layout.run_dirs(job_dir)}
        self.names = {r: n for r, n in run_names(everyone).items() if r in found}
        self.rows = {r: read_rows(d) for r, d in found.items()}
        self._shared: dict[tuple[str, str], list[Key]] = {}
        if not any(self.shared(a, b) for a, b in self.run_pairs()):
            raise UserError(f"JOB_OR_RUNS: the runs of {job_dir} share no image: no "
                            "(prompt_id, sample_idx) with the same seed in two runs; rate runs "
                            "of one job")

    def run_pairs(self) -> list[tuple[str, str]]:
        """Every unordered pair of runs (a < b)."""
        return [(a, b) for i, a in enumerate(self.ids) for b in self.ids[i + 1:]]

    def shared(self, a: str, b: str) -> list[Key]:
        """The keys both runs have, made with the same seed, in order."""
        if (a, b) not in self._shared:
            mine, theirs = self.rows[a], self.rows[b]
            self._shared[a, b] = sorted(k for k in mine.keys() & theirs.keys()
                                        if mine[k].seed == theirs[k].seed)
        return self._shared[a, b]

    def total_pairs(self) -> int:
        """How many distinct pairs (a key across two runs) the round holds."""
        return sum(len(self.shared(a, b)) for a, b in self.run_pairs())

    def prompt(self, key: Key) -> str:
        """What the key's rows asked for."""
        return next(rows[key].prompt for rows in self.rows.values() if key in rows)

    def image(self, run: str, key: Key) -> bytes:
        """The PNG bytes of a run's image for a key."""
        row = self.rows[run][key]
        return _images(row.file)[row.row_id]
