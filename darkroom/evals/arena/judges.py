"""What automatic judges prefer on the pairs people rated, for judge-human agreement.

- Per-image scorers: when the runs were evaluated (`darkroom eval`), every per-image score that
  is also a metric with a direction (clip_score, pickscore, ...: the metric registry says which
  way is better) prefers the image with the better score; equal scores prefer neither.
- Pairwise judges: a Parquet table (a file, or a folder of files; by default
  `<job>/judgements/`) with columns `judge`, `prompt_id`, `sample_idx`, `run_a`, `run_b`,
  `preferred` (a run id, or "tie") and optionally `question` (rows without one count for every
  question).
"""

from __future__ import annotations

import math

from darkroom.evals import registry
from darkroom.evals.arena.rankings import NO_PREFERENCE, Item, Preferences
from darkroom.evals.arena.source import Runs
from darkroom.evals.results import SCORES_FILE
from darkroom.platform.data import layout, storage
from darkroom.platform.data.storage import Location
from darkroom.platform.errors import UserError

JUDGEMENTS = "judgements"
PAIRWISE_COLUMNS = ("judge", "prompt_id", "sample_idx", "run_a", "run_b", "preferred")


def score_directions() -> dict[str, bool]:
    """Per-image score columns that are metrics, with their direction (higher is better)."""
    columns = {c for s in registry.scorers().values() for c in s.columns}
    return {m.key: m.higher_is_better for m in registry.metrics().values() if m.key in columns}


def per_image(runs: Runs) -> dict[str, tuple[str, Preferences]]:
    """name -> ("per-image", preferences) for every score the runs' evaluations saved."""
    directions = score_directions()
    scores: dict[str, dict[str, dict]] = {}  # column -> run -> key -> value
    for run, folder in runs.dirs.items():
        path = folder / layout.SCORES / SCORES_FILE
        if not storage.exists(path):
            continue
        table = storage.read_parquet(path)
        keys = {row.row_id: key for key, row in runs.rows[run].items()}
        ids = table.column("row_id").to_pylist()
        for column in directions.keys() & set(table.column_names):
            values = table.column(column).to_pylist()
            scores.setdefault(column, {})[run] = {keys[i]: v for i, v in zip(ids, values,
                                                                             strict=True)
                                                  if i in keys and _number(v)}
    out = {}
    for column, by_run in scores.items():
        prefs: dict[Item, str] = {}
        for a, b in runs.run_pairs():
            mine, theirs = by_run.get(a, {}), by_run.get(b, {})
            for key in runs.shared(a, b):
                if key in mine and key in theirs:
                    better = mine[key] - theirs[key]
                    better = better if directions[column] else -better
                    prefs[(*key, a, b)] = a if better > 0 else b if better < 0 else NO_PREFERENCE
        out[column] = ("per-image", prefs)
    return out


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def pairwise(path: Location, question: str) -> dict[str, tuple[str, Preferences]]:
    """name -> ("pairwise", preferences) from a judgements table, for one question."""
    if not storage.exists(path):
        return {}
    files = [path] if storage.is_file(path) else [
        e.loc for e in storage.list_dir(path) if e.loc.name.endswith(".parquet")]
    out: dict[str, tuple[str, dict[Item, str]]] = {}
    for file in sorted(files, key=str):
        table = storage.read_parquet(file)
        missing = [c for c in PAIRWISE_COLUMNS if c not in table.column_names]
        if missing:
            raise UserError(f"judgements file {file} lacks the column(s) {', '.join(missing)}; "
                            f"it needs {', '.join(PAIRWISE_COLUMNS)} (and may have question)")
        for row in table.to_pylist():
            if row.get("question") not in (None, "", question):
                continue
            a, b = sorted((str(row["run_a"]), str(row["run_b"])))
            pref = str(row["preferred"])
            item = (str(row["prompt_id"]), int(row["sample_idx"]), a, b)
            out.setdefault(str(row["judge"]), ("pairwise", {}))[1][item] = (
                pref if pref in (a, b) else NO_PREFERENCE)
    return out


def judges(runs: Runs, question: str, judgements: Location | None = None
           ) -> dict[str, tuple[str, Preferences]]:
    """Every judge of the runs' pairs for one question: per-image scores, then pairwise."""
    found = per_image(runs)
    found.update(pairwise(judgements or runs.job_dir / JUDGEMENTS, question))
    return found
