"""What every metric works from: one run's per-image scores and features (`RunScores`), what the
runs share (`Context`: settings, reference statistics), and what a metric gives back for each
MLflow key (`Statistic`: the value and how to recompute it for bootstrap resamples).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from darkroom.evals.metrics.bootstrap import Resample, resample_counts, resampling_units
from darkroom.evals.metrics.distances import Stats
from darkroom.evals.units import Part

FEATURES = "features."  # column prefix: features.<extractor>
NON_NEGATIVE = (0.0, np.inf)  # metric ranges, for intervals
UNIT = (0.0, 1.0)


class Unavailable(Exception):
    """This metric cannot be computed for this run; the message is the reason."""


def feature_column(extractor: str) -> str:
    """The per-image column holding an extractor's features."""
    return FEATURES + extractor


@dataclass
class RunScores:
    """One run's per-image results, in row_id order (columns named as in the scores Parquet;
    features as `features.<extractor>`)."""

    run_id: str
    columns: dict[str, np.ndarray]
    part_errors: dict[Part, str] = field(default_factory=dict)  # part -> why it did not load

    @property
    def count(self) -> int:
        """The number of images (rows) in the run."""
        return len(self.columns["row_id"])

    def column(self, name: str) -> np.ndarray:
        """The named per-image column; raises `Unavailable` when it was not computed."""
        if name not in self.columns:
            raise Unavailable(f"no `{name}` column was computed")
        return self.columns[name]

    def groups(self) -> np.ndarray:
        """The resampling unit of each row: its prompt when the rows carry prompt ids, else
        the row itself."""
        if "prompt_id" in self.columns:
            return np.asarray(self.columns["prompt_id"]).astype(str)
        return np.asarray(self.columns["row_id"]).astype(str)

    def strata(self) -> np.ndarray | None:
        """The class (`class_label`) or, failing that, the `category` of each row's prompt, when
        every row has one: prompts are resampled within it."""
        for name in ("class_label", "category"):
            values = self.columns.get(name)
            if values is not None and len(values) and all(
                    v is not None and v == v and v != "" for v in values):
                return np.asarray(values).astype(str)
        return None

    def counts(self, resamples: int, seed: int) -> np.ndarray:
        """Bootstrap counts over the rows: prompts drawn with their images, within classes."""
        return resample_counts(self.groups(), resamples, seed, self.strata())

    def units(self) -> int:
        """How many independent units its resamples draw (prompts, or images)."""
        return resampling_units(self.groups(), self.strata())

    def take(self, rows: np.ndarray) -> RunScores:
        """The same run restricted to (and ordered by) the given row positions."""
        return RunScores(self.run_id, {k: v[rows] for k, v in self.columns.items()},
                         dict(self.part_errors))


@dataclass
class Context:
    """What the corpus math of every run shares: the settings, the reference statistics of each
    feature extractor, warnings, and a per-run memo for work several metrics share."""

    spec: Any  # EvalSpec
    references: dict[str, Stats] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    memo: dict[tuple, Any] = field(default_factory=dict)

    def reference(self, extractor: str) -> Stats:
        """The reference statistics under `extractor`; `Unavailable` when there are none."""
        if extractor not in self.references:
            raise Unavailable(f"no reference statistics for the `{extractor}` features "
                              "(eval.reference)")
        return self.references[extractor]


@dataclass
class Statistic:
    """One MLflow key's value, and (when it can be resampled) its value for each row of a
    B x n counts matrix over the run's rows; `bounds` is the metric's range; `drifts` when
    resampling by itself moves it (its interval is then shifted onto the value)."""

    value: float
    resample: Resample | None = None
    bounds: tuple[float, float] = (-np.inf, np.inf)
    drifts: bool = False


def mean_statistic(values: np.ndarray, use: np.ndarray | None = None,
                   bounds: tuple[float, float] = (-np.inf, np.inf)) -> Statistic:
    """The mean of a per-image value over the rows in `use` (all by default), resampled as a
    weighted mean."""
    values = np.asarray(values, dtype=np.float64)
    use = np.ones(len(values), bool) if use is None else np.asarray(use, bool)
    masked = np.where(use, values, 0.0)

    def resample(counts: np.ndarray) -> np.ndarray:
        weights = counts * use
        total = weights.sum(axis=1)
        return (weights @ masked) / np.where(total > 0, total, np.nan)

    return Statistic(float(values[use].mean()), resample, bounds)
